"""Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` over `{t}.{raw body}`.

The key is the endpoint's signing secret as typed, `whsec_` prefix included (it is not base64
decoded, unlike Standard Webhooks). During a secret roll Stripe sends one `v1` per live secret,
so every `v1` entry is a candidate. The event `id` (`evt_...`) is the same on every retry of
an event, so it is the dedupe key; the event `type` is the topic.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import SecretStr, field_validator

from tidings.configmodel import Duration
from tidings.exceptions import AuthenticationFailed
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    LookupSettings,
    Receiver,
    Reception,
    SignedSourceSettings,
    parse_json,
)


class StripeLookupSettings(LookupSettings):
    """Stripe's API, asked about a Checkout Session right before a flow sends (tidings.lookups)."""

    api_key: SecretStr  # sk_..., or a restricted rk_... key allowed to read Checkout Sessions
    stripe_version: str | None = None  # sent as Stripe-Version; None: the account's default version

    @field_validator("api_key")
    @classmethod
    def _key(cls, key: SecretStr) -> SecretStr:
        value = key.get_secret_value().strip()
        if not value:
            raise ValueError("api_key is empty (is its environment variable set?)")
        if value.startswith("whsec_"):
            raise ValueError(
                "a value starting whsec_ is a webhook signing secret; the lookup needs an API key: "
                "a secret key (sk_...) or a restricted key (rk_...) with read access to Checkout Sessions"
            )
        if value.startswith("pk_"):
            raise ValueError(
                "a publishable key (pk_...) cannot read Checkout Sessions; use a secret key (sk_...) or "
                "a restricted key (rk_...) with read access to Checkout Sessions"
            )
        if not value.startswith(("sk_", "rk_")):
            raise ValueError("a Stripe API key starts with sk_ (secret key) or rk_ (restricted key)")
        return SecretStr(value)


class StripeSettings(SignedSourceSettings):
    kind: Literal["stripe"]
    tolerance: Duration = timedelta(seconds=300)
    lookup: StripeLookupSettings | None = None  # live Checkout Session lookups for flows (tidings.lookups)

    @field_validator("secrets")
    @classmethod
    def _whsec(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for secret in secrets:
            if not secret.get_secret_value().startswith("whsec_"):
                # The usual mistake is pasting an API key (sk_..., rk_...): it would never verify.
                raise ValueError(
                    "a Stripe signing secret starts with whsec_ (Dashboard > Webhooks > the endpoint > "
                    "Signing secret); API keys (sk_..., rk_...) do not sign webhooks"
                )
        return secrets

    @field_validator("tolerance")
    @classmethod
    def _positive(cls, tolerance: timedelta) -> timedelta:
        if tolerance <= timedelta(0):
            raise ValueError("tolerance must be positive (Stripe's own default is 300s)")
        return tolerance


def parse_signature_header(header: str) -> tuple[str | None, list[str]]:
    """The first `t` value and every `v1` value; other schemes (`v0`) and junk are ignored."""
    stamp: str | None = None
    v1: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t" and stamp is None:
            stamp = value
        elif name == "v1":
            v1.append(value)
    return stamp, v1


class StripeReceiver(Receiver[StripeSettings]):
    kind = "stripe"
    settings_model = StripeSettings
    kept_headers = ("content-type", "user-agent")

    def receive(self, request: InboundRequest) -> Reception:
        self._verify(request)
        try:
            event = parse_json(request.body)
        except Exception as exc:
            return self.flag(request, str(exc))
        return self._split(request, event)

    def _verify(self, request: InboundRequest) -> None:
        header = signing.require(request.header("stripe-signature"), "Stripe-Signature")
        stamp, candidates = parse_signature_header(header)
        if stamp is None:
            raise AuthenticationFailed("Stripe-Signature has no t= timestamp")
        try:
            timestamp = int(stamp)
            sent_at = datetime.fromtimestamp(timestamp, UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise AuthenticationFailed(
                "Stripe-Signature t= is not unix seconds", code="invalid_timestamp"
            ) from exc
        # Stripe's SDK refuses only old timestamps. tidings also refuses ones further ahead than the
        # tolerance: Stripe stamps at send time, so a far-future t means a badly skewed clock (ours
        # or a forger's), and accepting it would stretch the replay window by the skew.
        signing.check_timestamp(sent_at, self.clock.now(), self.settings.tolerance, future=True)

        received = []
        for candidate in candidates:
            try:
                received.append(bytes.fromhex(candidate))
            except ValueError:
                continue
        if not received:
            raise AuthenticationFailed("Stripe-Signature holds no v1 signature")
        content = f"{timestamp}.".encode() + request.body
        expected = (signing.hmac_sha256(key, content) for key in self.keys)
        if not signing.any_match(expected, received):
            raise AuthenticationFailed("no v1 signature in Stripe-Signature matches a configured secret")

    def _split(self, request: InboundRequest, event: Any) -> Reception:
        if not isinstance(event, dict):
            return self.flag(request, "body is not a JSON object (a Stripe event)")
        topic = event.get("type")
        topic = topic if isinstance(topic, str) and topic else None
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            return self.flag(request, "event has no id, so redeliveries could not be recognised", topic)
        # Thin events (object "v2.core.event") carry only a reference to the changed object; they
        # are stored as they are, keyed and typed like snapshot events, to be fetched in full later.
        return Reception(items=[Item(keys=(event_id,), topic=topic)], headers=self.keep_headers(request))
