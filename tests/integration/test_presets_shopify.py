"""The built-in Shopify preset: signed webhook -> stored -> mapped -> profile (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import fixture, inbox_rows
from tidings.profiles.read import load, resolve
from tidings.store.schema import events

SECRET = "shpss_preset_test_secret"
CONFIG = f"""
sources:
  shop:
    kind: shopify
    secrets: ["{SECRET}"]
"""
ORDER = fixture("shopify/orders_create_CONSTRUCTED.json")
CHECKOUT = fixture("shopify/checkouts_create_CONSTRUCTED.json")
CART = fixture("shopify/carts_update_CONSTRUCTED.json")
CUSTOMER = fixture("shopify/customers_update_CONSTRUCTED.json")
REFUND = fixture("shopify/refunds_create_CONSTRUCTED.json")

EMAIL = "ann.lee@example.com"
CUSTOMER_ID = "shopify:customer:7012345678901"
CART_TOKEN = CART["token"]
CHECKOUT_TOKEN = CHECKOUT["token"]
ORDER_ITEMS = [
    {
        "product_id": "8123456789012",
        "variant_id": "44123456789012",
        "sku": "MUG-SAND",
        "name": "Stoneware Mug - Sand",
        "price": 12.5,
        "quantity": 2,
    },
    {
        "product_id": "8123456789013",
        "variant_id": "44123456789013",
        "sku": "TOWEL-LINEN",
        "name": "Linen Tea Towel",
        "price": 15.0,
        "quantity": 1,
    },
]
_ids = itertools.count(1)


async def post(
    client, topic: str, payload: dict[str, Any], triggered_at: str = "2026-03-05T12:00:00Z"
) -> None:
    """One webhook delivery as Shopify makes it: HMAC of the raw body with the client secret."""
    body = json.dumps(payload).encode()
    n = next(_ids)
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": base64.b64encode(
            hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        ).decode(),
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-API-Version": "2025-01",
        "X-Shopify-Webhook-Id": f"wh-{n}",
        "X-Shopify-Event-Id": f"ev-{n}",
        "X-Shopify-Triggered-At": triggered_at,
    }
    response = await client.post("/hooks/shop", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def mapped_events(tidings) -> list[Any]:
    return tidings.store.read_sync(
        lambda conn: list(conn.execute(select(events).order_by(events.c.inbox_id)))
    )


def profile_of(tidings, ref: str):
    def read(conn):
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


async def test_orders_create_is_an_order_completed(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "orders/create", ORDER)
        await tidings.processor.drain()
        [event] = mapped_events(tidings)
        assert event.name == "Order Completed"
        assert event.occurred_at == utc("2026-03-01T10:20:00-05:00")  # processed_at, not receipt
        assert set(event.identities) == {
            f"email:{EMAIL}",  # the order's "Ann.Lee@Example.com", normalised
            "phone:+14155550123",
            CUSTOMER_ID,
            "shopify:order:5820349775940",
            f"shopify:cart:{CART_TOKEN}",
        }
        props = event.properties
        assert props["order_id"] == "5820349775940"
        assert props["checkout_id"] == CHECKOUT_TOKEN  # what an abandoned-cart flow matches on
        assert props["value"] == 42.9  # "42.90" in the payload
        assert (props["subtotal"], props["tax"], props["discount"], props["shipping"]) == (
            37.0,
            7.15,
            3.0,
            5.9,
        )
        assert props["currency"] == "EUR"
        assert props["coupon"] == "WELCOME3"
        assert props["items"] == ORDER_ITEMS
        assert event.consent == {"email": "subscribed"}  # buyer_accepts_marketing: true

        profile = profile_of(tidings, EMAIL)
        assert profile.traits["orders_count"] == 1
        assert profile.traits["lifetime_value"] == 42.9
        assert profile.traits["last_order_at"].startswith("2026-03-01T15:20:00")
        assert profile.traits["first_name"] == "Ann"
        assert profile.consent["email"]["state"] == "subscribed"


async def test_not_ticking_marketing_at_checkout_unsubscribes_no_one(running) -> None:
    order = {**ORDER, "buyer_accepts_marketing": False}
    async with running(CONFIG) as (tidings, client):
        await post(client, "customers/update", CUSTOMER)  # subscribed, 10:21
        await post(client, "orders/create", {**order, "processed_at": "2026-03-01T11:00:00-05:00"})
        await tidings.processor.drain()
        [_, event] = mapped_events(tidings)
        assert event.consent == {}
        assert profile_of(tidings, EMAIL).consent["email"]["state"] == "subscribed"


async def test_cart_then_checkout_then_order(running) -> None:
    """The abandoned-cart journey: the cart is known by its token until the checkout names the customer."""
    async with running(CONFIG) as (tidings, client):
        await post(client, "carts/update", CART)
        await tidings.processor.drain()
        [cart] = mapped_events(tidings)
        assert cart.name == "Cart Updated"
        assert cart.identities == [f"shopify:cart:{CART_TOKEN}"]  # a cart names no customer
        assert cart.occurred_at == utc("2026-03-01T15:02:11.482+00:00")
        assert cart.properties == {
            "cart_id": CART_TOKEN,
            "value": 25.0,
            "currency": "EUR",
            "items": [{**ORDER_ITEMS[0]}],
        }
        anonymous = profile_of(tidings, f"shopify:cart:{CART_TOKEN}")
        assert anonymous.traits["cart_value"] == 25.0

        await post(client, "checkouts/create", CHECKOUT)
        await tidings.processor.drain()
        checkout = mapped_events(tidings)[1]
        assert checkout.name == "Checkout Started"
        assert checkout.occurred_at == utc("2026-03-01T10:06:12-05:00")
        assert checkout.properties["checkout_id"] == CHECKOUT_TOKEN
        assert checkout.properties["cart_id"] == CART_TOKEN
        assert checkout.properties["checkout_url"] == CHECKOUT["abandoned_checkout_url"]
        assert checkout.properties["value"] == 40.0
        assert checkout.properties["currency"] == "EUR"
        assert [(i["name"], i["sku"], i["price"], i["quantity"]) for i in checkout.properties["items"]] == [
            ("Stoneware Mug", "MUG-SAND", 12.5, 2),
            ("Linen Tea Towel", "TOWEL-LINEN", 15.0, 1),
        ]
        assert checkout.consent == {}  # buyer_accepts_marketing: false says nothing

        profile = profile_of(tidings, EMAIL)
        assert profile.id == profile_of(tidings, f"shopify:cart:{CART_TOKEN}").id  # the cart joined her
        assert profile.traits["cart_value"] == 40.0
        assert profile.traits["checkout_id"] == CHECKOUT_TOKEN
        assert profile.traits["checkout_url"] == CHECKOUT["abandoned_checkout_url"]
        assert len(profile.traits["cart_items"]) == 2
        assert profile.traits["cart_currency"] == "EUR"

        await post(client, "orders/create", ORDER)
        await tidings.processor.drain()
        profile = profile_of(tidings, CUSTOMER_ID)
        assert profile.traits["cart_items"] is None
        assert profile.traits["cart_value"] is None
        assert profile.traits["checkout_url"] is None
        assert profile.traits["orders_count"] == 1


async def test_a_completed_checkout_does_not_refill_the_cart(running) -> None:
    completed = {
        **CHECKOUT,
        "completed_at": "2026-03-01T10:20:01-05:00",
        "updated_at": "2026-03-01T10:20:06-05:00",
    }
    async with running(CONFIG) as (tidings, client):
        await post(client, "checkouts/create", CHECKOUT)
        await post(client, "orders/create", ORDER)
        await post(client, "checkouts/update", completed)
        await tidings.processor.drain()
        assert [r.status for r in inbox_rows(tidings)] == ["processed", "processed", "unmapped"]
        assert profile_of(tidings, EMAIL).traits["cart_items"] is None


async def test_orders_paid_does_not_count_the_order_twice(running) -> None:
    """orders/create is the conversion; orders/paid of the same order is recorded, not counted."""
    paid = {**ORDER, "updated_at": "2026-03-01T10:25:00-05:00"}
    async with running(CONFIG) as (tidings, client):
        await post(client, "orders/create", ORDER)
        await post(client, "orders/paid", paid)
        await tidings.processor.drain()
        names = [e.name for e in mapped_events(tidings)]
        assert names == ["Order Completed", "Order Paid"]
        paid_event = mapped_events(tidings)[1]
        assert paid_event.properties["order_id"] == "5820349775940"
        assert paid_event.properties["value"] == 42.9
        profile = profile_of(tidings, EMAIL)
        assert profile.traits["orders_count"] == 1
        assert profile.traits["lifetime_value"] == 42.9


async def test_orders_cancelled_is_an_order_cancelled(running) -> None:
    cancelled = copy.deepcopy(ORDER)
    cancelled.update(
        cancelled_at="2026-03-02T08:00:00-05:00",
        cancel_reason="customer",
        updated_at="2026-03-02T08:00:01-05:00",
        financial_status="voided",
    )
    async with running(CONFIG) as (tidings, client):
        await post(client, "orders/cancelled", cancelled)
        await tidings.processor.drain()
        [event] = mapped_events(tidings)
        assert event.name == "Order Cancelled"
        assert event.occurred_at == utc("2026-03-02T08:00:00-05:00")
        assert event.properties["order_id"] == "5820349775940"
        assert event.properties["reason"] == "customer"
        assert event.properties["value"] == 42.9
        assert event.properties["items"] == ORDER_ITEMS
        assert CUSTOMER_ID in event.identities


@pytest.mark.parametrize("refund_first", [False, True], ids=["in-order", "refund-arrives-first"])
async def test_a_refund_finds_its_customer_through_the_order(running, refund_first) -> None:
    """A refund payload names only its order; the order's identity carries it to the customer."""
    async with running(CONFIG) as (tidings, client):
        for topic, payload in (
            [("refunds/create", REFUND), ("orders/create", ORDER)]
            if refund_first
            else [("orders/create", ORDER), ("refunds/create", REFUND)]
        ):
            await post(client, topic, payload)
            await tidings.processor.drain()
        refund = next(e for e in mapped_events(tidings) if e.name == "Order Refunded")
        assert refund.identities == ["shopify:order:5820349775940"]
        assert refund.occurred_at == utc("2026-03-04T09:12:00-05:00")
        assert refund.properties["value"] == 12.5
        assert refund.properties["currency"] == "EUR"
        assert refund.properties["items"] == [{**ORDER_ITEMS[0], "quantity": 1}]
        profile = profile_of(tidings, EMAIL)
        assert profile_of(tidings, "shopify:order:5820349775940").id == profile.id
        assert profile.traits["lifetime_value"] == pytest.approx(30.4)
        assert profile.traits["orders_count"] == 1


