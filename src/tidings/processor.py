"""The processing stage: claim stored inbox items, map them, apply them to profiles, in one transaction.

Claiming and applying happen in the same transaction, so the claim is its own lease: a crash rolls
everything back and the items are pending again (work repeats, nothing is lost or doubled). On
PostgreSQL, claims use `FOR UPDATE SKIP LOCKED`, so several processes share the work; profile rows
are locked while applied. Within a batch, events are applied in `occurred_at` order; across
batches, the per-field versions make the outcome independent of order anyway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from tidings.clock import Clock
from tidings.delivery import outbox
from tidings.delivery.effects import UPSERT_CONTACT
from tidings.events import CustomerEvent
from tidings.exceptions import StoreError
from tidings.flows.catalog import FlowCatalog
from tidings.flows.context import profile_basics
from tidings.flows.runner import Fired
from tidings.flows.triggers import AppliedEvent, FlowTriggers
from tidings.loop import Loop
from tidings.mapping.engine import Mapper, MappingError, StoredItem, Unmapped
from tidings.metrics import Metrics
from tidings.profiles.apply import ProfileWriter
from tidings.profiles.traits import TraitRule
from tidings.store import Store
from tidings.store.prepared import Prepared
from tidings.store.schema import inbox, requests

log = logging.getLogger("tidings.processor")

RETRIES = 5


# Built once: the live server runs small batches, where building statements cost as much as running them.
_SETTLE = Prepared(
    update(inbox)
    .where(inbox.c.id.in_(bindparam("ids", expanding=True)))
    .values(status=bindparam("_status"), error=bindparam("_error"))
)
_PENDING = Prepared(select(inbox.c.id).where(inbox.c.status == "pending").limit(1))


def _apply_all(writer: ProfileWriter, ordered: list[CustomerEvent]) -> list[AppliedEvent]:
    """The fast way: the whole batch in memory, written once; any failure fails the batch."""
    try:
        done = [AppliedEvent(event, *writer.apply(event)) for event in ordered]
        writer.flush()
        return done
    except DBAPIError:
        raise
    except Exception as exc:
        raise BatchFailed from exc


class BatchFailed(Exception):
    """An event of the batch failed to apply: the batch is rolled back and run again, carefully."""


@dataclass(frozen=True, slots=True)
class Applied:
    """An event applied in a committed batch (for the freshness histograms)."""

    source: str
    occurred_at: datetime
    received_at: datetime


class Processor(Loop):
    name = "processor"

    def __init__(
        self,
        store: Store,
        *,
        mappers: Mapping[str, Mapper],
        computed: Mapping[str, list[TraitRule]],
        clock: Clock,
        metrics: Metrics,
        batch_size: int = 500,
        sync_to: Sequence[str] = (),
        flows: FlowTriggers | None = None,
    ) -> None:
        self.store = store
        self.flows = flows or FlowTriggers(FlowCatalog({}), metrics)
        self.runs_due = 0  # flow runs started or woken since the last look (the runner is told)
        self._set_aside: list[tuple[int, str, str | None, str]] = []  # items the last batch set aside
        self.on_runs_due: Callable[[], None] = lambda: None
        # The flow runner's round, run in this batch's transaction once its events started runs
        # (FlowRunner.fire_within), and what to do with its outcome after the commit.
        self.fire_within: Callable[[Connection], Fired | None] | None = None
        self.on_fired: Callable[[Fired | None], None] = lambda fired: None
        self._fired: Fired | None = None  # the last batch's round (None: it failed)
        self.sync_to = tuple(sync_to)  # destinations with profile_sync
        self._enqueued = False  # profile pushes were written since the last look (writer thread)
        self.on_enqueued: Callable[[], None] = lambda: None  # the dispatcher is told
        self.mappers = mappers
        self.computed = computed
        self.clock = clock
        self.metrics = metrics
        self.batch_size = batch_size
        self._claim = Prepared(
            select(
                inbox.c.id,
                inbox.c.source,
                inbox.c.topic,
                inbox.c.received_at,
                requests.c.headers,
                func.coalesce(inbox.c.payload, requests.c.body).label("body"),
            )
            .join(requests, requests.c.id == inbox.c.request_id)
            .where(inbox.c.status == "pending")
            .order_by(inbox.c.id)
            .limit(bindparam("limit", type_=Integer))
            .with_for_update(skip_locked=True, of=inbox)
        )
        super().__init__()

    # ------------------------------------------------------------------ one batch

    def process_batch(self, conn: Connection, careful: bool = False) -> list[Applied]:
        """Claim up to `batch_size` pending items and settle each: processed, unmapped or failed."""
        now = self.clock.now()
        rows = self._claim.execute(conn, {"limit": self.batch_size}).all()
        self._set_aside, self._fired = [], None
        outcome: dict[int, tuple[str, str | None]] = {}
        mapped: list[CustomerEvent] = []
        for row in rows:
            result = self._map(row)
            if isinstance(result, CustomerEvent):
                mapped.append(result)
            else:
                outcome[row.id] = result
                self._set_aside.append((row.id, row.source, row.topic, result[0]))
        ordered = sorted(mapped, key=lambda e: (e.occurred_at, e.inbox_id))
        writer = ProfileWriter(conn, self.computed, now)
        fresh = {e.inbox_id for e in ordered} - writer.prepare(ordered)
        if careful:
            failed, done = self._apply_one_by_one(conn, writer, ordered)
            outcome.update(failed)
        else:
            done = _apply_all(writer, ordered)
        first_time = [
            replace(a, profile_id=writer.current(a.profile_id)) for a in done if a.event.inbox_id in fresh
        ]
        self._enqueue_syncs(conn, writer.touched, {a.profile_id for a in first_time}, now)
        # Flows see each event once: a replay of a stored event starts and ends nothing.
        self.runs_due += self.flows.on_events(conn, first_time, now, self._profile_docs(writer, first_time))
        applied = []
        for event in ordered:
            if event.inbox_id not in outcome:
                outcome[event.inbox_id] = ("processed", None)
                applied.append(Applied(event.source, event.occurred_at, event.received_at))
        settled: dict[tuple[str, str | None], list[int]] = {}
        for inbox_id, result in outcome.items():
            settled.setdefault(result, []).append(inbox_id)
        for (status, error), ids in settled.items():
            _SETTLE.execute(conn, {"ids": ids, "_status": status, "_error": error})
        if self.runs_due and self.fire_within is not None:
            self._fired = self.fire_within(conn)
        return applied

    @staticmethod
    def _profile_docs(writer: ProfileWriter, done: list[AppliedEvent]) -> dict[int, dict[str, Any]]:
        """The profiles flows see, from the batch's own (flushed) copies: not read again."""
        docs = {}
        for pid in {a.profile_id for a in done}:
            profile = writer.loaded(pid)
            if profile is not None:
                docs[pid] = profile_basics(pid, profile.traits, profile.consent)
        return docs

    def _enqueue_syncs(
        self, conn: Connection, touched: Mapping[int, datetime], live: set[int], now: datetime
    ) -> None:
        """Profile sync: one pending push per changed contact and destination, in this transaction.

        Pushes coalesce: while one is pending, later changes join it, and it carries the profile as
        it is when sent, so a burst of changes becomes one request with the freshest values. A
        contact changed only by replayed events (`tidings replay`) is pushed in the vendor's
        no-trigger mode (`backfill`), under a coalesce key of its own, so a live change never
        joins a backfill push and a replay of history never starts today's automations.
        """
        self._enqueued |= bool(self.sync_to and touched)
        for destination in self.sync_to:
            for pid, newest in touched.items():
                kind = "sync" if pid in live else "backfill"
                outbox.enqueue(
                    conn,
                    destination=destination,
                    action=UPSERT_CONTACT,
                    idempotency_key=f"{destination}:{kind}:{pid}:{uuid.uuid4().hex}",
                    coalesce_key=f"{destination}:{kind}:{pid}",
                    profile_id=pid,
                    payload={"profile_id": pid, "backfill": True}
                    if kind == "backfill"
                    else {"profile_id": pid},
                    now=now,
                    data_occurred_at=newest,
                )

    @staticmethod
    def _apply_one_by_one(
        conn: Connection, writer: ProfileWriter, ordered: list[CustomerEvent]
    ) -> tuple[dict[int, tuple[str, str | None]], list[AppliedEvent]]:
        """Each event in a savepoint of its own, so one that fails is set aside, with its reason."""
        failed: dict[int, tuple[str, str | None]] = {}
        done: list[AppliedEvent] = []
        for event in ordered:
            try:
                with conn.begin_nested():
                    applied = AppliedEvent(event, *writer.apply(event))
                    writer.flush()
                done.append(applied)
            except DBAPIError:
                raise  # a deadlock or a race on a new identity: the whole batch is retried
            except Exception as exc:  # a bug or bad data in one event must not block the rest
                writer.reset()
                log.exception(
                    "applying an event failed",
                    extra={"action": "apply_failed", "inbox_id": event.inbox_id},
                )
                failed[event.inbox_id] = ("failed", f"applying failed: {type(exc).__name__}: {exc}")
        return failed, done

    def _map(self, row: Any) -> CustomerEvent | tuple[str, str | None]:
        mapper = self.mappers.get(row.source)
        if mapper is None:
            return ("failed", f"source {row.source!r} is no longer configured")
        item = StoredItem(
            inbox_id=row.id,
            source=row.source,
            topic=row.topic,
            body=row.body,
            headers=row.headers,
            received_at=row.received_at,
        )
        try:
            result = mapper.map(item)
        except MappingError as exc:
            return ("failed", f"mapping failed: {exc}")
        if isinstance(result, Unmapped):
            return ("unmapped", result.reason)
        return result

    async def run_once(self) -> int:
        """One batch; a deadlock or an identity race with another processor is retried."""
        careful = False
        for attempt in range(RETRIES):
            try:
                applied = await self.store.write(partial(self.process_batch, careful=careful))
            except BatchFailed:
                careful = True  # one event failed: again, each event on its own, to set it aside
                continue
            except StoreError as exc:
                if not isinstance(exc.__cause__, OperationalError | IntegrityError) or attempt == RETRIES - 1:
                    raise
                log.warning(
                    "batch conflicted with another processor; retrying",
                    extra={"action": "process_retry", "attempt": attempt + 1},
                )
                continue
            self._observe(applied)
            self._log_set_aside()
            return len(applied)
        return 0

    def _log_set_aside(self) -> None:
        """Items a committed batch did not map: ids only (the reason is stored with the item and
        may quote the payload, which logs never carry)."""
        for inbox_id, source, topic, status in self._set_aside:
            if status == "failed":
                log.warning(
                    "mapping an event failed; stored as failed (`tidings replay` after a fix)",
                    extra={"action": "map_failed", "inbox_id": inbox_id, "source": source, "topic": topic},
                )
            else:
                log.debug(
                    "no mapping rule for an event; stored as unmapped",
                    extra={
                        "action": "event_unmapped",
                        "inbox_id": inbox_id,
                        "source": source,
                        "topic": topic,
                    },
                )
        self._set_aside = []

    async def drain(self) -> None:
        """Process until nothing is pending (for the CLI, tests and the simulator)."""
        while await self.store.read(self._pending_exists):
            await self.run_once()

    @staticmethod
    def _pending_exists(conn: Connection) -> bool:
        return _PENDING.execute(conn).first() is not None

    def _observe(self, applied: list[Applied]) -> None:
        if self._enqueued:  # only then: an idle dispatcher woken for nothing costs a transaction
            self._enqueued = False
            self.on_enqueued()
        if self.runs_due:
            self.runs_due = 0
            if self.fire_within is not None:  # the batch ran the runner's round: its outcome
                fired, self._fired = self._fired, None
                self.on_fired(fired)
            else:
                self.on_runs_due()
        now = self.clock.now()
        for a in applied:
            self.metrics.receipt_delay.labels(a.source).observe(
                max(0.0, (a.received_at - a.occurred_at).total_seconds())
            )
            self.metrics.processing_delay.labels(a.source).observe(
                max(0.0, (now - a.received_at).total_seconds())
            )
