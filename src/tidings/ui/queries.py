"""What the dashboard reads from the store that the admin API does not already offer.

Rates and freshness over the last hour, and a profile's deliveries. Everything else (profiles,
timelines, flows, delivery lists, one delivery with its attempts) comes from the read functions
the admin API and the CLI use.

The time columns read here (inbox.received_at, delivery_attempts.at) have no index, and a store
holds months of rows; rows are written in time order, though, so the window's first id is found
by bisecting the primary key and only the last hour is read. Every delivery is settled together
with its attempt, so deliveries in the window are found through their attempts. Percentiles are
computed here rather than in SQL so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Connection, Table, func, select

from tidings.delivery import outbox as outbox_sql
from tidings.store.schema import delivery_attempts, flow_runs, inbox, outbox

WINDOW = timedelta(hours=1)
SKEW = timedelta(minutes=5)  # writers' clocks may disagree this much about the order of rows
MAX_FRESHNESS_ROWS = 200_000  # deliveries read for the chart (about 55 a second for an hour)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRate:
    source: str
    events: int  # received in the window
    last_minute: int

    @property
    def per_second(self) -> float:
        return self.events / WINDOW.total_seconds()


@dataclass(slots=True, kw_only=True)
class DestinationRate:
    destination: str
    delivered: int = 0  # in the window
    failed_attempts: int = 0  # attempts in the window that did not deliver (retry, dead, paused)
    dead_now: int = 0  # dead letters waiting for an operator, whenever they died
    pending_now: int = 0
    paused_until: datetime | None = None
    paused_reason: str | None = None

    @property
    def per_second(self) -> float:
        return self.delivered / WINDOW.total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class FreshnessPoint:
    minute: datetime  # the start of the minute the deliveries were made in
    p50: float  # seconds from the data's event to its delivery
    p99: float
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    now: datetime
    since: datetime
    sources: list[SourceRate]
    destinations: list[DestinationRate]
    freshness: dict[str, list[FreshnessPoint]]
    overdue_waits: int  # active runs whose timer is more than a minute late
    next_wait_due: datetime | None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def first_id_since(conn: Connection, table: Table, at: Column[Any], since: datetime) -> int:
    """The first id of `table` written at or after `since` (less SKEW): about 2·log2(rows)
    primary-key lookups instead of a scan of a column without an index."""
    lo = conn.execute(select(func.min(table.c.id))).scalar()
    hi = conn.execute(select(func.max(table.c.id))).scalar()
    if lo is None or hi is None:
        return 0
    lo, hi = int(lo), int(hi) + 1  # the answer lies in [lo, hi]; hi: no such row
    target = since - SKEW
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(
            select(table.c.id, at).where(table.c.id >= mid).order_by(table.c.id).limit(1)
        ).first()
        if row is None or row[1] >= target:
            hi = mid
        else:
            lo = int(row[0]) + 1
    return lo


def overview(conn: Connection, now: datetime, configured: list[str]) -> Overview:
    since = now - WINDOW
    first_attempt = first_id_since(conn, delivery_attempts, delivery_attempts.c.at, since)
    delivered = _delivered(conn, since, first_attempt)
    return Overview(
        now=now,
        since=since,
        sources=_source_rates(conn, since, now),
        destinations=_destination_rates(conn, since, now, configured, first_attempt),
        freshness=freshness(delivered),
        overdue_waits=int(
            conn.execute(
                select(func.count())
                .select_from(flow_runs)
                .where(flow_runs.c.status == "active", flow_runs.c.due_at < now - timedelta(minutes=1))
            ).scalar_one()
        ),
        next_wait_due=conn.execute(
            select(func.min(flow_runs.c.due_at)).where(
                flow_runs.c.status == "active", flow_runs.c.due_at >= now
            )
        ).scalar(),
    )


def _source_rates(conn: Connection, since: datetime, now: datetime) -> list[SourceRate]:
    first = first_id_since(conn, inbox, inbox.c.received_at, since)
    recent = conn.execute(
        select(inbox.c.source, inbox.c.received_at).where(inbox.c.id >= first, inbox.c.received_at >= since)
    )
    hour: dict[str, int] = defaultdict(int)
    minute: dict[str, int] = defaultdict(int)
    for source, received in recent:
        hour[source] += 1
        if received >= now - timedelta(minutes=1):
            minute[source] += 1
    return [SourceRate(source=s, events=n, last_minute=minute[s]) for s, n in sorted(hour.items())]


Delivered = list[tuple[str, datetime, datetime | None]]  # destination, delivered_at, data_occurred_at


def _delivered(conn: Connection, since: datetime, first_attempt: int) -> Delivered:
    """The deliveries made in the window, for the freshness chart (at most MAX_FRESHNESS_ROWS, the
    newest; at higher rates the chart shows the last part of the hour)."""
    rows = conn.execute(
        select(outbox.c.id, outbox.c.destination, outbox.c.delivered_at, outbox.c.data_occurred_at)
        .select_from(delivery_attempts.join(outbox, outbox.c.id == delivery_attempts.c.outbox_id))
        .where(
            delivery_attempts.c.id >= first_attempt,
            delivery_attempts.c.at >= since,
            delivery_attempts.c.outcome == outbox_sql.DELIVERED,
            outbox.c.delivered_at >= since,
        )
        .order_by(delivery_attempts.c.id.desc())
        .limit(MAX_FRESHNESS_ROWS)
    )
    seen: set[int] = set()
    out: Delivered = []
    for row_id, destination, delivered_at, occurred in rows:
        if row_id not in seen:
            seen.add(row_id)
            out.append((destination, delivered_at, occurred))
    return out


def _destination_rates(
    conn: Connection,
    since: datetime,
    now: datetime,
    configured: list[str],
    first_attempt: int,
) -> list[DestinationRate]:
    rates = {name: DestinationRate(destination=name) for name in configured}

    def get(name: str) -> DestinationRate:
        return rates.setdefault(name, DestinationRate(destination=name))

    # a delivery is settled with exactly one "delivered" attempt; every other outcome is a failure
    for name, outcome, n in conn.execute(
        select(outbox.c.destination, delivery_attempts.c.outcome, func.count())
        .select_from(delivery_attempts.join(outbox, outbox.c.id == delivery_attempts.c.outbox_id))
        .where(delivery_attempts.c.id >= first_attempt, delivery_attempts.c.at >= since)
        .group_by(outbox.c.destination, delivery_attempts.c.outcome)
    ):
        if outcome == outbox_sql.DELIVERED:
            get(name).delivered += int(n)
        else:
            get(name).failed_attempts += int(n)
    waiting = (outbox_sql.PENDING, outbox_sql.IN_FLIGHT)
    for name, status, n in conn.execute(  # by status first: the (status, next_attempt_at) index
        select(outbox.c.destination, outbox.c.status, func.count())
        .where(outbox.c.status.in_([*waiting, outbox_sql.DEAD]))
        .group_by(outbox.c.destination, outbox.c.status)
    ):
        if status == outbox_sql.DEAD:
            get(name).dead_now = int(n)
        else:
            get(name).pending_now += int(n)
    for state in outbox_sql.destination_states(conn).values():
        if state.paused_until is not None and state.paused_until > now:
            get(state.destination).paused_until = state.paused_until
            get(state.destination).paused_reason = state.paused_reason
    return [rates[name] for name in sorted(rates)]


def freshness(delivered: Delivered) -> dict[str, list[FreshnessPoint]]:
    """Per destination and minute: p50 and p99 of delivered_at minus data_occurred_at."""
    buckets: dict[str, dict[datetime, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, delivered_at, occurred in delivered:
        if occurred is None:
            continue
        minute = delivered_at.replace(second=0, microsecond=0)
        buckets[name][minute].append(max(0.0, (delivered_at - occurred).total_seconds()))
    out: dict[str, list[FreshnessPoint]] = {}
    for name in sorted(buckets):
        points = []
        for minute in sorted(buckets[name]):
            values = sorted(buckets[name][minute])
            points.append(
                FreshnessPoint(
                    minute=minute,
                    p50=percentile(values, 0.5),
                    p99=percentile(values, 0.99),
                    count=len(values),
                )
            )
        out[name] = points
    return out


def profile_deliveries(conn: Connection, profile_id: int, *, limit: int = 50) -> list[outbox_sql.Delivery]:
    """The effects made for one customer (profile syncs and flow sends), newest first."""
    rows = conn.execute(
        select(outbox).where(outbox.c.profile_id == profile_id).order_by(outbox.c.id.desc()).limit(limit)
    )
    return [
        outbox_sql.Delivery(
            id=r.id,
            destination=r.destination,
            action=r.action,
            status=r.status,
            attempts=r.attempts,
            created_at=r.created_at,
            updated_at=r.updated_at,
            delivered_at=r.delivered_at,
            last_error=r.last_error,
            idempotency_key=r.idempotency_key,
        )
        for r in rows
    ]
