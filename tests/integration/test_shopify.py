"""The shopify kind, end to end through HTTP into the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from tests.conftest import fixture, inbox_rows, request_count
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError
from tidings.ingest.base import content_key

VECTOR = fixture("shopify/signature_vector_COMPUTED.json")
SECRET = VECTOR["client_secret"]
OLD_SECRET = "0123456789abcdef0123456789abcdef"  # the form of a newer, bare-hex client secret
CONFIG = f"""
sources:
  shop:
    kind: shopify
    secrets: ["{SECRET}", "{OLD_SECRET}"]
"""
INVALID = "invalid_signature"
PRIVACY = [
    ("customers/data_request", "shopify/customers_data_request.json"),
    ("customers/redact", "shopify/customers_redact.json"),
    ("shop/redact", "shopify/shop_redact.json"),
]


def hmac_header(body: bytes, secret: str = SECRET) -> str:
    """X-Shopify-Hmac-Sha256 as Shopify computes it: base64 of HMAC-SHA256(client secret, raw body)."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def delivery(
    body: bytes,
    topic: str = "orders/create",
    webhook_id: str | None = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    event_id: str | None = "98880550-7158-44d4-b7cd-2c97c8a091b5",
    secret: str = SECRET,
) -> dict[str, str]:
    """Headers of a classic webhook delivery, in Shopify's own capitalisation."""
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": hmac_header(body, secret),
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-API-Version": "2025-01",
        "X-Shopify-Triggered-At": "2025-01-15T10:00:00.000000Z",
    }
    if webhook_id is not None:
        headers["X-Shopify-Webhook-Id"] = webhook_id
    if event_id is not None:
        headers["X-Shopify-Event-Id"] = event_id
    return headers


def test_our_signing_reproduces_the_vector() -> None:
    """The helper every other test signs with computes the documented digest."""
    assert hmac_header(VECTOR["raw_body"].encode()) == VECTOR["expected_X-Shopify-Hmac-Sha256"]


async def test_signature_vector_is_accepted_and_stored(running) -> None:
    body = VECTOR["raw_body"].encode()
    headers = delivery(body, topic="shop/redact", webhook_id="wh-1", event_id="ev-1")
    headers["X-Shopify-Hmac-Sha256"] = VECTOR["expected_X-Shopify-Hmac-Sha256"]
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        [row] = inbox_rows(tidings)
        assert row.topic == "shop/redact"
        assert row.dedupe_key == "webhook:wh-1"
        assert row.status == "pending"
        assert row.payload is None


@pytest.mark.parametrize(("topic", "path"), PRIVACY, ids=[t for t, _ in PRIVACY])
async def test_privacy_topics_are_stored(running, topic, path) -> None:
    body = json.dumps(fixture(path)).encode()
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=delivery(body, topic=topic))
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert row.topic == topic
        assert row.status == "pending"


@pytest.mark.parametrize(("topic", "path"), PRIVACY, ids=[t for t, _ in PRIVACY])
async def test_privacy_topics_with_invalid_hmac_get_401(running, topic, path) -> None:
    """Shopify's app review sends these with a wrong HMAC and requires 401."""
    body = json.dumps(fixture(path)).encode()
    headers = delivery(body, topic=topic, secret="not-the-client-secret")
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_signature"
        assert inbox_rows(tidings) == []
        assert request_count(tidings) == 0


async def test_either_configured_secret_verifies_during_rotation(running) -> None:
    async with running(CONFIG) as (tidings, client):
        for n, secret in enumerate([OLD_SECRET, SECRET]):
            body = json.dumps({"id": n}).encode()
            headers = delivery(body, webhook_id=f"wh-{n}", event_id=f"ev-{n}", secret=secret)
            response = await client.post("/hooks/shop", content=body, headers=headers)
            assert response.status_code == 200, response.text
        assert len(inbox_rows(tidings)) == 2


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h, b: h.pop("X-Shopify-Hmac-Sha256"), "missing_signature"),
        (lambda h, b: h.update({"X-Shopify-Hmac-Sha256": ""}), "missing_signature"),
        (lambda h, b: h.update({"X-Shopify-Hmac-Sha256": hmac_header(b, "wrong")}), "invalid_signature"),
        (lambda h, b: h.update({"X-Shopify-Hmac-Sha256": hmac_header(b + b" ")}), "invalid_signature"),
        (lambda h, b: h.update({"X-Shopify-Hmac-Sha256": "not base64!"}), "invalid_signature"),
        (
            lambda h, b: h.update({"X-Shopify-Hmac-Sha256": hmac_header(b).encode().hex()}),
            "invalid_signature",
        ),
    ],
    ids=["missing", "empty", "wrong-secret", "other-body", "not-base64", "hex-not-base64"],
)
async def test_bad_hmac_gets_401_and_stores_nothing(running, mutate, code) -> None:
    body = b'{"id":820982911946154508,"email":"jon@example.com"}'
    headers = delivery(body)
    mutate(headers, body)
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []
        assert request_count(tidings) == 0


