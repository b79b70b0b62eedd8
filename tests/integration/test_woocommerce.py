"""The woocommerce kind, end to end through HTTP into the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from sqlalchemy import select

from tests.conftest import fixture, inbox_rows, request_count
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError
from tidings.ingest.base import content_key
from tidings.store.schema import requests

VECTOR = fixture("woocommerce/signature_vector_COMPUTED.json")
SECRET = VECTOR["secret"]
OLD_SECRET = "an-older-woo-secret"
CONFIG = f"""
sources:
  woo:
    kind: woocommerce
    secrets: ["{SECRET}", "{OLD_SECRET}"]
"""
ORDER = fixture("woocommerce/order_retrieve_example_wc_v3.json")
CUSTOMER = fixture("woocommerce/customer_retrieve_example_wc_v3.json")
FORM = "application/x-www-form-urlencoded"
INVALID = "invalid_signature"


def signature(body: bytes, secret: str = SECRET) -> str:
    """X-WC-Webhook-Signature as WC_Webhook::generate_signature computes it."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def encode(payload: object) -> bytes:
    """The body as WooCommerce sends it: wp_json_encode (escaped slashes), trimmed."""
    return json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()


def delivery(
    body: bytes,
    topic: str = "order.updated",
    webhook_id: str = "12",
    delivery_id: str = "3a7b0c9e5f2d4a1b8c6e0f9d2a4b6c8e",
    secret: str = SECRET,
) -> dict[str, str]:
    """The headers WC_Webhook::deliver sends."""
    resource, _, event = topic.partition(".")
    return {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.5.1 Hookshot (WordPress/6.7.1)",
        "X-WC-Webhook-Source": "https://shop.example.com/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": signature(body, secret),
        "X-WC-Webhook-ID": webhook_id,
        "X-WC-Webhook-Delivery-ID": delivery_id,
    }


def test_our_signing_reproduces_the_vector() -> None:
    """The helper every other test signs with computes the documented digest."""
    assert signature(VECTOR["raw_body"].encode()) == VECTOR["expected_X-WC-Webhook-Signature"]


async def test_signature_vector_is_accepted_and_stored(running) -> None:
    body = VECTOR["raw_body"].encode()
    headers = delivery(body)
    headers["X-WC-Webhook-Signature"] = VECTOR["expected_X-WC-Webhook-Signature"]
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        [row] = inbox_rows(tidings)
        assert row.topic == "order.updated"
        assert row.status == "pending"
        assert row.payload is None
        # no date_modified_gmt in this body: keyed on its hash, within webhook 12
        assert row.dedupe_key == "12/" + content_key(body)


@pytest.mark.parametrize(
    ("payload", "topic", "key"),
    [
        (ORDER, "order.created", "12/727/2017-03-22T19:28:08"),
        (CUSTOMER, "customer.updated", "12/25/2017-03-21T19:09:30"),
    ],
    ids=["order", "customer"],
)
async def test_resources_are_stored_under_webhook_id_resource_id_and_modified_time(
    running, payload, topic, key
) -> None:
    body = encode(payload)
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=body, headers=delivery(body, topic=topic))
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert (row.topic, row.dedupe_key, row.status) == (topic, key, "pending")
        [headers] = tidings.store.read_sync(
            lambda conn: list(conn.execute(select(requests.c.headers)).scalars())
        )
        assert headers["x-wc-webhook-topic"] == topic
        assert headers["x-wc-webhook-id"] == "12"
        assert "x-wc-webhook-signature" not in headers


async def test_the_same_state_delivered_again_is_a_duplicate(running) -> None:
    """Delivery-ID changes every second, so it cannot tell a repeat; the resource's state does."""
    body = encode(ORDER)
    async with running(CONFIG) as (tidings, client):
        first = await client.post("/hooks/woo", content=body, headers=delivery(body, delivery_id="aaa"))
        again = await client.post("/hooks/woo", content=body, headers=delivery(body, delivery_id="bbb"))
        assert first.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        assert again.status_code == 200
        assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
        assert len(inbox_rows(tidings)) == 1
        assert request_count(tidings) == 1


async def test_a_later_change_and_another_webhook_are_not_duplicates(running) -> None:
    body = encode(ORDER)
    changed = encode({**ORDER, "status": "completed", "date_modified_gmt": "2017-03-23T08:00:00"})
    async with running(CONFIG) as (tidings, client):
        await client.post("/hooks/woo", content=body, headers=delivery(body))
        later = await client.post("/hooks/woo", content=changed, headers=delivery(changed))
        other = await client.post(
            "/hooks/woo", content=body, headers=delivery(body, topic="order.created", webhook_id="13")
        )
        assert later.json()["accepted"] == 1
        assert other.json()["accepted"] == 1
        assert [r.dedupe_key for r in inbox_rows(tidings)] == [
            "12/727/2017-03-22T19:28:08",
            "12/727/2017-03-23T08:00:00",
            "13/727/2017-03-22T19:28:08",
        ]


