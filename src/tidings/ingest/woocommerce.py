"""WooCommerce: base64 HMAC-SHA256 of the raw body, keyed with the webhook's secret.

WooCommerce gives no stable event id (its Delivery-ID hashes the webhook id with the current
second), so an item is keyed on what identifies a resource's state: webhook id, resource id and
`date_modified_gmt`. Payloads without those (`*.deleted` carries only the id, `action.*` topics
carry no resource) are keyed on a hash of the body, scoped to the webhook so that order 7 and
customer 7 being deleted are not taken for one another.

When a webhook is created WooCommerce pings it with an unsigned form body `webhook_id=<id>` and
refuses to save it unless the answer is 200. The ping carries nothing to store, so it is answered
and dropped; any other unsigned request is refused like any unsigned request.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from tidings.exceptions import AuthenticationFailed, MalformedPayload
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    Outcome,
    Receiver,
    Reception,
    Reply,
    SignedSourceSettings,
    content_key,
    parse_json,
)

FORM = "application/x-www-form-urlencoded"
_PING = re.compile(rb"webhook_id=[0-9]{1,20}")

# Ids and topics come from headers the HMAC does not cover; keep them within the store's columns.
MAX_ID = 200
MAX_TOPIC = 200


class WooCommerceSettings(SignedSourceSettings):
    """`secrets`: the webhook's Secret field (WooCommerce > Settings > Advanced > Webhooks)."""

    kind: Literal["woocommerce"]


class WooCommerceReceiver(Receiver[WooCommerceSettings]):
    kind = "woocommerce"
    settings_model = WooCommerceSettings
    media_types = frozenset({"application/json", FORM})
    kept_headers = (
        "x-wc-webhook-topic",
        "x-wc-webhook-resource",
        "x-wc-webhook-event",
        "x-wc-webhook-id",
        "x-wc-webhook-delivery-id",
        "x-wc-webhook-source",
        "content-type",
        "user-agent",
    )

    def receive(self, request: InboundRequest) -> Reception:
        signature = request.header("x-wc-webhook-signature")
        if signature is None and _is_ping(request):
            return Reception(items=[])
        self._verify(signature, request.body)

        topic = _header(request, "x-wc-webhook-topic")
        if topic is None:
            return self.flag(request, "no X-WC-Webhook-Topic header")
        if len(topic) > MAX_TOPIC:
            return self.flag(request, f"X-WC-Webhook-Topic is longer than {MAX_TOPIC} characters")
        try:
            payload = parse_json(request.body)
        except MalformedPayload as exc:
            return self.flag(request, str(exc), topic=topic)
        if not isinstance(payload, dict):
            return self.flag(request, "body is JSON but not an object", topic=topic)
        return Reception(
            items=[Item(keys=(_dedupe_key(request, payload),), topic=topic)],
            headers=self.keep_headers(request),
        )

    def reply(self, reception: Reception, outcome: Outcome) -> Reply:
        if not reception.items:  # the ping: WooCommerce wants exactly 200, nothing was stored
            return Reply(status=200, body=b'{"status": "ping"}')
        return super().reply(reception, outcome)

    def _verify(self, signature: str | None, body: bytes) -> None:
        header = signing.require(signature, "X-WC-Webhook-Signature")
        try:
            received = base64.b64decode(header.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuthenticationFailed("X-WC-Webhook-Signature is not base64") from exc
        expected = (signing.hmac_sha256(key, body) for key in self.keys)
        if not signing.any_match(expected, [received]):
            raise AuthenticationFailed(
                "X-WC-Webhook-Signature does not match the body signed with any configured secret"
            )


def _is_ping(request: InboundRequest) -> bool:
    return request.media_type == FORM and _PING.fullmatch(request.body) is not None


def _header(request: InboundRequest, name: str) -> str | None:
    value = request.header(name)
    return value.strip() if value and value.strip() else None


def _dedupe_key(request: InboundRequest, payload: dict[str, object]) -> str:
    """`<webhook id>/<resource id>/<date_modified_gmt>`, else `<webhook id>/sha256:<body hash>`."""
    webhook_id = _header(request, "x-wc-webhook-id")
    if webhook_id is not None and len(webhook_id) > MAX_ID:
        webhook_id = content_key(webhook_id.encode())
    resource_id = payload.get("id")
    modified = payload.get("date_modified_gmt")
    if (
        webhook_id is not None
        and isinstance(resource_id, int | str)
        and not isinstance(resource_id, bool)
        and str(resource_id)
        and len(str(resource_id)) <= MAX_ID
        and isinstance(modified, str)
        and modified
        and len(modified) <= MAX_ID
    ):
        return f"{webhook_id}/{resource_id}/{modified}"
    body_key = content_key(request.body)
    return f"{webhook_id}/{body_key}" if webhook_id is not None else body_key