async def test_customers_update_is_an_identify(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "customers/update", CUSTOMER)
        await tidings.processor.drain()
        [event] = mapped_events(tidings)
        assert event.name == "Identify"
        assert event.occurred_at == utc("2026-03-01T10:21:00-05:00")
        assert set(event.identities) == {f"email:{EMAIL}", "phone:+14155550123", CUSTOMER_ID}
        assert event.consent == {"email": "subscribed", "sms": "unsubscribed"}
        profile = profile_of(tidings, CUSTOMER_ID)
        traits = profile.traits
        assert (traits["first_name"], traits["last_name"], traits["email"]) == ("Ann", "Lee", EMAIL)
        assert traits["phone"] == "+14155550123"
        assert traits["tags"] == ["VIP", "newsletter"]  # "VIP, newsletter"
        assert (traits["city"], traits["country"]) == ("Dublin", "IE")
        assert traits["shopify_orders_count"] == 1
        assert traits["shopify_total_spent"] == 42.9
        assert "orders_count" not in traits  # tidings counts orders it sees; Shopify's count is apart
        assert profile.consent["email"]["state"] == "subscribed"
        assert profile.consent["email"]["source"] == "shop"
        assert profile.consent["sms"]["state"] == "unsubscribed"


@pytest.mark.parametrize(
    ("accepts", "state"), [(True, "subscribed"), (False, "unsubscribed")], ids=["accepts", "declines"]
)
async def test_the_older_accepts_marketing_flag_gives_consent(running, accepts, state) -> None:
    """Payloads of older API versions carry accepts_marketing instead of email_marketing_consent."""
    old = {k: v for k, v in CUSTOMER.items() if not k.endswith("marketing_consent")}
    old["accepts_marketing"] = accepts
    async with running(CONFIG) as (tidings, client):
        await post(client, "customers/create", old)
        await tidings.processor.drain()
        assert profile_of(tidings, EMAIL).consent["email"]["state"] == state


