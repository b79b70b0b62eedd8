"""The ASGI application: routes wired explicitly over a running `Tidings`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings import __version__
from tidings.api import admin, errors, health, ingest
from tidings.app import Tidings
from tidings.ingest.service import Ingest
from tidings.logging import request_id


class RequestIdMiddleware:
    """Gives every request an id (or keeps the caller's X-Request-Id) for logs and the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = given.decode("latin-1")[:100] if given else uuid.uuid4().hex
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def create_app(tidings: Tidings, *, manage_lifecycle: bool = True) -> FastAPI:
    """The ASGI app. With `manage_lifecycle`, the app's lifespan starts and stops `tidings`."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await tidings.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await tidings.stop()

    app = FastAPI(
        title="tidings",
        version=__version__,
        description="Receives CRM webhooks and app events, keeps customer profiles, runs flows, "
        "delivers to ESPs.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.tidings = tidings
    app.state.ingest = Ingest(tidings)
    errors.install(app)
    app.include_router(ingest.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.add_middleware(RequestIdMiddleware)
    return app
