"""The standard-webhooks preset: payloads following the convention become events and profiles."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import count
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import fixture, inbox_rows
from tests.integration.test_standard_webhooks import CONFIG, signed
from tidings.profiles.read import load, resolve
from tidings.store.schema import events

SPEC = fixture("standard-webhooks/spec_example_payloads.json")
SPEC_TIME = datetime(2022, 11, 3, 20, 26, 10, 344522, tzinfo=UTC)
_messages = count(1)


async def post(client: Any, clock: Any, *payloads: Any) -> None:
    for payload in payloads:
        body = json.dumps(payload).encode()
        headers = signed(body, f"msg_{next(_messages)}", clock.now())
        response = await client.post("/hooks/app", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1


def profile(tidings: Any, ref: str) -> Any:
    def read(conn: Any) -> Any:
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


def recorded(tidings: Any) -> list[Any]:
    return tidings.store.read_sync(
        lambda conn: list(conn.execute(select(events).order_by(events.c.inbox_id)))
    )


async def test_the_spec_s_full_payload_is_an_event_of_the_contact_it_describes(running, clock) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, clock, SPEC["full_payload"])
        await tidings.processor.drain()
        [created] = recorded(tidings)
        assert created.name == "contact.created"  # the app's own name for it
        assert created.occurred_at == SPEC_TIME  # the payload's timestamp, not the arrival
        assert created.properties == SPEC["full_payload"]["data"]
        assert profile(tidings, "phone:+12813322575").identities == ["phone:+12813322575"]


@pytest.mark.parametrize("name", ["example_payload", "thin_payload"])
async def test_a_payload_that_names_no_one_stays_unmapped(running, clock, name) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, clock, SPEC[name])
        await tidings.processor.drain()
        [row] = inbox_rows(tidings)
        assert row.status == "unmapped"
        assert SPEC[name]["type"] in row.error
        assert recorded(tidings) == []


async def test_a_payload_off_the_convention_stays_unmapped(running, clock) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(
            client, clock, {"type": "user.created", "email": "ann@example.com"}, ["not", "an", "object"]
        )
        await tidings.processor.drain()
        assert [row.status for row in inbox_rows(tidings)] == ["unmapped", "unmapped"]


async def test_canonical_names_feed_the_built_in_traits(running, clock) -> None:
    order = {
        "type": "Order Completed",
        "timestamp": "2026-03-01T10:20:00Z",
        "data": {
            "user_id": 42,
            "email": "Ann@Example.com",
            "order_id": "o-1",
            "value": 30.5,
            "currency": "EUR",
        },
    }
    async with running(CONFIG) as (tidings, client):
        await post(client, clock, order)
        await tidings.processor.drain()
        customer = profile(tidings, "user_id:42")
        assert set(customer.identities) == {"email:ann@example.com", "user_id:42"}
        assert customer.traits["orders_count"] == 1
        assert customer.traits["lifetime_value"] == 30.5
        assert customer.traits["last_order_at"].startswith("2026-03-01T10:20:00")


async def test_nested_people_and_explicit_traits_are_read(running, clock) -> None:
    signup = {
        "type": "subscription.started",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": {
            "id": "sub_1",
            "customer": {"email": "bo@example.com", "phone": "+44 20 7946 0958"},
            "traits": {"plan": "pro", "first_name": "Bo"},
        },
    }
    async with running(CONFIG) as (tidings, client):
        await post(client, clock, signup)
        await tidings.processor.drain()
        customer = profile(tidings, "bo@example.com")
        assert set(customer.identities) == {"email:bo@example.com", "phone:+442079460958"}
        assert customer.traits["plan"] == "pro"
        assert customer.traits["first_name"] == "Bo"
        [started] = recorded(tidings)
        assert started.properties["id"] == "sub_1"
