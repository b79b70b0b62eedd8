"""The HTTP client every destination and lookup shares: pooled, keep-alive, HTTP/2 where offered.

httpcore's pool examines every one of its connections (and polls each idle socket) each time a
request starts or ends, so its cost per request grows with the number of connections in use: at
100 requests in flight to one host a request cost ~2 ms of CPU, against ~0.5 ms at a few
(bench/README-e2e.md; encode/httpcore#1035). `SpreadTransport` keeps httpx and httpcore for all
the HTTP and only splits the pool: several small pools, each request going to the one with the
fewest requests in flight, so at low load one warm connection is reused, and under load no pool
holds more than a few connections.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import AsyncIterator, Callable

import httpx

MAX_CONNECTIONS = 200
POOL_CONNECTIONS = 8  # connections per small pool


class SpreadTransport(httpx.AsyncBaseTransport):
    """Spread requests over `ceil(max_connections / per_pool)` httpx transports."""

    def __init__(
        self,
        *,
        http2: bool = True,
        max_connections: int = MAX_CONNECTIONS,
        per_pool: int = POOL_CONNECTIONS,
    ) -> None:
        per_pool = min(per_pool, max_connections)
        count = math.ceil(max_connections / per_pool)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = httpx.create_ssl_context()  # one for all: loading the CA bundle takes ~20 ms
        self.pools = [httpx.AsyncHTTPTransport(verify=tls, http2=http2, limits=limits) for _ in range(count)]
        self.in_flight = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self.in_flight.index(min(self.in_flight))
        self.in_flight[index] += 1
        try:
            response = await self.pools[index].handle_async_request(request)
        except BaseException:
            self.in_flight[index] -= 1
            raise
        # The connection stays busy until the body is read and the response closed.
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Released(response.stream, lambda: self._release(index)),
            extensions=response.extensions,
        )

    def _release(self, index: int) -> None:
        self.in_flight[index] -= 1

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that tells its pool's count when it is closed (once)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._open:
                self._open = False
                self._release()


def pooled_client(*, http2: bool = True) -> httpx.AsyncClient:
    """The process's client for vendors: TLS verified, HTTP/2 negotiated (ALPN) with vendors that
    serve it; plain-http simulators get HTTP/1.1.

    With a proxy in the environment (HTTPS_PROXY and the like), httpx's own client takes it as it
    always does (a transport of our own would bypass it): every request goes through the proxy's
    pool then anyway."""
    if urllib.request.getproxies():
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        return httpx.AsyncClient(http2=http2, limits=limits)
    return httpx.AsyncClient(transport=SpreadTransport(http2=http2))
