"""Gauges read from the store: dead letters, unsettled deliveries, paused destinations, inbox backlog.

These describe the database, not this process, so they cannot be counted as things happen (another
process may settle, retry or pause). Every few seconds one cheap read runs on the store's reader
threads and the gauges are set from it; a scrape only reads the last values, so it never waits for
the database and never blocks the event loop. With several processes on one database, each
reports the same values: aggregate them with `max`, not `sum`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, func, select

from tidings.clock import Clock
from tidings.delivery import outbox
from tidings.metrics import Metrics
from tidings.store import Store
from tidings.store.schema import inbox
from tidings.store.schema import outbox as outbox_table

log = logging.getLogger("tidings.observe")

REFRESH_EVERY_SECONDS = 5.0

_UNSETTLED = (outbox.PENDING, outbox.IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What the store held at `at`."""

    at: datetime
    dead: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # pending or in flight
    paused: frozenset[str] = frozenset()
    inbox_pending: int = 0
    inbox_oldest_pending: datetime | None = None


def read_snapshot(conn: Connection, now: datetime) -> StoreSnapshot:
    """Counts of the rows that are not settled for good only: delivered rows (most of the outbox,
    growing forever) and processed inbox rows are never scanned, thanks to the status indexes."""
    dead: dict[str, int] = {}
    pending: dict[str, int] = {}
    for status in (outbox.DEAD, *_UNSETTLED):
        rows = conn.execute(
            select(outbox_table.c.destination, func.count().label("n"))
            .where(outbox_table.c.status == status)
            .group_by(outbox_table.c.destination)
        )
        into = dead if status == outbox.DEAD else pending
        for r in rows:
            into[r.destination] = into.get(r.destination, 0) + int(r.n)
    waiting = inbox.c.status == "pending"
    inbox_pending = int(conn.execute(select(func.count()).select_from(inbox).where(waiting)).scalar_one())
    oldest = None
    if inbox_pending:
        oldest = conn.execute(
            select(inbox.c.received_at).where(waiting).order_by(inbox.c.id).limit(1)
        ).scalar_one_or_none()
    return StoreSnapshot(
        at=now,
        dead=dead,
        pending=pending,
        paused=frozenset(outbox.paused_destinations(conn, now)),
        inbox_pending=inbox_pending,
        inbox_oldest_pending=oldest,
    )


class StoreGauges:
    """Keeps the store-read gauges of `metrics` current. Every configured destination always has a
    series (0 when nothing is held), so an alert comparing with a past value sees a rise from 0."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        destinations: Iterable[str] = (),
        *,
        every: float = REFRESH_EVERY_SECONDS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.destinations = tuple(destinations)
        self.every = every
        self.last: StoreSnapshot | None = None

    async def refresh(self) -> StoreSnapshot:
        """Read the store once (on a reader thread) and set the gauges from what it holds."""
        now = self.clock.now()
        snapshot = await self.store.read(lambda conn: read_snapshot(conn, now))
        self.apply(snapshot)
        return snapshot

    def apply(self, snapshot: StoreSnapshot) -> None:
        """Set every gauge at once (no await in between, so a scrape sees one consistent snapshot)."""
        m = self.metrics
        names = sorted({*self.destinations, *snapshot.dead, *snapshot.pending, *snapshot.paused})
        for gauge in (m.deliveries_dead, m.deliveries_pending, m.destination_paused):
            gauge.clear()  # a destination removed from config and from the tables disappears
        for name in names:
            m.deliveries_dead.labels(name).set(snapshot.dead.get(name, 0))
            m.deliveries_pending.labels(name).set(snapshot.pending.get(name, 0))
            m.destination_paused.labels(name).set(1 if name in snapshot.paused else 0)
        m.inbox_pending.set(snapshot.inbox_pending)
        oldest = snapshot.inbox_oldest_pending
        m.inbox_oldest_pending.set(0 if oldest is None else max(0.0, (snapshot.at - oldest).total_seconds()))
        m.store_gauges_refreshed.set(snapshot.at.timestamp())
        self.last = snapshot

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh every `every` seconds until `stopping` is set. A failed read is logged (once per
        run of failures) and the gauges keep their last values; the refresh timestamp shows how old."""
        failing = False
        while not stopping.is_set():
            try:
                await self.refresh()
                if failing:
                    log.info("store gauges refreshed again", extra={"action": "store_gauges_recovered"})
                failing = False
            except Exception:
                if not failing:
                    log.exception(
                        "reading the store for gauges failed; keeping the last values",
                        extra={"action": "store_gauges_failed"},
                    )
                failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await stopping.wait()