async def test_retry_with_same_webhook_id_is_a_duplicate(running) -> None:
    body = b'{"id":1,"email":"ann@example.com"}'
    async with running(CONFIG) as (tidings, client):
        first = await client.post("/hooks/shop", content=body, headers=delivery(body))
        again = await client.post("/hooks/shop", content=body, headers=delivery(body))
        assert first.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        assert again.status_code == 200
        assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
        assert len(inbox_rows(tidings)) == 1
        assert request_count(tidings) == 1


async def test_same_event_from_a_second_subscription_is_a_duplicate(running) -> None:
    """Each subscription gets its own webhook id for one event; the event id is shared."""
    body = b'{"id":2,"email":"bob@example.com"}'
    async with running(CONFIG) as (tidings, client):
        first = await client.post(
            "/hooks/shop", content=body, headers=delivery(body, webhook_id="wh-a", event_id="ev-9")
        )
        second = await client.post(
            "/hooks/shop", content=body, headers=delivery(body, webhook_id="wh-b", event_id="ev-9")
        )
        assert first.json()["accepted"] == 1
        assert second.json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
        [row] = inbox_rows(tidings)
        assert row.dedupe_key == "webhook:wh-a"


async def test_different_events_are_both_stored(running) -> None:
    body = b'{"id":3}'
    async with running(CONFIG) as (tidings, client):
        for n in (1, 2):
            headers = delivery(body, topic="customers/update", webhook_id=f"wh-{n}", event_id=f"ev-{n}")
            response = await client.post("/hooks/shop", content=body, headers=headers)
            assert response.json()["accepted"] == 1
        assert [r.topic for r in inbox_rows(tidings)] == ["customers/update", "customers/update"]


async def test_events_style_unprefixed_headers_are_accepted(running) -> None:
    body = b'{"id":4,"total_price":"10.00"}'
    headers = {
        "content-type": "application/json",
        "shopify-hmac-sha256": hmac_header(body),
        "shopify-topic": "orders/paid",
        "shopify-shop-domain": "example.myshopify.com",
        "shopify-event-id": "ev-42",
        "shopify-triggered-at": "2025-01-15T10:00:00Z",
    }
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=headers)
        assert response.status_code == 200, response.text
        again = await client.post("/hooks/shop", content=body, headers=headers)
        assert again.json()["duplicates"] == 1
        [row] = inbox_rows(tidings)
        assert row.topic == "orders/paid"
        assert row.dedupe_key == "event:ev-42"


async def test_unprefixed_hmac_with_a_wrong_value_gets_401(running) -> None:
    body = b'{"id":5}'
    headers = {"content-type": "application/json", "shopify-hmac-sha256": hmac_header(body, "wrong")}
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=headers)
        assert response.status_code == 401
        assert inbox_rows(tidings) == []


async def test_without_ids_a_hash_of_the_body_dedupes(running) -> None:
    body = b'{"id":6}'
    headers = delivery(body, webhook_id=None, event_id=None)
    async with running(CONFIG) as (tidings, client):
        await client.post("/hooks/shop", content=body, headers=headers)
        again = await client.post("/hooks/shop", content=body, headers=headers)
        assert again.json()["duplicates"] == 1
        [row] = inbox_rows(tidings)
        assert row.dedupe_key == content_key(body)


async def test_an_overlong_webhook_id_is_stored_under_its_hash(running) -> None:
    """The id header is not signed; a huge one must not break the store (PostgreSQL checks lengths)."""
    body = b'{"id":7}'
    long_id = "x" * 600
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=delivery(body, webhook_id=long_id))
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert row.dedupe_key == "webhook:" + content_key(long_id.encode())


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b'{"id": 8, "email": ', "invalid JSON"), (b'["not", "an", "object"]', "not an object")],
    ids=["truncated", "array"],
)
async def test_authentic_but_malformed_body_is_stored_flagged(running, body, reason) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=delivery(body))
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"
        assert reason in row.error
        assert row.topic == "orders/create"


async def test_authentic_body_without_topic_is_stored_flagged(running) -> None:
    body = b'{"id":9}'
    headers = delivery(body)
    del headers["X-Shopify-Topic"]
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/shop", content=body, headers=headers)
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert "X-Shopify-Topic" in row.error


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ("[]", "at least one secret"),
        ('["shpat_0123456789abcdef"]', "access token"),
    ],
    ids=["none", "access-token"],
)
def test_config_refuses_unusable_secrets(secrets, message) -> None:
    yaml_text = f"sources:\n  shop:\n    kind: shopify\n    secrets: {secrets}\n"
    with pytest.raises(ConfigurationError) as raised:
        parse_settings(yaml_text, "tidings.yaml", {})
    assert message in str(raised.value)
    assert "shpat_0123456789abcdef" not in str(raised.value)


def test_config_requires_secrets() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_settings("sources:\n  shop:\n    kind: shopify\n", "tidings.yaml", {})
    assert "secrets" in str(raised.value)
