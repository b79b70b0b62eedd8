"""The whole path to an ESP: a tracking call, the profile it updates, the push Klaviyo receives."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.integration.test_processing import AUTH, track
from tidings.delivery import outbox
from tidings.store.schema import outbox as outbox_table
from tidings.testing import KlaviyoSimulator

KEY = "pk_test_simulator"


def config(url: str) -> str:
    return f"""
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
destinations:
  klaviyo:
    kind: klaviyo
    api_key: "{KEY}"
    base_url: "{url}"
    profile_sync:
      fields:
        first_name: profile.traits.first_name
        cart_value: profile.traits.cart_value
        cart_items: profile.traits.cart_items
"""


@pytest.fixture
def klaviyo():
    with KlaviyoSimulator([KEY]).running() as simulator:
        yield simulator


async def post(client, call: str, body: dict) -> None:
    response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=AUTH)
    assert response.status_code == 200, response.text


async def test_a_cart_reaches_klaviyo_as_profile_properties(running, klaviyo) -> None:
    async with running(config(klaviyo.url)) as (tidings, client):
        await post(
            client,
            "identify",
            {
                "messageId": "i",
                "userId": "u1",
                "timestamp": "2026-03-01T10:00:00Z",
                "traits": {"email": "Ann@Example.com", "first_name": "Ann"},
            },
        )
        items = [{"sku": "S-1", "name": "Mug", "price": 12.5, "quantity": 2}]
        await post(
            client,
            "track",
            track(
                1,
                "Checkout Started",
                "2026-03-01T10:05:00Z",
                {"checkout_id": "c1", "products": items, "value": 25.0},
            ),
        )
        await tidings.processor.drain()
        await tidings.dispatcher.drain()
        assert klaviyo.invalid == []  # every body matched Klaviyo's published schema
        [profile] = klaviyo.profiles.values()
        attributes = profile["attributes"]
        assert attributes["email"] == "ann@example.com"
        assert attributes["first_name"] == "Ann"
        assert attributes["properties"]["cart_value"] == 25.0
        assert attributes["properties"]["cart_items"] == items


async def test_a_crash_between_the_call_and_its_record_does_not_double_a_klaviyo_event(
    running, klaviyo, clock
) -> None:
    """The event reached Klaviyo, then tidings died before recording it: sent again on recovery,
    and Klaviyo's unique_id dedupe (tidings' idempotency key) keeps it to one event."""
    async with running(config(klaviyo.url)) as (tidings, _):
        payload = {"email": "ann@example.com", "event": "Abandoned Cart", "properties": {"cart_value": 25}}
        tidings.store.write_sync(
            lambda c: outbox.enqueue(
                c,
                destination="klaviyo",
                action="track_event",
                idempotency_key="flow:cart:c1",
                payload=payload,
                now=clock.now(),
            )
        )
        await tidings.dispatcher.run_once()
        assert len(klaviyo.accepted_events) == 1
        # as if the process had died after Klaviyo's 202, before settling: in flight, lease run out
        tidings.store.write_sync(
            lambda c: c.execute(
                update(outbox_table).values(
                    status="in_flight", lease_until=clock.now() - timedelta(seconds=1)
                )
            )
        )
        await tidings.dispatcher.run_once()
        assert len(klaviyo.requests) == 2  # it was sent again ...
        assert len(klaviyo.accepted_events) == 1  # ... and Klaviyo kept one
        assert klaviyo.duplicate_events == 1


async def test_a_replay_pushes_in_klaviyos_no_trigger_mode_and_a_live_change_does_not(
    running, klaviyo, clock
) -> None:
    from sqlalchemy import select

    from tidings.replay import Selection, replay

    async with running(config(klaviyo.url)) as (tidings, client):
        start = clock.now()
        identify = {
            "messageId": "i",
            "userId": "u1",
            "timestamp": start.isoformat(),
            "traits": {"email": "ann@example.com", "first_name": "Ann"},
        }
        await post(client, "identify", identify)
        await tidings.processor.drain()

        def pushes(conn):
            return list(conn.execute(select(outbox_table.c.payload, outbox_table.c.coalesce_key)))

        [live] = tidings.store.read_sync(pushes)
        assert "backfill" not in live.payload and live.coalesce_key == "klaviyo:sync:1"
        await tidings.dispatcher.drain()
        # A replay that changes the profile (as after a mapping fix) pushes it, marked as history.
        from tidings.store.schema import profiles

        tidings.store.write_sync(
            lambda conn: conn.execute(update(profiles).values(traits={"first_name": "Zed"}))
        )
        await replay(tidings, Selection(since=start - timedelta(minutes=1)))
        replayed = tidings.store.read_sync(pushes)[1:]
        assert [(r.payload.get("backfill"), r.coalesce_key) for r in replayed] == [
            (True, "klaviyo:backfill:1")
        ]
