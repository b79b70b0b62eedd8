"""The ASGI application: routes wired explicitly over a running `Tidings`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tidings import __version__, ui
from tidings.api import admin, destinations, errors, flows, health, ingest
from tidings.api import sandbox as sandbox_api
from tidings.app import Tidings
from tidings.ingest.service import Ingest
from tidings.logging import request_id


class Application:
    """The ASGI app: webhooks go straight to their handler, everything else through FastAPI.

    The webhook path is the hot one (thousands a second); FastAPI's routing, dependency
    resolution and middleware stack cost more there than the whole of verifying a signature, so
    it is dispatched first. The same handlers also sit behind FastAPI routes, which is what
    `/openapi.json` describes and what behaves identically.
    """

    def __init__(self, api: FastAPI, ingest: Ingest) -> None:
        self.api = api
        self.ingest = ingest
        self.state = api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = given.decode("latin-1")[:100] if given else uuid.uuid4().hex
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            response = await self._fast_path(scope, receive)
            if response is None:
                await self.api(scope, receive, send_with_id)
            else:
                await response(scope, receive, send_with_id)
        finally:
            request_id.reset(token)

    async def _fast_path(self, scope: Scope, receive: Receive) -> Response | None:
        if scope["method"] != "POST":
            return None
        prefix, _, name = scope["path"].rpartition("/")
        if prefix == "/hooks" and name:
            return await ingest.handle_webhook(self.ingest, Request(scope, receive), name)
        if prefix == "/v1" and name:
            return await ingest.handle_tracking_call(self.ingest, Request(scope, receive), name)
        return None


def create_app(tidings: Tidings, *, manage_lifecycle: bool = True, receive: bool = True) -> Application:
    """The ASGI app. With `manage_lifecycle`, the app's lifespan starts and stops `tidings`;
    without `receive` (a worker process), webhooks and tracking calls are answered 404."""

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
    app.state.ingest = Ingest(tidings, enabled=receive)
    errors.install(app)
    app.include_router(ingest.router)
    app.include_router(admin.router)
    app.include_router(destinations.router)
    app.include_router(flows.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    app.include_router(sandbox_api.router)
    return Application(app, app.state.ingest)
