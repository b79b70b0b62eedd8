"""The built-in WooCommerce preset: signed webhook -> stored -> mapped -> profile (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import fixture, inbox_rows
from tidings.profiles.read import load, resolve
from tidings.store.schema import events

SECRET = "woo-preset-test-secret"
CONFIG = f"""
sources:
  woo:
    kind: woocommerce
    secrets: ["{SECRET}"]
"""
ORDER = fixture("woocommerce/order_retrieve_example_wc_v3.json")
CUSTOMER = fixture("woocommerce/customer_retrieve_example_wc_v3.json")
EMAIL = "john.doe@example.com"
ITEMS = [
    {
        "product_id": "93",
        "variant_id": None,
        "sku": None,
        "name": "Woo Single #1",
        "price": 3,
        "quantity": 2,
        "image_url": None,
    },
    {
        "product_id": "22",
        "variant_id": "23",
        "sku": "Bar3",
        "name": "Ship Your Idea &ndash; Color: Black, Size: M Test",
        "price": 12,
        "quantity": 1,
        "image_url": None,
    },
]


async def post(client, topic: str, payload: dict[str, Any]) -> None:
    """One delivery as WC_Webhook::deliver makes it: base64 HMAC-SHA256 of the body with the secret."""
    body = json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()
    resource, _, event = topic.partition(".")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.5.1 Hookshot (WordPress/6.7.1)",
        "X-WC-Webhook-Source": "https://shop.example.com/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": base64.b64encode(
            hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        ).decode(),
        "X-WC-Webhook-ID": "12" if resource == "order" else "13",
        "X-WC-Webhook-Delivery-ID": "3a7b0c9e5f2d4a1b8c6e0f9d2a4b6c8e",
    }
    response = await client.post("/hooks/woo", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def order(status: str, modified: str, **changes: Any) -> dict[str, Any]:
    """The fixture order in another state; each state has its own date_modified_gmt, as in WooCommerce."""
    payload = copy.deepcopy(ORDER)
    payload.update(status=status, date_modified_gmt=modified, **changes)
    return payload


def pending(**changes: Any) -> dict[str, Any]:
    """The order as created by the checkout, before payment: not paid yet, with its payment page."""
    return order(
        "pending",
        "2017-03-22T19:28:02",
        date_paid=None,
        date_paid_gmt=None,
        payment_url="https://example.com/checkout/order-pay/727/?pay_for_order=true&key=wc_order_58d2d042d1d",
        **changes,
    )


def mapped_events(tidings) -> list[Any]:
    return tidings.store.read_sync(
        lambda conn: list(conn.execute(select(events).order_by(events.c.inbox_id)))
    )


def profile_of(tidings, ref: str):
    def read(conn):
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


async def test_a_processing_order_is_an_order_completed(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "order.created", ORDER)
        await tidings.processor.drain()
        [event] = mapped_events(tidings)
        assert event.name == "Order Completed"
        assert event.occurred_at == datetime(2017, 3, 22, 19, 28, 8, tzinfo=UTC)  # date_paid_gmt
        # A guest order (customer_id 0) has no WooCommerce customer id to carry.
        assert set(event.identities) == {f"email:{EMAIL}", "phone:+15555555555"}
        props = event.properties
        assert (props["order_id"], props["checkout_id"]) == ("727", "727")
        assert props["value"] == 29.35  # "29.35" in the payload
        assert (props["tax"], props["shipping"], props["discount"]) == (1.35, 10.0, 0.0)
        assert props["currency"] == "USD"
        assert props["items"] == ITEMS

        profile = profile_of(tidings, EMAIL)
        assert profile.traits["orders_count"] == 1
        assert profile.traits["lifetime_value"] == 29.35
        assert profile.traits["last_order_at"].startswith("2017-03-22T19:28:08")
        assert (profile.traits["first_name"], profile.traits["city"]) == ("John", "San Francisco")


async def test_a_pending_order_is_a_checkout_and_paying_it_clears_the_cart(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "order.created", pending())
        await tidings.processor.drain()
        [checkout] = mapped_events(tidings)
        assert checkout.name == "Checkout Started"
        assert checkout.occurred_at == datetime(2017, 3, 22, 19, 28, 2, tzinfo=UTC)
        assert checkout.properties["checkout_id"] == "727"
        assert checkout.properties["checkout_url"].startswith("https://example.com/checkout/order-pay/727/")
        profile = profile_of(tidings, EMAIL)
        assert profile.traits["cart_items"] == ITEMS
        assert profile.traits["cart_value"] == 29.35
        assert profile.traits["checkout_id"] == "727"

        await post(client, "order.updated", ORDER)  # paid: processing, date_paid_gmt 19:28:08
        await tidings.processor.drain()
        profile = profile_of(tidings, EMAIL)
        assert profile.traits["cart_items"] is None
        assert profile.traits["cart_value"] is None
        assert profile.traits["orders_count"] == 1


@pytest.mark.parametrize(
    ("status", "name"),
    [
        ("completed", "Order Completed"),
        ("on-hold", "Order Completed"),  # awaiting a bank transfer: the customer has ordered
        ("failed", "Checkout Started"),
        ("cancelled", "Order Cancelled"),
        ("refunded", "Order Refunded"),
    ],
)
async def test_the_order_status_decides_the_event(running, status, name) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "order.updated", order(status, "2017-03-25T10:00:00"))
        await tidings.processor.drain()
        [event] = mapped_events(tidings)
        assert event.name == name
        assert event.properties["order_id"] == "727"
        assert event.properties["items"] == ITEMS


@pytest.mark.parametrize(("topic", "status"), [("order.updated", "trash"), ("order.deleted", "processing")])
async def test_other_order_states_are_skipped(running, topic, status) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, topic, order(status, "2017-03-25T10:00:00"))
        await tidings.processor.drain()
        [row] = inbox_rows(tidings)
        assert row.status == "unmapped"
        assert "skipped" in row.error


async def test_a_refunded_order_takes_its_value_off_the_lifetime_value(running) -> None:
    refunded = order(
        "refunded", "2017-03-25T10:00:00", refunds=[{"id": 730, "reason": "Wrong size", "total": "-29.35"}]
    )
    async with running(CONFIG) as (tidings, client):
        await post(client, "order.created", ORDER)
        await post(client, "order.updated", refunded)
        await tidings.processor.drain()
        refund = mapped_events(tidings)[1]
        assert refund.name == "Order Refunded"
        assert refund.occurred_at == datetime(2017, 3, 25, 10, tzinfo=UTC)
        assert refund.properties["value"] == 29.35
        profile = profile_of(tidings, EMAIL)
        assert profile.traits["lifetime_value"] == 0
        assert profile.traits["orders_count"] == 1


async def test_a_customer_is_an_identify_and_their_orders_join_them(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "customer.updated", CUSTOMER)
        await post(client, "order.created", {**ORDER, "customer_id": 25})
        await tidings.processor.drain()
        identify, placed = mapped_events(tidings)
        assert identify.name == "Identify"
        assert identify.occurred_at == datetime(2017, 3, 21, 19, 9, 30, tzinfo=UTC)
        assert set(identify.identities) == {f"email:{EMAIL}", "phone:+15555555555", "woocommerce:customer:25"}
        assert "woocommerce:customer:25" in placed.identities
        profile = profile_of(tidings, "woocommerce:customer:25")
        assert profile.id == profile_of(tidings, EMAIL).id
        traits = profile.traits
        assert (traits["email"], traits["first_name"], traits["last_name"]) == (EMAIL, "John", "Doe")
        assert (traits["username"], traits["country"]) == ("john.doe", "US")
        assert traits["paying_customer"] is False
        assert traits["orders_count"] == 1


async def test_an_order_updated_again_is_not_counted_again(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "order.created", ORDER)
        await post(client, "order.updated", order("completed", "2017-03-24T09:00:00"))
        await tidings.processor.drain()
        profile = profile_of(tidings, EMAIL)
        assert profile.traits["orders_count"] == 1
        assert profile.traits["lifetime_value"] == 29.35


async def test_a_user_mapping_overrides_the_preset_for_its_topic(running) -> None:
    config = (
        CONFIG
        + """
    mappings:
      - topic: order.updated
        when: "payload.status == 'completed'"
        event: Order Shipped
        occurred_at: payload.date_modified_gmt
        identities:
          email: payload.billing.email
        properties:
          order_id: to_string(payload.id)
"""
    )
    async with running(config) as (tidings, client):
        await post(client, "order.updated", order("completed", "2017-03-24T09:00:00"))
        await post(client, "order.updated", order("cancelled", "2017-03-25T09:00:00"))
        await tidings.processor.drain()
        shipped, cancelled = mapped_events(tidings)
        assert shipped.name == "Order Shipped"
        assert shipped.properties == {"order_id": "727"}
        assert cancelled.name == "Order Cancelled"  # the user's `when` did not hold: the preset applies
        assert "orders_count" not in profile_of(tidings, EMAIL).traits


async def test_presets_false_leaves_items_unmapped(running) -> None:
    async with running(CONFIG + "    presets: false\n") as (tidings, client):
        await post(client, "order.created", ORDER)
        await post(client, "customer.created", CUSTOMER)
        await tidings.processor.drain()
        rows = inbox_rows(tidings)
        assert [r.status for r in rows] == ["unmapped", "unmapped"]
        assert all("no mapping rule" in r.error for r in rows)
        assert mapped_events(tidings) == []
