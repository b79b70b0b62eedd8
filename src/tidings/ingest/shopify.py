"""Shopify: base64 HMAC-SHA256 of the raw body, keyed with the app's client secret.

Two header sets exist: the classic `X-Shopify-*` and the un-prefixed `shopify-*` of the newer
"events" deliveries (Shopify sends both during the transition). Shopify's own docs disagree on the
dedupe key: the webhook id (one per delivery, kept across retries) or the event id (one per event,
shared by every subscription that receives it). An item carries both, so either repeats as a
duplicate. The privacy topics (customers/data_request, customers/redact, shop/redact) go the same
way: Shopify's review requires 401 for a bad HMAC, which every topic gets.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from pydantic import SecretStr, field_validator

from tidings.exceptions import AuthenticationFailed, MalformedPayload
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    LookupSettings,
    Receiver,
    Reception,
    SignedSourceSettings,
    content_key,
    parse_json,
)

# Access tokens look like secrets but never sign anything; catching them at config time saves a
# day of 401s. Client secrets are either `shpss_...` or bare hex.
_TOKEN_PREFIXES = ("shpat_", "shpca_", "shppa_", "shpua_")

_HMAC_HEADERS = ("x-shopify-hmac-sha256", "shopify-hmac-sha256")
_TOPIC_HEADERS = ("x-shopify-topic", "shopify-topic")
_EVENT_ID_HEADERS = ("x-shopify-event-id", "shopify-event-id")

# Ids and topics come from headers the HMAC does not cover; keep them within the store's columns.
MAX_ID = 200
MAX_TOPIC = 200


_SHOP = re.compile(r"^[a-z0-9][a-z0-9-]*\.myshopify\.com$")
_API_VERSION = re.compile(r"^(\d{4}-(01|04|07|10)|unstable)$")


class ShopifyLookupSettings(LookupSettings):
    """The GraphQL Admin API, asked about a checkout right before a flow sends (tidings.lookups)."""

    shop: str  # the shop's myshopify.com domain
    access_token: SecretStr  # an Admin API access token with read_orders and read_products
    api_version: str = "2025-07"

    @field_validator("shop")
    @classmethod
    def _shop(cls, shop: str) -> str:
        value = shop.strip().lower()
        if "://" in value or "/" in value:
            raise ValueError(
                "shop is the bare domain, e.g. example.myshopify.com, without https:// or a path"
            )
        if not _SHOP.match(value):
            hint = f" (did you mean {value}.myshopify.com?)" if "." not in value and value else ""
            raise ValueError(
                "shop must be the shop's myshopify.com domain, e.g. example.myshopify.com; the Admin API "
                f"is not served on a storefront's own domain{hint}"
            )
        return value

    @field_validator("access_token")
    @classmethod
    def _token(cls, token: SecretStr) -> SecretStr:
        value = token.get_secret_value().strip()
        if not value:
            raise ValueError("access_token is empty (is its environment variable set?)")
        if value.startswith("shpss_"):
            raise ValueError(
                "a value starting shpss_ is the app's client secret, which signs webhooks; the Admin API "
                "needs an Admin API access token (shpat_...)"
            )
        return SecretStr(value)

    @field_validator("api_version")
    @classmethod
    def _version(cls, version: str) -> str:
        if not _API_VERSION.match(version):
            raise ValueError(
                f"api_version {version!r} is not a Shopify API version: use a release like 2025-07 "
                "(January, April, July or October of a year) or unstable"
            )
        return version


class ShopifySettings(SignedSourceSettings):
    kind: Literal["shopify"]
    lookup: ShopifyLookupSettings | None = None  # live checkout lookups for flows (tidings.lookups)

    @field_validator("secrets")
    @classmethod
    def _client_secrets(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for secret in secrets:
            value = secret.get_secret_value()
            if value.startswith(_TOKEN_PREFIXES):
                raise ValueError(
                    f"a secret starting {value[:6]} is an Admin API access token; "
                    "webhooks are signed with the app's client secret"
                )
        return secrets


class ShopifyReceiver(Receiver[ShopifySettings]):
    kind = "shopify"
    settings_model = ShopifySettings
    kept_headers = (
        "x-shopify-topic",
        "x-shopify-sub-topic",
        "x-shopify-shop-domain",
        "x-shopify-api-version",
        "x-shopify-webhook-id",
        "x-shopify-event-id",
        "x-shopify-triggered-at",
        "x-shopify-name",
        "shopify-topic",
        "shopify-shop-domain",
        "shopify-api-version",
        "shopify-event-id",
        "shopify-handle",
        "shopify-action",
        "shopify-resource-id",
        "shopify-triggered-at",
        "content-type",
        "user-agent",
    )

    def receive(self, request: InboundRequest) -> Reception:
        self._verify(request)

        topic = _first(request, _TOPIC_HEADERS)
        if topic is None:
            return self.flag(request, "no X-Shopify-Topic header")
        if len(topic) > MAX_TOPIC:
            return self.flag(request, f"X-Shopify-Topic is longer than {MAX_TOPIC} characters")
        try:
            payload = parse_json(request.body)
        except MalformedPayload as exc:
            return self.flag(request, str(exc), topic=topic)
        if not isinstance(payload, dict):
            return self.flag(request, "body is JSON but not an object", topic=topic)
        return Reception(
            items=[Item(keys=_dedupe_keys(request), topic=topic)],
            headers=self.keep_headers(request),
        )

    def _verify(self, request: InboundRequest) -> None:
        """Either header set may carry the HMAC; a valid one from either proves the body."""
        values = [v for name in _HMAC_HEADERS if (v := request.header(name))]
        if not values:
            raise AuthenticationFailed("missing X-Shopify-Hmac-Sha256 header", code="missing_signature")
        received = []
        for value in values:
            try:
                received.append(base64.b64decode(value.strip(), validate=True))
            except (binascii.Error, ValueError):
                continue
        if not received:
            raise AuthenticationFailed("X-Shopify-Hmac-Sha256 is not base64")
        expected = (signing.hmac_sha256(key, request.body) for key in self.keys)
        if not signing.any_match(expected, received):
            raise AuthenticationFailed(
                "X-Shopify-Hmac-Sha256 does not match the body signed with any configured secret"
            )


def _first(request: InboundRequest, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = request.header(name)
        if value and value.strip():
            return value.strip()
    return None


def _dedupe_keys(request: InboundRequest) -> tuple[str, ...]:
    """`webhook:<id>` and `event:<id>`; with neither header, a hash of the body."""
    keys = []
    webhook_id = _first(request, ("x-shopify-webhook-id",))
    if webhook_id is not None:
        keys.append(_bounded("webhook", webhook_id))
    event_id = _first(request, _EVENT_ID_HEADERS)
    if event_id is not None:
        keys.append(_bounded("event", event_id))
    return tuple(keys) or (content_key(request.body),)


def _bounded(prefix: str, value: str) -> str:
    """An id too long for the store is replaced by its hash (still stable across retries)."""
    if len(value) > MAX_ID:
        value = content_key(value.encode())
    return f"{prefix}:{value}"