@pytest.mark.parametrize(
    ("topic", "path", "kind", "orders"),
    [
        ("customers/data_request", "shopify/customers_data_request.json", "access", "orders_requested"),
        ("customers/redact", "shopify/customers_redact.json", "erasure", "orders_to_redact"),
    ],
    ids=["data_request", "redact"],
)
async def test_privacy_topics_are_privacy_requests(running, topic, path, kind, orders) -> None:
    payload = fixture(path)
    async with running(CONFIG) as (tidings, client):
        await post(client, topic, payload, triggered_at="2026-03-05T12:00:00Z")
        await tidings.processor.drain()
        [event] = mapped_events(tidings)
        assert event.name == "Privacy Request"
        assert event.properties["kind"] == kind
        assert event.properties["request"] == topic
        assert event.properties["orders"] == [str(n) for n in payload[orders]]
        assert set(event.identities) == {
            "email:john@example.com",
            "phone:+15556251199",
            "shopify:customer:191167",
        }
        assert event.occurred_at == datetime(2026, 3, 5, 12, tzinfo=UTC)  # X-Shopify-Triggered-At


async def test_shop_redact_is_skipped(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, "shop/redact", fixture("shopify/shop_redact.json"))
        await tidings.processor.drain()
        [row] = inbox_rows(tidings)
        assert row.status == "unmapped"
        assert "skipped" in row.error
        assert mapped_events(tidings) == []


