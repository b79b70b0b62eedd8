"""SendGrid Event Webhook: a JSON array of email events, signed with ECDSA (the "Signed Event Webhook").

SendGrid signs `X-Twilio-Email-Event-Webhook-Timestamp` + the raw body with its private P-256 key
(ECDSA, SHA-256) and sends the DER signature base64-encoded in
`X-Twilio-Email-Event-Webhook-Signature`. Only the public key is configured here (base64 DER
SubjectPublicKeyInfo, as SendGrid shows it), a list so a new key can be added before the old one
goes. Each event carries `sg_event_id`, unique per event, so it is the dedupe key: a replayed or
retried batch stores nothing twice, which is also why no timestamp window is enforced by default
(SendGrid documents none, and a retried batch may keep its first timestamp).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from pydantic import field_validator

from tidings.configmodel import Duration
from tidings.exceptions import AuthenticationFailed
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    Receiver,
    Reception,
    SourceSettings,
    compact,
    parse_json,
)

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"


class SendGridEventsSettings(SourceSettings):
    """`public_keys`: the Signed Event Webhook's verification key(s); `tolerance`: optional replay window."""

    kind: Literal["sendgrid-events"]
    public_keys: list[str]
    tolerance: Duration | None = None

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        if not keys:
            raise ValueError(
                "at least one public key is required (SendGrid: Settings > Mail Settings > "
                "Signed Event Webhook Requests > Verification Key)"
            )
        for key in keys:
            load_key(key)
        return keys

    @field_validator("tolerance")
    @classmethod
    def _positive(cls, tolerance: timedelta | None) -> timedelta | None:
        if tolerance is not None and tolerance <= timedelta(0):
            raise ValueError("tolerance must be positive (or left out for no window)")
        return tolerance


def load_key(text: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from SendGrid's base64 DER form (PEM accepted too), or a clear error."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(
            "a public key must be the base64 verification key SendGrid shows (DER SubjectPublicKeyInfo)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("a public key must be an ECDSA P-256 key, as SendGrid issues")
    return key


def _verifies(key: ec.EllipticCurvePublicKey, signature: bytes, content: bytes) -> bool:
    try:
        key.verify(signature, content, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


class SendGridEventsReceiver(Receiver[SendGridEventsSettings]):
    kind = "sendgrid-events"
    settings_model = SendGridEventsSettings
    kept_headers = (TIMESTAMP_HEADER, "content-type", "user-agent")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._public_keys = [load_key(k) for k in self.settings.public_keys]

    def receive(self, request: InboundRequest) -> Reception:
        self._verify(request)
        try:
            events = parse_json(request.body)
        except Exception as exc:
            return self.flag(request, str(exc))
        return self._split(request, events)

    def _verify(self, request: InboundRequest) -> None:
        header = signing.require(request.header(SIGNATURE_HEADER), "X-Twilio-Email-Event-Webhook-Signature")
        stamp = signing.require(request.header(TIMESTAMP_HEADER), "X-Twilio-Email-Event-Webhook-Timestamp")
        try:
            sent_at = datetime.fromtimestamp(int(stamp), UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise AuthenticationFailed(
                "X-Twilio-Email-Event-Webhook-Timestamp is not unix seconds", code="invalid_timestamp"
            ) from exc
        try:
            signature = base64.b64decode(header, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuthenticationFailed("X-Twilio-Email-Event-Webhook-Signature is not base64") from exc
        content = stamp.encode() + request.body
        # Every key is tried (a list, not any()), so the time taken does not say which one matched.
        results = [_verifies(key, signature, content) for key in self._public_keys]
        if not any(results):
            raise AuthenticationFailed(
                "X-Twilio-Email-Event-Webhook-Signature does not verify with a configured public key"
            )
        # After the signature, so an unauthenticated caller learns nothing from the clock check.
        if self.settings.tolerance is not None:
            signing.check_timestamp(sent_at, self.clock.now(), self.settings.tolerance)

    def _split(self, request: InboundRequest, events: Any) -> Reception:
        if not isinstance(events, list):
            return self.flag(request, "body is not a JSON array of events")
        items = []
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                return self.flag(request, f"event {index} is not a JSON object")
            event_id = event.get("sg_event_id")
            if not isinstance(event_id, str) or not event_id:
                return self.flag(request, f"event {index} has no sg_event_id")
            name = event.get("event")
            items.append(
                Item(
                    keys=(f"sg_event_id:{event_id}",),
                    topic=name if isinstance(name, str) and name else None,
                    payload=compact(event),
                )
            )
        # An empty array (nothing to keep) is answered 200 and stores nothing.
        return Reception(items=items, headers=self.keep_headers(request))
