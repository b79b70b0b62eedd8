"""The shared HTTP client: httpx's API over aiohttp's pool, as destinations rely on it."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.destinations.http import pooled_client
from tidings.testing.simulator import Simulator


class SlowEcho(Simulator):
    """Answers after `delay` seconds with the client's port (one port per connection) and the
    cookies it was sent, setting one of its own."""

    delay = 0.05

    def routes(self) -> list[Route]:
        return [Route("/{path:path}", self.answer, methods=["GET", "POST"])]

    async def answer(self, request: Request) -> Response:
        await asyncio.sleep(self.delay)
        assert request.client is not None
        body = {"port": request.client.port, "cookies": dict(request.cookies), "pad": "x" * 5000}
        response = JSONResponse(body)
        response.set_cookie("session", "tenant-a")
        return response


@pytest.fixture
def echo() -> Iterator[SlowEcho]:
    sim = SlowEcho()
    with sim.running():
        yield sim


async def test_concurrent_requests_share_a_bounded_pool(echo: SlowEcho) -> None:
    async with pooled_client(max_connections=12) as client:
        answers = await asyncio.gather(*(client.get(f"{echo.url}/{i}") for i in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    assert 3 < len({a.json()["port"] for a in answers}) <= 12  # in parallel, never above the limit
    assert echo.max_in_flight <= 12


async def test_one_request_at_a_time_reuses_one_connection(echo: SlowEcho) -> None:
    echo.delay = 0
    async with pooled_client() as client:
        ports = {(await client.post(echo.url, json={"n": i})).json()["port"] for i in range(10)}
    assert len(ports) == 1


async def test_the_body_and_headers_arrive_as_sent(echo: SlowEcho) -> None:
    async with pooled_client() as client:
        await client.post(echo.url, json={"email": "ann@example.com"}, headers={"X-Key": "k1"})
    sent = echo.requests[-1]
    assert json.loads(sent.body) == {"email": "ann@example.com"}
    assert sent.headers["x-key"] == "k1"
    assert sent.headers["content-type"] == "application/json"


async def test_no_cookie_is_kept_from_one_call_to_the_next(echo: SlowEcho) -> None:
    echo.delay = 0
    async with pooled_client() as client:
        first = await client.get(echo.url)
        assert first.headers["set-cookie"].startswith("session=tenant-a")
        second = await client.get(echo.url)
    assert second.json()["cookies"] == {}


async def test_nothing_listening_is_a_connect_error_and_the_pool_goes_on(echo: SlowEcho) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    async with pooled_client(max_connections=2) as client:
        for _ in range(3):  # more failures than the pool has places
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")
        async with client.stream("GET", echo.url) as response:
            assert response.status_code == 200
        assert (await client.get(echo.url)).status_code == 200


async def test_a_slow_answer_times_out(echo: SlowEcho) -> None:
    echo.delay = 1.0
    async with pooled_client() as client:
        with pytest.raises(httpx.TimeoutException):
            await client.get(echo.url, timeout=0.1)


async def test_a_proxy_in_the_environment_is_used(echo: SlowEcho, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a corporate proxy (HTTP_PROXY / HTTPS_PROXY), requests go through it, as with httpx."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", echo.url)  # the echo server stands in for the proxy
    async with pooled_client() as client:
        answer = await client.get("http://vendor.invalid/hello")  # no such host: only a proxy answers
    assert answer.status_code == 200
    assert echo.requests[-1].headers["host"] == "vendor.invalid"


async def test_a_vendor_that_stops_reading_cannot_hang_a_send() -> None:
    """Nobody reads the body (the kernel accepts the connection, no one reads it): the write stalls
    once the socket buffers are full, and the request's time bound ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        async with pooled_client() as client:
            post = client.post(f"http://127.0.0.1:{port}/", content=b"x" * 50_000_000, timeout=0.2)
            with pytest.raises(httpx.TimeoutException):
                await asyncio.wait_for(post, 10)  # a builtin TimeoutError here: the send hung
    finally:
        listener.close()


async def test_a_call_with_auth_still_gets_it_and_every_answer_knows_its_request(echo: SlowEcho) -> None:
    """Plain calls skip httpx's client layer; a call that needs it (Mailchimp's basic auth) still
    takes it."""
    echo.delay = 0
    async with pooled_client() as client:
        plain = await client.post(echo.url, json={"n": 1})
        authed = await client.get(echo.url, auth=httpx.BasicAuth("tidings", "key-1"))
    assert authed.status_code == 200
    assert plain.request.url == httpx.URL(echo.url)
    plain.raise_for_status()
    assert "authorization" not in echo.requests[0].headers
    assert echo.requests[1].headers["authorization"] == "Basic " + base64.b64encode(b"tidings:key-1").decode()
