"""Standard Webhooks (spec v1.0.0): the generic kind for any app that signs this way.

Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`; the key is the base64-decoded
part of a `whsec_` secret; `webhook-signature` is a space-separated list of `v1,<base64>`
entries, any of which may match (the sender rotates keys that way). `webhook-id` is stable
across retries, so it is the dedupe key.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import SecretStr, field_validator

from tidings.configmodel import Duration
from tidings.exceptions import AuthenticationFailed
from tidings.ingest import signing
from tidings.ingest.base import InboundRequest, Item, Receiver, Reception, SignedSourceSettings, parse_json


class StandardWebhooksSettings(SignedSourceSettings):
    kind: Literal["standard-webhooks"]
    tolerance: Duration = timedelta(minutes=5)

    @field_validator("secrets")
    @classmethod
    def _whsec(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for secret in secrets:
            _key(secret.get_secret_value())
        return secrets


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a secret must be whsec_ followed by base64") from exc


class StandardWebhooksReceiver(Receiver[StandardWebhooksSettings]):
    kind = "standard-webhooks"
    settings_model = StandardWebhooksSettings
    kept_headers = ("webhook-id", "webhook-timestamp", "content-type", "user-agent")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._keys = [_key(s.get_secret_value()) for s in self.settings.secrets]

    def receive(self, request: InboundRequest) -> Reception:
        msg_id = signing.require(request.header("webhook-id"), "webhook-id")
        stamp = signing.require(request.header("webhook-timestamp"), "webhook-timestamp")
        header = signing.require(request.header("webhook-signature"), "webhook-signature")
        try:
            sent_at = datetime.fromtimestamp(int(stamp), UTC)
        except (ValueError, OverflowError) as exc:
            raise AuthenticationFailed(
                "webhook-timestamp is not unix seconds", code="invalid_timestamp"
            ) from exc
        signing.check_timestamp(sent_at, self.clock.now(), self.settings.tolerance)

        received = []
        for entry in header.split():
            version, _, sig = entry.partition(",")
            if version == "v1":
                try:
                    received.append(base64.b64decode(sig, validate=True))
                except (binascii.Error, ValueError):
                    continue
        if not received:
            raise AuthenticationFailed("webhook-signature holds no v1 signature")
        content = f"{msg_id}.{stamp}.".encode() + request.body
        expected = (signing.hmac_sha256(key, content) for key in self._keys)
        if not signing.any_match(expected, received):
            raise AuthenticationFailed("no signature in webhook-signature matches a configured secret")

        try:
            payload = parse_json(request.body)
        except Exception as exc:
            return self.flag(request, str(exc))
        topic = payload.get("type") if isinstance(payload, dict) else None
        return Reception(
            items=[Item(keys=(msg_id,), topic=topic if isinstance(topic, str) else None)],
            headers=self.keep_headers(request),
        )
