"""The HTTP client every destination and lookup shares: httpx's API over aiohttp's connections.

Destinations speak httpx (requests, responses, errors). Underneath, `AiohttpTransport` sends the
requests through aiohttp's connection pool and its C-accelerated HTTP/1.1 parser: a request to a
local endpoint costs ~0.4 ms of CPU this way against ~1.0-1.3 ms through httpx's own httpcore
transport, whose pool also examines every connection on each request (encode/httpcore#1035). In a
process that hands every webhook on to a vendor, that is most of the event loop's work
(bench/README-e2e.md, session 6). Vendors are spoken to over HTTP/1.1 with keep-alive.
"""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import aiohttp
import httpx

MAX_CONNECTIONS = 200
KEEPALIVE = 15.0  # s an idle connection is kept for the next request
LARGE_BODY = 1 << 20  # bytes; aiohttp warns that a larger body given as bytes may block the loop

# aiohttp's errors as httpx's, most specific first: a destination tells a refused connection
# (nothing was sent) from a timeout or a dropped answer (the vendor may have acted).
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientOSError, httpx.NetworkError),
    (aiohttp.ClientError, httpx.TransportError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        mapped = next(to for from_, to in _ERRORS if isinstance(exc, from_))
        raise mapped(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


def _payload(body: bytes) -> bytes | io.BytesIO | None:
    """A large body is handed over as a file, which aiohttp sends in chunks rather than at once."""
    if not body:
        return None
    return io.BytesIO(body) if len(body) > LARGE_BODY else body


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent by an aiohttp session (made on first use, inside the running loop).

    The answer's body is read before the request returns, so its connection goes back to the
    pool at once: vendors answer in small JSON documents."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self.tls = httpx.create_ssl_context()  # loading the CA bundle takes ~20 ms: once
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=KEEPALIVE, ssl=self.tls
        )
        # No cookies: vendors' APIs are keyed, and one account's cookie must not go with another's call.
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        limits = request.extensions.get("timeout", {})
        # httpx bounds each phase; aiohttp has no bound on writing the body, so the whole request
        # is also bounded by the phases' sum: a vendor that stops reading cannot hang a send.
        phases = [limits.get(phase) for phase in ("pool", "connect", "write", "read")]
        timeout = aiohttp.ClientTimeout(
            total=None if None in phases else sum(phases),
            connect=limits.get("pool"),
            sock_connect=limits.get("connect"),
            sock_read=limits.get("read"),
        )
        with _as_httpx_errors():
            async with self._session.request(
                request.method,
                str(request.url),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
                data=_payload(await request.aread()),
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes, as it does with its own transport
                compress=False,
                timeout=timeout,
            ) as answer:
                body = await answer.read()
        return httpx.Response(
            status_code=answer.status,
            headers=answer.raw_headers,
            content=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (answer.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _VendorClient(httpx.AsyncClient):
    """httpx's client whose plain requests go straight to the aiohttp transport.

    `send` in httpx's client runs its auth flow, its redirect loop, cookie extraction, timing and
    logging around the transport: a third of a request's CPU here (0.97 against 0.64 ms at 20 in
    flight, bench/README-e2e.md session 7). None of it applies to a plain call: no auth is set on
    the client, redirects are not followed, no cookie is kept. A call with `auth=`, a stream or
    redirects to follow, or a client with event hooks, takes httpx's whole path."""

    def __init__(self, transport: AiohttpTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._direct = transport

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        default = follow_redirects is httpx.USE_CLIENT_DEFAULT
        redirects = self.follow_redirects if default else follow_redirects
        plain = not stream and auth is httpx.USE_CLIENT_DEFAULT and self.auth is None and not redirects
        hooked = self.event_hooks["request"] or self.event_hooks["response"]
        if not plain or hooked or self.is_closed:
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        response = await self._direct.handle_async_request(request)
        response.request = request
        return response


def pooled_client(*, max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """The process's client for vendors: TLS verified against certifi's CA bundle, at most
    `max_connections` connections, no cookies kept from one call to the next.

    With a proxy in the environment (HTTPS_PROXY and the like), httpx's own transport takes it as
    it always does: every request goes through the proxy then."""
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    if urllib.request.getproxies():
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return httpx.AsyncClient(limits=limits, cookies=no_cookies)
    return _VendorClient(AiohttpTransport(max_connections=max_connections), cookies=no_cookies)
