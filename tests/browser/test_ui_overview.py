"""The overview's numbers from a store with known rows: rates, failures, freshness percentiles, the chart.

Runs on SQLite and PostgreSQL (the browser tests use SQLite only), so the SQL behind the
dashboard is checked on both.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select

from tidings.delivery import outbox
from tidings.store.schema import delivery_attempts, inbox, requests
from tidings.store.schema import outbox as outbox_table
from tidings.ui import charts, queries

NOW = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
M1 = datetime(2026, 3, 2, 11, 40, tzinfo=UTC)
M2 = datetime(2026, 3, 2, 11, 43, tzinfo=UTC)  # two empty minutes after M1: the line breaks


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert queries.percentile(values, 0.5) == 50
    assert queries.percentile(values, 0.99) == 99
    assert queries.percentile([7.0], 0.99) == 7
    assert queries.percentile([1.0, 2.0], 0.5) == 1


def _row(conn, n: int, destination: str, *, delivered: datetime | None, occurred: datetime | None) -> int:
    """An outbox row as the dispatcher leaves it: delivered together with its attempt, or dead."""
    status = outbox.DELIVERED if delivered else outbox.DEAD
    row_id = int(
        conn.execute(
            insert(outbox_table).values(
                destination=destination,
                action="track_event",
                idempotency_key=f"k{n}",
                payload={},
                status=status,
                attempts=1,
                next_attempt_at=M1,
                created_at=M1,
                updated_at=M1,
                delivered_at=delivered,
                data_occurred_at=occurred,
            )
        ).inserted_primary_key[0]
    )
    if delivered is not None:
        _attempt(conn, row_id, delivered, "delivered")
    return row_id


def _attempt(conn, row_id: int, at: datetime, outcome: str) -> None:
    conn.execute(
        insert(delivery_attempts).values(
            outbox_id=row_id, at=at, request={}, status_code=200, outcome=outcome, latency_ms=3
        )
    )


def _received(conn, source: str, at: datetime, n: int) -> None:
    request_id = conn.execute(
        insert(requests).values(source=source, received_at=at, method="POST", url="/", headers={}, body=b"")
    ).inserted_primary_key[0]
    conn.execute(
        insert(inbox).values(
            request_id=request_id,
            source=source,
            item_index=0,
            dedupe_key=f"{source}-{n}",
            received_at=at,
            status="processed",
        )
    )


async def test_overview_counts_and_freshness_from_the_store(running) -> None:
    async with running("") as (tidings, _):

        def fill(conn) -> None:
            # written in time order, as the store is
            _received(conn, "shop", NOW - timedelta(hours=3), 0)  # outside the hour
            _row(
                conn,
                0,
                "crm",
                delivered=NOW - timedelta(hours=2),
                occurred=NOW - timedelta(hours=2, seconds=9),
            )
            for n in range(1, 4):
                _received(conn, "shop", M1, n)
            _received(conn, "web", NOW - timedelta(seconds=20), 4)  # in the last minute too
            n = 0
            for seconds in range(1, 101):  # esp, minute M1: 1 s .. 100 s
                n += 1
                at = M1 + timedelta(seconds=20)
                _row(conn, n, "esp", delivered=at, occurred=at - timedelta(seconds=seconds))
            for seconds in (3, 5):
                n += 1
                _row(conn, n, "crm", delivered=M1, occurred=M1 - timedelta(seconds=seconds))
            n += 1  # no event time (nothing to measure freshness from)
            _row(conn, n, "crm", delivered=M1, occurred=None)
            n += 1
            dead = _row(conn, n, "crm", delivered=None, occurred=None)
            _attempt(conn, dead, M1, "retry")
            _attempt(conn, dead, M1 + timedelta(seconds=30), "dead")
            n += 1
            _row(conn, n, "esp", delivered=M2, occurred=M2 - timedelta(milliseconds=500))
            outbox.pause(conn, "crm", M2, NOW + timedelta(minutes=10), "circuit open after 5 failures")
            outbox.pause(conn, "esp", M1, M2, "over long ago")

        tidings.store.write_sync(fill)
        view = tidings.store.read_sync(lambda conn: queries.overview(conn, NOW, ["esp", "crm", "idle"]))

    fresh = view.freshness
    assert sorted(fresh) == ["crm", "esp"]
    assert [(p.minute, p.p50, p.p99, p.count) for p in fresh["esp"]] == [
        (M1, 50.0, 99.0, 100),
        (M2, 0.5, 0.5, 1),
    ]
    assert [(p.minute, p.p50, p.p99, p.count) for p in fresh["crm"]] == [(M1, 3.0, 5.0, 2)]
    rates = {d.destination: d for d in view.destinations}
    assert sorted(rates) == ["crm", "esp", "idle"]
    assert rates["esp"].delivered == 101 and rates["esp"].failed_attempts == 0
    assert rates["crm"].delivered == 3 and rates["crm"].failed_attempts == 2 and rates["crm"].dead_now == 1
    assert rates["idle"].delivered == 0 and rates["idle"].dead_now == 0
    assert rates["crm"].paused_reason == "circuit open after 5 failures"
    assert rates["crm"].paused_until == NOW + timedelta(minutes=10)
    assert rates["esp"].paused_until is None  # its pause has ended
    assert [(s.source, s.events, s.last_minute) for s in view.sources] == [("shop", 3, 0), ("web", 1, 1)]

    svg = str(charts.freshness_svg(fresh, view.since, view.now))
    [esp_p50] = re.findall(r'<path d="([^"]+)"[^>]*data-destination="esp" data-quantile="p50"', svg)
    assert esp_p50.count("M") == 2 and esp_p50.count("L") == 0  # M1 and M2 are not adjacent minutes
    assert svg.count("<circle") == 2 * 3  # p50 and p99 for each of the three minutes
    assert "esp 11:40 UTC: p50 50 s, p99 99 s, 100 deliveries" in svg
    # decade grid lines over the range of the data (0.5 s to 100 s)
    assert ">100 ms<" in svg and ">1 s<" in svg and ">100 s<" in svg and ">10 ms<" not in svg


async def test_the_first_row_of_the_window_is_found_by_bisecting_ids(running) -> None:
    async with running("") as (tidings, _):
        start = NOW - timedelta(hours=5)

        def fill(conn) -> None:
            row = _row(conn, 0, "esp", delivered=None, occurred=None)
            for minute in range(0, 300, 3):  # one attempt every 3 minutes for five hours
                _attempt(conn, row, start + timedelta(minutes=minute), "retry")
            conn.execute(delete(delivery_attempts).where(delivery_attempts.c.id % 7 == 0))  # gaps

        tidings.store.write_sync(fill)

        def first(since: datetime) -> int:
            return tidings.store.read_sync(
                lambda conn: queries.first_id_since(conn, delivery_attempts, delivery_attempts.c.at, since)
            )

        rows = tidings.store.read_sync(
            lambda conn: list(conn.execute(select(delivery_attempts.c.id, delivery_attempts.c.at)))
        )
        for since in (
            start - timedelta(hours=1),
            start + timedelta(minutes=61),
            NOW - timedelta(minutes=7),
            NOW,
        ):
            expected = min((i for i, at in rows if at >= since - queries.SKEW), default=None)
            found = first(since)
            assert found == expected if expected is not None else found > max(i for i, _ in rows)
        empty = tidings.store.read_sync(
            lambda conn: queries.first_id_since(conn, inbox, inbox.c.received_at, NOW)
        )
        assert empty == 0


def test_the_chart_says_so_when_there_is_nothing_to_draw() -> None:
    assert "No deliveries" in str(charts.freshness_svg({}, NOW - timedelta(hours=1), NOW))


def test_chart_names_are_escaped() -> None:
    point = queries.FreshnessPoint(minute=M1, p50=1.0, p99=2.0, count=1)
    svg = str(charts.freshness_svg({"<b>x": [point]}, NOW - timedelta(hours=1), NOW))
    assert "<b>" not in svg and "&lt;b&gt;x" in svg