async def test_deletions_of_different_resources_with_the_same_id_are_both_stored(running) -> None:
    """`*.deleted` carries only {"id": n}: the body hash is scoped to the webhook."""
    body = b'{"id":727}'
    async with running(CONFIG) as (tidings, client):
        order = await client.post(
            "/hooks/woo", content=body, headers=delivery(body, topic="order.deleted", webhook_id="14")
        )
        customer = await client.post(
            "/hooks/woo", content=body, headers=delivery(body, topic="customer.deleted", webhook_id="15")
        )
        repeat = await client.post(
            "/hooks/woo", content=body, headers=delivery(body, topic="order.deleted", webhook_id="14")
        )
        assert order.json()["accepted"] == customer.json()["accepted"] == 1
        assert repeat.json()["duplicates"] == 1
        assert [r.topic for r in inbox_rows(tidings)] == ["order.deleted", "customer.deleted"]


async def test_the_creation_ping_is_answered_200_and_stores_nothing(running) -> None:
    """WC_Webhook::deliver_ping: form body, no X-WC-* headers; anything but 200 fails the setup."""
    headers = {"Content-Type": f"{FORM}; charset=UTF-8", "User-Agent": "WooCommerce/9.5.1 Hookshot"}
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=b"webhook_id=12", headers=headers)
        assert response.status_code == 200
        assert inbox_rows(tidings) == []
        assert request_count(tidings) == 0


@pytest.mark.parametrize(
    ("body", "extra", "code"),
    [
        (b"webhook_id=12&email=ann%40example.com", {}, "missing_signature"),
        (b"webhook_id=12\n", {}, "missing_signature"),
        (b"webhook_id=abc", {}, "missing_signature"),
        (b"email=ann%40example.com", {}, "missing_signature"),
        (
            b"webhook_id=12",
            {"X-WC-Webhook-Signature": signature(b"webhook_id=12", "wrong")},
            "invalid_signature",
        ),
        (b"webhook_id=12", {"X-WC-Webhook-Signature": ""}, "missing_signature"),
    ],
    ids=[
        "extra-field",
        "trailing-newline",
        "non-numeric",
        "not-a-ping",
        "ping-with-bad-signature",
        "empty-signature",
    ],
)
async def test_form_bodies_other_than_the_ping_must_be_signed(running, body, extra, code) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=body, headers={"Content-Type": FORM, **extra})
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []
        assert request_count(tidings) == 0


async def test_a_signed_form_body_is_stored_flagged(running) -> None:
    """Authentic but not what WooCommerce sends: kept for a human, never dropped."""
    body = b"webhook_id=12&note=hello"
    headers = {**delivery(body), "Content-Type": FORM}
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=body, headers=headers)
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"


async def test_either_configured_secret_verifies_during_rotation(running) -> None:
    async with running(CONFIG) as (tidings, client):
        for n, secret in enumerate([OLD_SECRET, SECRET]):
            body = encode({**CUSTOMER, "date_modified_gmt": f"2017-03-2{n}T00:00:00"})
            response = await client.post("/hooks/woo", content=body, headers=delivery(body, secret=secret))
            assert response.status_code == 200, response.text
        assert len(inbox_rows(tidings)) == 2


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h, b: h.pop("X-WC-Webhook-Signature"), "missing_signature"),
        (lambda h, b: h.update({"X-WC-Webhook-Signature": signature(b, "wrong")}), "invalid_signature"),
        (
            lambda h, b: h.update({"X-WC-Webhook-Signature": signature(b.replace(b"727", b"728"))}),
            "invalid_signature",
        ),
        (lambda h, b: h.update({"X-WC-Webhook-Signature": "%%%"}), "invalid_signature"),
    ],
    ids=["missing", "wrong-secret", "other-body", "not-base64"],
)
async def test_bad_signature_gets_401_and_stores_nothing(running, mutate, code) -> None:
    body = encode(ORDER)
    headers = delivery(body)
    mutate(headers, body)
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []
        assert request_count(tidings) == 0


async def test_authentic_but_malformed_body_is_stored_flagged(running) -> None:
    body = b'{"id": 727, "status": '
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/woo", content=body, headers=delivery(body))
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert (row.status, row.topic) == ("flagged", "order.updated")
        assert "invalid JSON" in row.error


def test_config_requires_a_secret() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_settings("sources:\n  woo:\n    kind: woocommerce\n    secrets: []\n", "tidings.yaml", {})
    assert "at least one secret" in str(raised.value)
