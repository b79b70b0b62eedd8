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
