"""The generic destination: a JSON POST signed the Standard Webhooks way.

Any receiver that verifies Standard Webhooks (a `standardwebhooks` library, Svix, tidings itself)
can check it. `webhook-id` is the effect's idempotency key, so a receiver that deduplicates on it
(as the specification asks) makes a retried delivery harmless: every action is idempotent here.
`data` is the effect's payload as the flow engine made it (docs/destinations/README.md, "Payloads
by action"), so a receiver sees the same shape whatever destination the flow was written for.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from typing import Literal

import httpx
from pydantic import SecretStr, field_validator

from tidings.delivery.effects import ACTIONS, Effect, Receipt
from tidings.destinations.base import Destination, DestinationSettings, handles
from tidings.store.codec import json_dumps


class WebhookSettings(DestinationSettings):
    kind: Literal["webhook"]
    url: str
    secret: SecretStr  # whsec_ + base64, as Standard Webhooks secrets are

    @field_validator("secret")
    @classmethod
    def _whsec(cls, secret: SecretStr) -> SecretStr:
        try:
            base64.b64decode(secret.get_secret_value().removeprefix("whsec_"), validate=True)
        except ValueError as exc:
            raise ValueError("the secret must be whsec_ followed by base64") from exc
        return secret


class WebhookDestination(Destination[WebhookSettings]):
    kind = "webhook"
    settings_model = WebhookSettings
    idempotent_actions = frozenset(ACTIONS)

    @functools.cached_property
    def _key(self) -> bytes:
        return base64.b64decode(self.settings.secret.get_secret_value().removeprefix("whsec_"))

    @functools.cached_property
    def _url(self) -> httpx.URL:
        return httpx.URL(self.settings.url)  # parsed once, not at every send

    @handles(*ACTIONS)
    async def _post(self, effect: Effect) -> Receipt:
        now = int(time.time())
        body = json_dumps({"type": effect.action, "timestamp": now, "data": effect.payload}).encode()
        stamp = str(now)
        signed = f"{effect.idempotency_key}.{stamp}.".encode() + body
        signature = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest()).decode()
        response = await self.request(
            "POST",
            self._url,
            content=body,
            headers={
                "content-type": "application/json",
                "webhook-id": effect.idempotency_key,
                "webhook-timestamp": stamp,
                "webhook-signature": f"v1,{signature}",
            },
        )
        self.check(response)
        return Receipt(status_code=response.status_code)
