"""HubSpot webhooks: a JSON array of CRM events, signed one of three ways.

v3  `X-HubSpot-Signature-v3` = base64(HMAC-SHA256(client secret, method + URI + body + timestamp)),
    `X-HubSpot-Request-Timestamp` in epoch milliseconds: the only version with a replay window.
v2  `X-HubSpot-Signature` = hex(SHA-256(client secret + method + URI + body)).
v1  `X-HubSpot-Signature` = hex(SHA-256(client secret + body)); no URI, no time: replayable.
v1/v2 are chosen by `X-HubSpot-Signature-Version`. When a v3 signature is present and accepted, it
alone decides, so stripping it is the only way to fall back to v1/v2 (see `signature_versions`).

The URI is the public URL HubSpot called; behind a proxy tidings sees another one, hence
`public_url`. HubSpot gives events no unique id (`eventId` is "not guaranteed to be unique"), so
each event is keyed on a hash of the fields that together identify it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import field_validator

from tidings.configmodel import Duration
from tidings.exceptions import AuthenticationFailed
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    Receiver,
    Reception,
    SignedSourceSettings,
    compact,
    parse_json,
)

Version = Literal["v1", "v2", "v3"]

# The fields that together identify one event (HubSpot reuses eventId); absent ones count as null.
IDENTITY = (
    "portalId",
    "subscriptionId",
    "eventId",
    "objectId",
    "occurredAt",
    "propertyName",
    "propertyValue",
)

# HubSpot's v3 instructions decode these escapes (and only these) in the URI before signing.
_V3_ESCAPES = {
    "%3a": ":", "%2f": "/", "%3f": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2a": "*", "%2c": ",", "%3b": ";",
}  # fmt: skip
_V3_ESCAPE = re.compile("|".join(_V3_ESCAPES), re.IGNORECASE)


class HubSpotSettings(SignedSourceSettings):
    """`secrets`: the app's client secret."""

    kind: Literal["hubspot"]
    # All three by default: HubSpot documents that CRM-object webhook deliveries carry a v1
    # signature, and answers 401 are never retried, so a v3-only default could lose every event
    # of such an app without a trace. Set [v3] once your deliveries show X-HubSpot-Signature-v3.
    signature_versions: list[Version] = ["v1", "v2", "v3"]
    tolerance: Duration = timedelta(seconds=300)
    public_url: str | None = None

    @field_validator("signature_versions")
    @classmethod
    def _versions(cls, versions: list[Version]) -> list[Version]:
        if not versions:
            raise ValueError("list at least one of v1, v2, v3")
        return sorted(set(versions))

    @field_validator("tolerance")
    @classmethod
    def _positive(cls, tolerance: timedelta) -> timedelta:
        if tolerance <= timedelta(0):
            raise ValueError("tolerance must be positive (HubSpot's own window is 300s)")
        return tolerance

    @field_validator("public_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("public_url must be an absolute URL, e.g. https://hooks.example.com/hooks/crm")
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise ValueError("public_url must not hold a query string; the request's own is appended")
        return url


def v3_uri(uri: str) -> str:
    """The URI as HubSpot's v3 instructions have it signed: the listed escapes decoded."""
    return _V3_ESCAPE.sub(lambda m: _V3_ESCAPES[m.group(0).lower()], uri)


def v3_signature(secret: bytes, method: str, uri: str, body: bytes, timestamp: str) -> bytes:
    """The raw HMAC digest that `X-HubSpot-Signature-v3` carries base64-encoded."""
    return signing.hmac_sha256(secret, method.encode() + uri.encode() + body + timestamp.encode())


def legacy_signature(secret: bytes, version: str, method: str, uri: str, body: bytes) -> bytes:
    """The raw SHA-256 digest that a v1 or v2 `X-HubSpot-Signature` carries hex-encoded."""
    signed = secret + body if version == "v1" else secret + method.encode() + uri.encode() + body
    return hashlib.sha256(signed).digest()


def dedupe_key(event: dict[str, Any]) -> str:
    """One key per event: the identifying fields, hashed so any value length fits the store."""
    identity = json.dumps([event.get(name) for name in IDENTITY], separators=(",", ":"), sort_keys=True)
    return "event:sha256:" + hashlib.sha256(identity.encode()).hexdigest()


class HubSpotReceiver(Receiver[HubSpotSettings]):
    kind = "hubspot"
    settings_model = HubSpotSettings
    kept_headers = (
        "x-hubspot-request-timestamp",
        "x-hubspot-signature-version",
        "content-type",
        "user-agent",
    )

    def receive(self, request: InboundRequest) -> Reception:
        self._verify(request)
        try:
            events = parse_json(request.body)
        except Exception as exc:
            return self.flag(request, str(exc))
        return self._split(request, events)

    # authenticity -----------------------------------------------------------------------

    def signed_uri(self, request: InboundRequest) -> str:
        """The URL HubSpot signed: `public_url` when set (plus the request's query), else ours."""
        if self.settings.public_url is None:
            return request.url
        query = urlsplit(request.url).query
        return self.settings.public_url + (f"?{query}" if query else "")

    def _verify(self, request: InboundRequest) -> None:
        allowed = self.settings.signature_versions
        v3 = request.header("x-hubspot-signature-v3")
        if v3 is not None and "v3" in allowed:
            self._verify_v3(request, v3)
            return
        legacy = request.header("x-hubspot-signature")
        version = (request.header("x-hubspot-signature-version") or "").strip().lower()
        if not legacy:
            if v3 is not None:
                raise _not_accepted("v3", allowed)
            raise AuthenticationFailed(
                "missing X-HubSpot-Signature-v3 header (or X-HubSpot-Signature)", code="missing_signature"
            )
        if version not in ("v1", "v2"):
            raise AuthenticationFailed(
                f"X-HubSpot-Signature-Version is {version or 'missing'!r}; expected v1 or v2"
            )
        if version not in allowed:
            raise _not_accepted(version, allowed)
        self._verify_legacy(request, version, legacy)

    def _verify_v3(self, request: InboundRequest, signature: str) -> None:
        stamp = signing.require(request.header("x-hubspot-request-timestamp"), "X-HubSpot-Request-Timestamp")
        try:
            sent_at = datetime.fromtimestamp(int(stamp) / 1000, UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise AuthenticationFailed(
                "X-HubSpot-Request-Timestamp is not epoch milliseconds", code="invalid_timestamp"
            ) from exc
        # HubSpot's SDK refuses only old timestamps; a far-future one is refused too, as it would
        # extend the replay window by however much the sender's clock is ahead.
        signing.check_timestamp(sent_at, self.clock.now(), self.settings.tolerance, future=True)
        try:
            received = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuthenticationFailed("X-HubSpot-Signature-v3 is not base64") from exc
        uri = self.signed_uri(request)
        # HubSpot's docs decode some escapes before signing; its Python SDK signs the URI as given.
        # Both forms are tried, so either sender behaviour verifies (each needs the secret).
        uris = dict.fromkeys((uri, v3_uri(uri)))
        expected = [
            v3_signature(key, request.method, u, request.body, stamp) for key in self.keys for u in uris
        ]
        if not signing.any_match(expected, [received]):
            raise AuthenticationFailed("X-HubSpot-Signature-v3 does not match a configured secret")

    def _verify_legacy(self, request: InboundRequest, version: str, signature: str) -> None:
        try:
            received = bytes.fromhex(signature.strip())
        except ValueError as exc:
            raise AuthenticationFailed("X-HubSpot-Signature is not hex") from exc
        uri = self.signed_uri(request)
        expected = (legacy_signature(key, version, request.method, uri, request.body) for key in self.keys)
        if not signing.any_match(expected, [received]):
            raise AuthenticationFailed(f"X-HubSpot-Signature ({version}) does not match a configured secret")

    # splitting --------------------------------------------------------------------------

    def _split(self, request: InboundRequest, events: Any) -> Reception:
        if not isinstance(events, list):
            return self.flag(request, "body is not a JSON array of events")
        if not events:
            return self.flag(request, "the batch holds no events")
        items = []
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                return self.flag(request, f"event {index} is not a JSON object")
            if event.get("eventId") is None:
                return self.flag(request, f"event {index} has no eventId")
            topic = event.get("subscriptionType")
            items.append(
                Item(
                    keys=(dedupe_key(event),),
                    topic=topic if isinstance(topic, str) and topic else None,
                    payload=compact(event),
                )
            )
        return Reception(items=items, headers=self.keep_headers(request))


def _not_accepted(version: str, allowed: Sequence[str]) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"the request is signed with {version}, which this source does not accept "
        f"(signature_versions: [{', '.join(allowed)}])",
        code="signature_version_not_accepted",
    )
