"""The base of every simulator: a Starlette app served by uvicorn in a thread, with faults."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True, slots=True)
class Fault:
    """Answer the next request(s) with this instead (after `delay` seconds)."""

    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0


class Simulator:
    """Subclasses set `routes()`; each handler returns the vendor's answer for a valid request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def routes(self) -> list[Route]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int = 1, **fault: Any) -> None:
        for _ in range(count):
            self.faults.append(Fault(**fault))

    # ------------------------------------------------------------------ serving

    def app(self) -> Starlette:
        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            request = Request(scope, receive)
            body = await request.body()
            with self._lock:
                self.requests.append(
                    Recorded(request.method, request.url.path, dict(request.headers), body, time.monotonic())
                )
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                fault = self.faults.popleft() if self.faults else None

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                if fault is not None:
                    if fault.delay:
                        await asyncio.sleep(fault.delay)
                    response: Response = JSONResponse(
                        fault.body or {"error": "simulated"}, fault.status, headers=fault.headers
                    )
                    await response(scope, replay, send)
                    return
                await inner(scope, replay, send)
            finally:
                with self._lock:
                    self.in_flight -= 1

        inner = Starlette(routes=self.routes())
        return middleware  # type: ignore[return-value]

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("simulator did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @contextmanager
    def running(self) -> Iterator[Simulator]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
