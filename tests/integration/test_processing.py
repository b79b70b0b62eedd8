"""From stored webhooks to profiles: ordering, versions, merges, consent, replay (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

from tidings.profiles.read import load, load_timeline, resolve

CONFIG = """
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
"""
AUTH = {"authorization": "Basic d2tfdGVzdDo=", "content-type": "application/json"}  # wk_test:


async def send(client, call: str, body: dict[str, Any]) -> None:
    response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def profile_of(tidings, ref: str):
    def read(conn):
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


def track(n: int, event: str, at: str, props: dict[str, Any], user: str = "u1", **extra) -> dict[str, Any]:
    return {
        "messageId": f"m{n}",
        "userId": user,
        "event": event,
        "timestamp": at,
        "properties": props,
        **extra,
    }


ITEMS = [{"product_id": "p1", "sku": "S-1", "name": "Mug", "price": 12.5, "quantity": 2}]


async def test_cart_then_order_gives_a_fresh_profile(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "identify",
            {
                "messageId": "m0",
                "userId": "u1",
                "timestamp": "2026-03-01T10:00:00Z",
                "traits": {"email": "Ann@Example.com", "first_name": "Ann"},
            },
        )
        await send(
            client,
            "track",
            track(
                1,
                "Checkout Started",
                "2026-03-01T10:05:00Z",
                {"checkout_id": "c1", "products": ITEMS, "value": 25.0, "currency": "EUR"},
            ),
        )
        await tidings.processor.drain()
        profile = profile_of(tidings, "ann@example.com")
        assert profile.traits["first_name"] == "Ann"
        assert profile.traits["cart_value"] == 25.0
        assert profile.traits["cart_items"] == ITEMS
        assert profile.traits["checkout_id"] == "c1"
        assert set(profile.identities) == {"email:ann@example.com", "user_id:u1"}

        await send(
            client,
            "track",
            track(
                2,
                "Order Completed",
                "2026-03-01T10:20:00Z",
                {"checkout_id": "c1", "order_id": "o1", "total": 25.0},
            ),
        )
        await tidings.processor.drain()
        profile = profile_of(tidings, "user_id:u1")
        assert profile.traits["cart_items"] is None
        assert profile.traits["orders_count"] == 1
        assert profile.traits["lifetime_value"] == 25.0
        assert profile.traits["last_order_at"].startswith("2026-03-01T10:20:00")
        kinds = [e.kind for e in tidings.store.read_sync(lambda c: load_timeline(c, profile.id))]
        assert kinds.count("event") == 3


async def test_a_late_older_event_never_overwrites_a_newer_value(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "identify",
            {
                "messageId": "a",
                "userId": "u1",
                "timestamp": "2026-03-02T00:00:00Z",
                "traits": {"plan": "gold"},
            },
        )
        await tidings.processor.drain()
        await send(
            client,
            "identify",
            {
                "messageId": "b",
                "userId": "u1",
                "timestamp": "2026-03-01T00:00:00Z",
                "traits": {"plan": "silver", "city": "Lyon"},
            },
        )
        await tidings.processor.drain()
        profile = profile_of(tidings, "user_id:u1")
        assert profile.traits["plan"] == "gold"  # the older event arrived later and lost
        assert profile.traits["city"] == "Lyon"  # but what only it knew is kept


async def test_an_event_linking_two_profiles_merges_them(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "track",
            track(
                1, "Product Viewed", "2026-03-01T10:00:00Z", {"name": "Mug"}, user=None, anonymousId="anon-1"
            ),
        )
        await send(
            client,
            "identify",
            {
                "messageId": "m2",
                "userId": "u1",
                "timestamp": "2026-03-01T09:00:00Z",
                "traits": {"email": "ann@example.com"},
            },
        )
        await tidings.processor.drain()
        assert profile_of(tidings, "anonymous_id:anon-1").id != profile_of(tidings, "user_id:u1").id
        await send(
            client,
            "identify",
            {
                "messageId": "m3",
                "userId": "u1",
                "anonymousId": "anon-1",
                "timestamp": "2026-03-01T11:00:00Z",
                "traits": {},
            },
        )
        await tidings.processor.drain()
        merged = profile_of(tidings, "ann@example.com")
        assert merged.id == min(profile_of(tidings, "anonymous_id:anon-1").id, merged.id)
        assert profile_of(tidings, "anonymous_id:anon-1").id == merged.id
        assert merged.traits["last_product_viewed"]["name"] == "Mug"
        assert len(merged.merged_from) == 1


async def test_an_unsubscribe_is_never_undone_by_an_older_event(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "identify",
            {
                "messageId": "a",
                "userId": "u1",
                "timestamp": "2026-03-02T00:00:00Z",
                "traits": {"email": "a@x.io", "email_consent": "unsubscribed"},
            },
        )
        await send(
            client,
            "identify",
            {
                "messageId": "b",
                "userId": "u1",
                "timestamp": "2026-03-01T00:00:00Z",
                "traits": {"email_consent": "subscribed"},
            },
        )
        await tidings.processor.drain()
        consent = profile_of(tidings, "a@x.io").consent["email"]
        assert consent["state"] == "unsubscribed"
        assert consent["source"] == "web"


async def test_replay_is_idempotent(running) -> None:
    from sqlalchemy import update

    from tidings.store.schema import inbox

    async with running(CONFIG) as (tidings, client):
        for n in range(3):
            await send(
                client, "track", track(n, "Order Completed", f"2026-03-0{n + 1}T00:00:00Z", {"total": 10})
            )
        await tidings.processor.drain()
        before = profile_of(tidings, "user_id:u1")
        tidings.store.write_sync(lambda c: c.execute(update(inbox).values(status="pending")))
        await tidings.processor.drain()
        after = profile_of(tidings, "user_id:u1")
        assert after.traits == before.traits
        assert after.traits["orders_count"] == 3
        assert after.traits["lifetime_value"] == 30
        timeline = tidings.store.read_sync(lambda c: load_timeline(c, after.id))
        assert [e.kind for e in timeline].count("event") == 3


async def test_unmapped_and_failed_items_keep_their_reason(running) -> None:
    from tests.conftest import inbox_rows

    async with running(CONFIG) as (tidings, client):
        await send(client, "group", {"messageId": "g", "userId": "u1", "groupId": "acme"})
        await send(
            client,
            "track",
            {"messageId": "t", "anonymousId": " ", "userId": "", "event": "X", "properties": {}},
        )
        await tidings.processor.drain()
        rows = {r.dedupe_key: r for r in inbox_rows(tidings)}
        assert rows["g"].status == "unmapped"
        assert "skipped" in rows["g"].error
        assert rows["t"].status in ("failed", "flagged")


async def test_freshness_is_measured_per_event(running, clock) -> None:
    async with running(CONFIG) as (tidings, client):
        clock.set(clock.now().replace(year=2026, month=3, day=1, hour=10, minute=1))
        await send(client, "track", track(1, "Product Viewed", "2026-03-01T10:00:00Z", {"name": "Mug"}))
        clock.advance(0.25)
        await tidings.processor.drain()
        text = (await client.get("/metrics")).text
        assert 'tidings_event_receipt_delay_seconds_count{source="web"} 1.0' in text
        assert 'tidings_event_receipt_delay_seconds_bucket{le="30.0",source="web"} 0.0' in text  # 60 s late
        assert 'tidings_event_receipt_delay_seconds_bucket{le="60.0",source="web"} 1.0' in text
        assert 'tidings_event_processing_delay_seconds_bucket{le="0.1",source="web"} 0.0' in text
        assert 'tidings_event_processing_delay_seconds_bucket{le="0.25",source="web"} 1.0' in text


async def test_a_bad_mapping_expression_is_a_config_error_with_its_line() -> None:
    import pytest

    from tidings.config import parse_settings
    from tidings.exceptions import ConfigurationError

    text = CONFIG + (
        "    mappings:\n      - topic: x\n        event: X\n        identities:\n          email: payload.[\n"
    )
    with pytest.raises(ConfigurationError) as raised:
        parse_settings(text, "tidings.yaml", {})
    [problem] = raised.value.problems
    assert (problem.file, problem.line) == ("tidings.yaml", 10)
    assert problem.path == "sources.web.mappings[0].identities.email"
    assert "invalid expression" in problem.message


async def test_two_processors_share_the_work_without_doubling_it(running, store_url, clock) -> None:
    """Several tidings processes on one database: every item is applied once, counts are exact."""
    import asyncio

    from sqlalchemy import func, select

    from tests.conftest import settings_with
    from tidings.app import Tidings
    from tidings.store.schema import events, inbox

    async with running(CONFIG) as (tidings, client):
        for n in range(120):
            user = f"u{n % 4}"
            await send(
                client,
                "track",
                track(
                    n,
                    "Order Completed",
                    f"2026-03-01T10:{n % 60:02d}:00Z",
                    {"order_id": f"o{n}", "total": 1},
                    user=user,
                ),
            )
        second = Tidings(settings_with(store_url, CONFIG), clock=clock, process=False)
        await second.start()
        try:
            for worker in (tidings.processor, second.processor):
                worker.batch_size = 7
            await asyncio.gather(tidings.processor.drain(), second.processor.drain())
        finally:
            await second.stop()

        def counts(conn):
            not_done = select(func.count()).select_from(inbox).where(inbox.c.status != "processed")
            pending = conn.execute(not_done)
            return pending.scalar_one(), conn.execute(select(func.count()).select_from(events)).scalar_one()

        assert tidings.store.read_sync(counts) == (0, 120)
        for n in range(4):
            assert profile_of(tidings, f"user_id:u{n}").traits["orders_count"] == 30


async def test_an_event_that_cannot_be_applied_is_set_aside_and_the_rest_applied(running) -> None:
    from tests.conftest import inbox_rows

    config = CONFIG + "profile:\n  traits:\n    shouty:\n      - {on: Shout, value: 'upper(properties.n)'}\n"
    async with running(config) as (tidings, client):
        await send(client, "track", track(1, "Product Viewed", "2026-03-01T10:00:00Z", {"name": "Mug"}))
        await send(client, "track", track(2, "Shout", "2026-03-01T10:01:00Z", {"n": 5}))  # a number: fails
        await send(client, "track", track(3, "Shout", "2026-03-01T10:02:00Z", {"n": "hi"}))
        await tidings.processor.drain()
        rows = {r.dedupe_key: r for r in inbox_rows(tidings)}
        assert rows["m2"].status == "failed"
        assert "upper" in rows["m2"].error
        assert rows["m1"].status == rows["m3"].status == "processed"
        profile = profile_of(tidings, "user_id:u1")
        assert profile.traits["shouty"] == "HI"
        assert profile.traits["last_product_viewed"]["name"] == "Mug"


async def test_an_expression_that_breaks_on_one_event_fails_that_event_only(running) -> None:
    """`merge` of a missing object is a Python error inside JMESPath's own function: the event
    is set aside with the reason, and processing goes on (it must not retry the batch forever)."""
    from tests.conftest import inbox_rows

    config = (
        CONFIG
        + """    mappings:
      - topic: "track:*"
        event_from: payload.event
        identities: {user_id: payload.userId}
        traits: "merge(payload.properties, payload.context)"
"""
    )
    async with running(config) as (tidings, client):
        await send(client, "track", track(1, "Viewed", "2026-03-01T10:00:00Z", {"a": 1}, context={"b": 2}))
        await send(client, "track", track(2, "Viewed", "2026-03-01T10:01:00Z", {"a": 1}))  # no context
        await send(client, "track", track(3, "Viewed", "2026-03-01T10:02:00Z", {"a": 3}, context={}))
        await tidings.processor.drain()
        rows = {r.dedupe_key: r for r in inbox_rows(tidings)}
        assert rows["m2"].status == "failed"
        assert rows["m2"].error.startswith("mapping failed: traits: ")
        assert rows["m1"].status == rows["m3"].status == "processed"
        assert profile_of(tidings, "user_id:u1").traits["a"] == 3