async def test_a_user_mapping_overrides_the_preset_for_its_topic(running) -> None:
    config = (
        CONFIG
        + """
    mappings:
      - topic: orders/create
        event: Order Placed
        occurred_at: payload.created_at
        identities:
          email: payload.email
        properties:
          order_id: to_string(payload.id)
"""
    )
    async with running(config) as (tidings, client):
        await post(client, "orders/create", ORDER)
        await post(client, "customers/update", CUSTOMER)
        await tidings.processor.drain()
        placed, identify = mapped_events(tidings)
        assert placed.name == "Order Placed"
        assert placed.properties == {"order_id": "5820349775940"}
        assert placed.occurred_at == utc("2026-03-01T10:20:03-05:00")
        assert identify.name == "Identify"  # the preset still maps the topics the user left alone
        assert "orders_count" not in profile_of(tidings, EMAIL).traits


async def test_presets_false_leaves_items_unmapped(running) -> None:
    async with running(CONFIG + "    presets: false\n") as (tidings, client):
        await post(client, "orders/create", ORDER)
        await post(client, "customers/update", CUSTOMER)
        await tidings.processor.drain()
        rows = inbox_rows(tidings)
        assert [r.status for r in rows] == ["unmapped", "unmapped"]
        assert "no mapping rule" in rows[0].error
        assert mapped_events(tidings) == []
