"""The stripe preset: signed Stripe events become canonical events and profiles (SQLite and PostgreSQL).

Each test posts events as Stripe would (signed with the official SDK), lets the processor drain
the inbox, and reads what a user would: the profile, and the events recorded on it.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import fixture, inbox_rows
from tests.integration.test_stripe import CONFIG, ENV, signed
from tidings.profiles.read import load, resolve
from tidings.store.schema import events

COMPLETED = fixture("stripe/checkout.session.completed_DERIVED.json")
EXPIRED = fixture("stripe/checkout.session.expired_DERIVED.json")
CUSTOMER_UPDATED = fixture("stripe/customer.updated_DERIVED.json")
INVOICE_PAID = fixture("stripe/invoice.paid_DERIVED.json")
PLAN_CREATED = fixture("stripe/event_envelope_fixtures3.json")
SESSION_ID = COMPLETED["data"]["object"]["id"]
CREATED = datetime.fromtimestamp(COMPLETED["created"], UTC)  # 2009-02-13T23:31:30Z


# --------------------------------------------------------------------------- helpers


def event(base: dict[str, Any], event_id: str, type_: str | None = None, **changes: Any) -> dict[str, Any]:
    """A copy of a fixture event with a new id (and type), and `changes` made to data.object."""
    result = copy.deepcopy(base)
    result["id"] = event_id
    if type_ is not None:
        result["type"] = type_
    result["data"]["object"].update(changes)
    return result


def paid_session(**changes: Any) -> dict[str, Any]:
    """A completed session as a real shop has one: amounts, a customer and their details."""
    details = {**COMPLETED["data"]["object"]["customer_details"], "name": "Ann Lee", "phone": "+33612345678"}
    fields = {
        "amount_total": 4999,
        "amount_subtotal": 5499,
        "currency": "eur",
        "customer": "cus_ann",
        "customer_details": {**details, "email": "Ann@Example.com"},
        "total_details": {"amount_discount": 500, "amount_shipping": 0, "amount_tax": 833},
    }
    return event(COMPLETED, "evt_paid", **{**fields, **changes})


async def post(client: Any, clock: Any, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        raw = json.dumps(body).encode()
        response = await client.post("/hooks/payments", content=raw, headers=signed(raw, clock.now()))
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1


def profile(tidings: Any, ref: str) -> Any:
    def read(conn: Any) -> Any:
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


def recorded(tidings: Any) -> list[Any]:
    """The canonical events applied, in arrival order."""
    return tidings.store.read_sync(
        lambda conn: list(conn.execute(select(events).order_by(events.c.inbox_id)))
    )


# --------------------------------------------------------------------------- checkout sessions


async def test_the_completed_session_fixture_is_an_order_of_the_customer_by_email(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, COMPLETED)
        await tidings.processor.drain()
        [order] = recorded(tidings)
        assert order.name == "Order Completed"
        assert order.occurred_at == CREATED  # the event's `created`, not when it arrived
        assert order.properties["checkout_id"] == SESSION_ID
        assert order.properties["payment_status"] == "paid"
        assert "value" not in order.properties  # the fixture has no amount: none is made up
        customer = profile(tidings, "example@example.com")
        assert customer.identities == ["email:example@example.com"]
        assert customer.traits["orders_count"] == 1
        assert customer.traits["last_order_at"].startswith("2009-02-13T23:31:30")


async def test_an_order_value_is_in_major_units_and_the_currency_upper_case(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, paid_session())
        await tidings.processor.drain()
        [order] = recorded(tidings)
        assert order.properties["value"] == 49.99  # 4999 cents
        assert order.properties["subtotal"] == 54.99
        assert order.properties["discount"] == 5.0
        assert order.properties["tax"] == 8.33
        assert order.properties["currency"] == "EUR"
        customer = profile(tidings, "ann@example.com")
        assert set(customer.identities) == {
            "email:ann@example.com",
            "phone:+33612345678",
            "stripe:customer:cus_ann",
        }
        assert customer.traits["lifetime_value"] == 49.99
        assert customer.traits["name"] == "Ann Lee"


@pytest.mark.parametrize(
    ("currency", "amount", "value"),
    [("jpy", 5000, 5000), ("krw", 12000, 12000), ("kwd", 12340, 12.34), ("usd", 5, 0.05)],
    ids=["yen-has-no-minor-unit", "won-neither", "dinar-has-three-digits", "cents"],
)
async def test_amounts_follow_the_currency_s_minor_unit(running, clock, currency, amount, value) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, paid_session(amount_total=amount, currency=currency))
        await tidings.processor.drain()
        [order] = recorded(tidings)
        assert order.properties["value"] == value
        assert profile(tidings, "ann@example.com").traits["lifetime_value"] == value


async def test_a_delayed_payment_is_an_order_only_once_the_money_arrives(running, clock) -> None:
    unpaid = paid_session(payment_status="unpaid")
    succeeded = event(unpaid, "evt_async", "checkout.session.async_payment_succeeded", payment_status="paid")
    succeeded["created"] += 86400
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, unpaid)
        await tidings.processor.drain()
        assert [e.name for e in recorded(tidings)] == ["Order Pending"]
        assert "orders_count" not in profile(tidings, "ann@example.com").traits

        await post(client, clock, succeeded)
        await tidings.processor.drain()
        assert [e.name for e in recorded(tidings)] == ["Order Pending", "Order Completed"]
        customer = profile(tidings, "stripe:customer:cus_ann")
        assert customer.traits["orders_count"] == 1
        assert customer.traits["lifetime_value"] == 49.99


async def test_a_setup_session_buys_nothing_and_stays_unmapped(running, clock) -> None:
    setup = paid_session(mode="setup", payment_status="no_payment_required", amount_total=None)
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, setup)
        await tidings.processor.drain()
        [row] = inbox_rows(tidings)
        assert row.status == "unmapped"
        assert "skipped" in row.error
        assert profile(tidings, "ann@example.com") is None


async def test_promotional_consent_ticked_at_checkout_subscribes_and_unticked_changes_nothing(
    running, clock
) -> None:
    ticked = paid_session(consent={"promotions": "opt_in", "terms_of_service": None})
    unticked = event(ticked, "evt_later", consent={"promotions": "opt_out", "terms_of_service": None})
    unticked["created"] += 3600
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, ticked, unticked)
        await tidings.processor.drain()
        consent = profile(tidings, "ann@example.com").consent["email"]
        assert consent["state"] == "subscribed"
        assert consent["source"] == "payments"


async def test_an_expired_session_is_a_checkout_expired_with_its_recovery_link(running, clock) -> None:
    url = "https://buy.stripe.com/r/live_abc"
    expired = event(
        EXPIRED,
        "evt_expired",
        amount_total=2500,
        currency="usd",
        after_expiration={"recovery": {"allow_promotion_codes": True, "enabled": True, "url": url}},
    )
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, EXPIRED, expired)
        await tidings.processor.drain()
        fixture_event, with_link = recorded(tidings)
        assert fixture_event.name == with_link.name == "Checkout Expired"
        assert fixture_event.properties["checkout_id"] == SESSION_ID
        assert "checkout_url" not in fixture_event.properties  # the fixture has no recovery URL
        assert with_link.properties["checkout_url"] == url
        assert with_link.properties["value"] == 25.0
        customer = profile(tidings, "example@example.com")
        assert "orders_count" not in customer.traits  # it ends a checkout, it is no purchase


# --------------------------------------------------------------------------- customers, invoices


async def test_the_customer_updated_fixture_identifies_the_stripe_customer(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, CUSTOMER_UPDATED)
        await tidings.processor.drain()
        [identify] = recorded(tidings)
        assert identify.name == "Identify"
        customer = profile(tidings, "stripe:customer:cus_QXg1o8vcGmoR32")
        assert customer.identities == ["stripe:customer:cus_QXg1o8vcGmoR32"]  # its email is null


async def test_a_customer_update_lands_on_the_profile_of_their_orders(running, clock) -> None:
    updated = event(
        CUSTOMER_UPDATED,
        "evt_cus",
        "customer.created",
        id="cus_ann",
        email="ann.lee@example.org",
        name="Ann B. Lee",
        phone="+33 6 12 34 56 78",
        preferred_locales=["fr-FR"],
    )
    updated["created"] = COMPLETED["created"] + 60  # after the order, so its name is the newer one
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, paid_session(), updated)
        await tidings.processor.drain()
        customer = profile(tidings, "ann.lee@example.org")
        assert customer.id == profile(tidings, "ann@example.com").id
        assert set(customer.identities) == {
            "email:ann.lee@example.org",
            "email:ann@example.com",
            "phone:+33612345678",
            "stripe:customer:cus_ann",
        }
        assert customer.traits["name"] == "Ann B. Lee"
        assert customer.traits["locale"] == "fr-FR"
        assert customer.traits["orders_count"] == 1


async def test_a_paid_invoice_is_recorded_but_is_not_an_order(running, clock) -> None:
    renewal = event(
        INVOICE_PAID,
        "evt_renewal",
        amount_paid=1000,
        customer_email="ann@example.com",
        billing_reason="subscription_cycle",
        status_transitions={"paid_at": 1_700_000_000},
    )
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, INVOICE_PAID, renewal)
        await tidings.processor.drain()
        fixture_event, paid = recorded(tidings)
        assert fixture_event.name == paid.name == "Invoice Paid"
        assert fixture_event.properties["invoice_id"] == "in_1Pgc6tB7WZ01zgkWu9fdqL6I"
        assert fixture_event.occurred_at == CREATED  # no paid_at in the fixture: the event's time
        assert paid.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)
        assert paid.properties["value"] == 10.0
        assert paid.properties["currency"] == "USD"
        assert paid.properties["billing_reason"] == "subscription_cycle"
        customer = profile(tidings, "stripe:customer:cus_QXg1o8vcGmoR32")
        assert customer.id == profile(tidings, "ann@example.com").id
        assert "orders_count" not in customer.traits
        assert "lifetime_value" not in customer.traits


async def test_other_event_types_stay_unmapped_with_the_reason(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, PLAN_CREATED)
        await tidings.processor.drain()
        [row] = inbox_rows(tidings)
        assert row.status == "unmapped"
        assert "plan.created" in row.error
        assert recorded(tidings) == []
