"""Replaying stored events after a mapping fix: what is picked, what it gives, and that it is
idempotent (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import inbox_rows
from tests.integration.test_standard_webhooks import SECRET, signed
from tidings.profiles.read import load, load_timeline, resolve
from tidings.replay import Selection, parse_when, replay
from tidings.store.schema import events


def config(email_field: str, *, orders: bool = False) -> str:
    """Two standard-webhooks sources with a user mapping; `email_field` is where it reads the email."""
    order_rule = (
        """
      - topic: order.created
        event: Order Completed
        occurred_at: payload.timestamp
        identities: {email: payload.data.email}
        properties: {value: payload.data.total}"""
        if orders
        else ""
    )
    source = f"""
    kind: standard-webhooks
    secrets: ["{SECRET}"]
    presets: false  # these rules only, whatever the built-in preset does
    mappings:
      - topic: customer.updated
        event: Identify
        occurred_at: payload.timestamp
        identities:
          email: payload.data.{email_field}
        traits:
          plan: payload.data.plan{order_rule}"""
    return f"sources:\n  app:{source}\n  other:{source}\n"


WRONG = config("mail")  # the sender calls it `email`: every event fails with no identity
FIXED = config("email", orders=True)


async def post(client, clock, source: str, body: bytes) -> None:
    msg_id = f"msg_{uuid.uuid4().hex}"
    response = await client.post(f"/hooks/{source}", content=body, headers=signed(body, msg_id, clock.now()))
    assert response.status_code == 200, response.text


def customer(email: str, plan: str, at: str) -> bytes:
    return json.dumps(
        {"type": "customer.updated", "timestamp": at, "data": {"email": email, "plan": plan}}
    ).encode()


def order(email: str, total: float, at: str) -> bytes:
    return json.dumps(
        {"type": "order.created", "timestamp": at, "data": {"email": email, "total": total}}
    ).encode()


def snapshot(tidings, email: str) -> Any:
    """The profile, its timeline and the event log, as a replay could change them."""

    def read(conn):
        pid = resolve(conn, email)
        if pid is None:
            return None
        view = load(conn, pid)
        entries = [
            (e.kind, e.field, e.old, e.new, e.event_id, e.at) for e in load_timeline(conn, pid, limit=1000)
        ]
        logged = conn.execute(
            select(func.count()).select_from(events).where(events.c.profile_id == pid)
        ).scalar()
        return view.traits, view.consent, sorted(view.identities), entries, logged

    return tidings.store.read_sync(read)


def statuses(tidings) -> dict[str, str]:
    return {r.dedupe_key: r.status for r in inbox_rows(tidings)}


async def test_replay_after_a_mapping_fix_fixes_the_profile_and_is_idempotent(running, clock) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    start = clock.now()
    async with running(WRONG) as (tidings, client):
        await post(client, clock, "app", customer(email, "gold", "2026-03-02T00:00:00Z"))
        await post(client, clock, "app", customer(email, "silver", "2026-03-01T00:00:00Z"))  # older, later
        await post(client, clock, "app", order(email, 40.0, "2026-03-01T12:00:00Z"))
        await post(client, clock, "app", b"not json at all")
        await tidings.processor.drain()
        rows = inbox_rows(tidings)
        assert [r.status for r in rows] == ["failed", "failed", "unmapped", "flagged"]
        assert "no identity found" in rows[0].error
        assert snapshot(tidings, email) is None
        flagged_before = rows[3]

    clock.advance(3600)
    async with running(FIXED) as (tidings, client):
        seen: list[tuple[int, int]] = []
        summary = await replay(
            tidings, Selection(since=start), progress=lambda done, total: seen.append((done, total))
        )
        assert (summary.replayed, summary.processed, summary.unmapped, summary.failed) == (3, 3, 0, 0)
        assert summary.pending == 0
        assert summary.reasons == []
        assert seen[0] == (0, 3)
        assert seen[-1] == (3, 3)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)

        rows = inbox_rows(tidings)
        assert [r.status for r in rows] == ["processed", "processed", "processed", "flagged"]
        assert all(r.error is None for r in rows[:3])
        assert (rows[3].status, rows[3].error) == (flagged_before.status, flagged_before.error)

        fixed = snapshot(tidings, email)
        traits = fixed[0]
        assert traits["plan"] == "gold"  # the newer value, though the older one came later
        assert traits["orders_count"] == 1
        assert traits["lifetime_value"] == 40.0
        assert fixed[4] == 3

        again = await replay(tidings, Selection(since=start))
        assert (again.replayed, again.processed, again.unmapped, again.failed) == (3, 3, 0, 0)
        assert snapshot(tidings, email) == fixed  # nothing changed: no new timeline entries either


async def test_replay_keeps_to_its_source_and_window(running, clock) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    async with running(WRONG) as (tidings, client):
        await post(client, clock, "app", customer(email, "early", "2026-03-01T00:00:00Z"))
        clock.advance(600)
        middle = clock.now()
        await post(client, clock, "app", customer(email, "bronze", "2026-03-02T00:00:00Z"))
        await post(client, clock, "other", customer(email, "platinum", "2026-03-03T00:00:00Z"))
        clock.advance(600)
        end = clock.now()
        await post(client, clock, "app", customer(email, "late", "2026-03-04T00:00:00Z"))
        await tidings.processor.drain()
        assert set(statuses(tidings).values()) == {"failed"}

    async with running(FIXED) as (tidings, _):
        summary = await replay(tidings, Selection(since=middle, until=end, source="app"))
        assert (summary.replayed, summary.processed) == (1, 1)
        assert [r.status for r in inbox_rows(tidings)] == ["failed", "processed", "failed", "failed"]
        assert snapshot(tidings, email)[0]["plan"] == "bronze"

        nothing = await replay(tidings, Selection(since=end + timedelta(hours=1)))
        assert nothing.replayed == 0

        rest = await replay(tidings, Selection(since=middle - timedelta(hours=1)))
        assert (rest.replayed, rest.processed, rest.failed) == (4, 4, 0)
        assert snapshot(tidings, email)[0]["plan"] == "late"


async def test_events_still_failing_after_a_replay_keep_their_reason(running, clock) -> None:
    start = clock.now()
    async with running(WRONG) as (tidings, client):
        await post(
            client, clock, "app", customer(f"{uuid.uuid4().hex[:8]}@example.com", "gold", "2026-03-01")
        )
        await tidings.processor.drain()
        summary = await replay(tidings, Selection(since=start))
        assert (summary.replayed, summary.processed, summary.failed) == (1, 0, 1)
        [(status, error, n)] = summary.reasons
        assert (status, n) == ("failed", 1)
        assert "no identity found" in error
        [row] = inbox_rows(tidings)
        assert row.status == "failed"
        assert row.error == error


NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("90m", NOW - timedelta(minutes=90)),
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T12:00:00+02:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),  # no offset: UTC
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_times_are_iso_8601_or_a_duration_ago(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "90", "yesterday", "2h ago", "2026-13-01"])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_when(text, NOW)
