"""A receiver of Standard Webhooks: checks each signature, keeps what it verified (by webhook-id)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.testing.simulator import Simulator


class WebhookSink(Simulator):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.received: dict[str, dict[str, Any]] = {}  # webhook-id -> payload, as a receiver dedupes

    def routes(self) -> list[Route]:
        return [Route("/{path:path}", self.receive, methods=["POST"])]

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        msg_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        expected = base64.b64encode(
            hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        given = [s.partition(",")[2] for s in request.headers.get("webhook-signature", "").split()]
        if not any(hmac.compare_digest(expected, g) for g in given):
            return JSONResponse({"error": "invalid signature"}, 401)
        self.received.setdefault(msg_id, json.loads(body))
        return JSONResponse({"ok": True})
