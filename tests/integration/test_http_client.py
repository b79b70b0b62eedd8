"""The shared HTTP client: several small pools, the least busy one taking each request."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.destinations.http import SpreadTransport, pooled_client
from tidings.testing.simulator import Simulator


class SlowEcho(Simulator):
    """Answers after `delay` seconds with the client's port (one port per connection)."""

    delay = 0.05

    def routes(self) -> list[Route]:
        return [Route("/{path:path}", self.answer, methods=["GET", "POST"])]

    async def answer(self, request: Request) -> Response:
        await asyncio.sleep(self.delay)
        assert request.client is not None
        return JSONResponse({"port": request.client.port, "pad": "x" * 5000})


@pytest.fixture
def echo() -> Iterator[SlowEcho]:
    sim = SlowEcho()
    with sim.running():
        yield sim


async def test_concurrent_requests_are_spread_and_bounded(echo: SlowEcho) -> None:
    transport = SpreadTransport(http2=False, max_connections=12, per_pool=4)
    assert len(transport.pools) == 3
    async with httpx.AsyncClient(transport=transport) as client:
        answers = await asyncio.gather(*(client.get(f"{echo.url}/{i}") for i in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    ports = {a.json()["port"] for a in answers}
    assert 3 < len(ports) <= 12  # every pool used, never more connections than the limit
    assert echo.max_in_flight <= 12
    assert transport.in_flight == [0, 0, 0]  # every response closed gave its place back


async def test_one_request_at_a_time_reuses_one_connection(echo: SlowEcho) -> None:
    echo.delay = 0
    transport = SpreadTransport(http2=False, max_connections=12, per_pool=4)
    async with httpx.AsyncClient(transport=transport) as client:
        ports = {(await client.post(echo.url, json={"n": i})).json()["port"] for i in range(10)}
    assert len(ports) == 1


async def test_failures_and_unread_streams_give_their_place_back(echo: SlowEcho) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    transport = SpreadTransport(http2=False, max_connections=4, per_pool=2)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
        assert transport.in_flight == [0, 0]
        async with client.stream("GET", echo.url) as response:
            assert response.status_code == 200
            assert sum(transport.in_flight) == 1  # busy until the body is read or closed
        assert transport.in_flight == [0, 0]


async def test_a_proxy_in_the_environment_is_used(echo: SlowEcho, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a corporate proxy (HTTP_PROXY / HTTPS_PROXY), requests go through it, as with httpx."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", echo.url)  # the echo server stands in for the proxy
    async with pooled_client() as client:
        answer = await client.get("http://vendor.invalid/hello")  # no such host: only a proxy answers
    assert answer.status_code == 200
    assert echo.requests[-1].headers["host"] == "vendor.invalid"
