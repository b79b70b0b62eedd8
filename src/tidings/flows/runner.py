"""The flow runner: fires due runs (durable timers) and runs their steps.

Each round claims the runs due by now, oldest first, and runs their steps in the same
transaction, so sends land in the outbox atomically with the run's new state. A run standing
before a send whose flow asks the source about the cart is left claimed; the runner asks the
sources (outside any transaction), then settles those runs in a second transaction, if nobody
took them over meanwhile.

Timers live in the store, whatever their delay. In memory is only the next due time: the runner
sleeps until then (at most `poll`), or until the processor wakes it because an event started or
woke a run, so a timer fires on time without polling the table.

Runs an event starts are fired in the processor's own transaction (`fire_within`), right after
they are written: a flow whose first step is a send then costs no round of its own, and its send
is in the outbox when the event's processing commits, rather than a runner round later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from tidings.clock import Clock, real_seconds
from tidings.delivery.dispatcher import Handoff
from tidings.flows import runs
from tidings.flows.steps import NOT_ASKED, Executor, Live, NeedsLookup
from tidings.lookups.base import CartLookup, LookupUnavailable
from tidings.loop import Loop
from tidings.metrics import Metrics
from tidings.store import Store
from tidings.store.writer import Savepoint

log = logging.getLogger("tidings.flows")

LEASE = timedelta(seconds=30)  # a claimed run is taken over by another worker after this
# The shortest time between two rounds for timers: at 500 timers falling due per second, 2 ms
# apart, a round per timer cost a whole core (bench/README-timers.md).
TICK = 0.01
GAUGES_EVERY = timedelta(seconds=15)
OVERDUE_AFTER = timedelta(seconds=60)
# The most overdue runs taken as one backlog, fired in storage order (see `_claim`).
BACKLOG = 100_000

_WITHIN = Savepoint("tidings_fire")  # inside the processor's own savepoint when writes share a commit


Asks = list[tuple[runs.Run, NeedsLookup]]  # runs left claimed while their source is asked


@dataclass(frozen=True, slots=True)
class Fired:
    """What a round did, to follow up once its transaction commits (never before: a round that
    does not commit did nothing): the sources to ask, the next due time, and for the dispatcher
    the sends it wrote, claimed for it in the round's transaction where it had room."""

    fired: int
    asks: Asks
    due: datetime | None
    sent: bool
    handoff: Handoff | None


class FlowRunner(Loop):
    name = "flows"

    def __init__(
        self,
        store: Store,
        executor: Executor,
        *,
        clock: Clock,
        metrics: Metrics,
        lookups: Mapping[str, CartLookup] | None = None,
        batch_size: int = 100,
        max_poll: float = 1.0,
    ) -> None:
        self.store = store
        self.executor = executor
        self.clock = clock
        self.metrics = metrics
        self.lookups = dict(lookups or {})
        self.batch_size = batch_size
        self.max_poll = max_poll
        self.on_enqueued: Callable[[], None] = lambda: None  # sends were written to the outbox
        # The dispatcher's claim, run in a round's transaction once it wrote sends, and how the
        # claimed effects are handed over after the commit (Dispatcher.claim_within and take).
        self.claim_sends: Callable[[Connection, datetime], Handoff | None] = lambda conn, now: None
        self.on_handoff: Callable[[Handoff], None] = lambda handoff: None
        self._gauges_at: datetime | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._backlog: deque[int] = deque()  # ids of overdue runs, in storage order
        self._handed: Asks = []  # asks of rounds fired within others
        super().__init__()
        self.poll = max_poll

    async def run_once(self) -> int:
        await self._answer_handed()
        started, now = time.monotonic(), self.clock.now()
        fired = await self.store.write(lambda conn: self._fire(conn, now))
        self._tell_dispatcher(fired)
        due = await self._answer(fired.asks) if fired.asks else fired.due
        self._plan(now, started, due)
        return fired.fired

    def fire_within(self, conn: Connection) -> Fired | None:
        """A round in the caller's transaction (the processor's, once its events started runs),
        in a savepoint: if it fails, nothing of it stays, the caller's writes stand, and the runs
        are still due for the runner's own round (None). None too while the runner works off a
        backlog: new runs wait for its end anyway, and the caller's batch is not made to carry a
        round of old ones. Call `fired_within` after the commit."""
        if self._backlog:
            return None
        now = self.clock.now()
        try:
            with _WITHIN(conn):
                return self._fire(conn, now)
        except Exception:
            log.exception(
                "firing runs with the processor's batch failed; the runner fires them",
                extra={"action": "flow_round_failed"},
            )
            return None

    def fired_within(self, fired: Fired | None) -> None:
        """After the commit of a `fire_within` round: tell the dispatcher, and wake the loop if
        there is more for it now (sources to ask, a full round, none fired) or a timer falls due
        within its longest sleep: the loop then reads the next due time again (it may be asleep
        until a later one, or in a round that read it before this commit). A timer due later is
        read by a round before then anyway."""
        if fired is not None:
            self._tell_dispatcher(fired)
        if fired is None or fired.fired == self.batch_size or fired.asks:
            self._handed.extend(fired.asks if fired is not None else ())
            self.wake()
        elif fired.due is not None:
            left = real_seconds(self.clock, (fired.due - self.clock.now()).total_seconds())
            if left < self.max_poll:
                self.wake()

    async def _answer_handed(self) -> None:
        """Runs fired in the processor's transaction, waiting for a source's answer."""
        if self._handed:
            handed, self._handed = self._handed, []
            await self._answer(handed)

    async def _answer(self, asks: Asks) -> datetime | None:
        """Ask the sources (outside any transaction), then settle the runs; the next due time."""
        answers = await asyncio.gather(*(self._ask(need) for _, need in asks))
        later = self.clock.now()
        settled = await self.store.write(lambda conn: self._settle(conn, asks, answers, later))
        self._tell_dispatcher(settled)
        return settled.due

    def _tell_dispatcher(self, fired: Fired) -> None:
        """After the commit: hand over what was claimed for the dispatcher, or wake it to claim.
        Only then: an idle dispatcher woken for nothing costs a transaction."""
        if fired.handoff is not None:
            self.on_handoff(fired.handoff)
        elif fired.sent:
            self.on_enqueued()

    async def drain(self) -> int:
        """Fire everything due by now (for tests, the simulator and the CLI)."""
        total = 0
        while True:
            fired = await self.run_once()
            total += fired
            if fired < self.batch_size and not self._backlog:
                return total

    # ------------------------------------------------------------------ transactions

    def _fire(self, conn: Connection, now: datetime) -> Fired:
        """Fire the runs due by `now`; the next due time is read in the round's own transaction
        (no read of its own after it)."""
        claimed = self._claim(conn, now)
        asks: Asks = []
        self.executor.begin(conn, claimed, now)
        for run in claimed:
            if run.wake in ("timer", "retry") and run.overdue_since is not None:
                self.metrics.timer_lateness.observe(max(0.0, (now - run.overdue_since).total_seconds()))
            need = self._execute(conn, run, now, NOT_ASKED)
            if need is not None:
                run.due_at = now + LEASE  # stays claimed while the source is asked
                asks.append((run, need))
        sent = self.executor.finish(conn) > 0
        runs.save_all(conn, claimed, now)  # one statement for the round, in the same transaction
        return self._round(conn, now, len(claimed), asks, sent)

    def _round(self, conn: Connection, now: datetime, fired: int, asks: Asks, sent: bool) -> Fired:
        handoff = self.claim_sends(conn, now) if sent else None
        return Fired(fired, asks, runs.next_due(conn), sent, handoff)

    def _claim(self, conn: Connection, now: datetime) -> list[runs.Run]:
        """The round's runs: those due first, unless a backlog is being worked off.

        When a round is full, more runs are overdue than a round takes. The runner then takes the
        ids of the `BACKLOG` longest overdue and claims them in id order, round after round. All
        are late already; in id order a round's runs share the store's pages (rows, indexes, the
        journal), where in due order they may each sit on pages of their own: 100,000 runs due in
        one second drain in far less time (bench/README-timers.md, interleaved drain). Runs that
        fall due meanwhile wait for the backlog's end: at most `BACKLOG` runs, which are late too.
        """
        while self._backlog:
            ids = [self._backlog.popleft() for _ in range(min(self.batch_size, len(self._backlog)))]
            claimed = runs.claim_ids(conn, ids, now, lease=LEASE)
            if claimed:  # ids fired or moved by others meanwhile are skipped
                return claimed
        claimed = runs.claim_due(conn, now, limit=self.batch_size, lease=LEASE)
        if len(claimed) == self.batch_size:
            self._backlog.extend(runs.overdue_ids(conn, now, limit=BACKLOG))
        return claimed

    def _settle(
        self,
        conn: Connection,
        asks: Asks,
        answers: list[Live],
        now: datetime,
    ) -> Fired:
        answer_of = {run.id: answer for (run, _), answer in zip(asks, answers, strict=True)}
        mine = runs.still_claimed(conn, [run for run, _ in asks])
        self.executor.begin(conn, mine, now)
        for run in mine:
            if self._execute(conn, run, now, answer_of[run.id]) is not None:
                raise AssertionError("a run asked the source twice in one firing")
        sent = self.executor.finish(conn) > 0
        for run in mine:
            runs.save(conn, run, now, claim=run.claim)
        return self._round(conn, now, len(mine), [], sent)

    def _execute(self, conn: Connection, run: runs.Run, now: datetime, live: Live) -> NeedsLookup | None:
        """One run's steps: a bug or bad data in one run fails that run alone. The executor keeps
        what a run writes until the round ends and drops it on an error; only a flow that updates
        profiles writes at once, so only its runs need a savepoint."""
        try:
            if not self.executor.writes_at_once(run):
                return self.executor.execute(conn, run, now, live)
            with conn.begin_nested():
                return self.executor.execute(conn, run, now, live)
        except Exception as exc:
            log.exception(
                "flow run failed", extra={"action": "flow_run_failed", "flow": run.flow, "run_id": run.id}
            )
            run.end(runs.FAILED, f"{type(exc).__name__}: {exc}", now)
            self.metrics.flow_runs.labels(run.flow, runs.FAILED).inc()
            return None

    async def _ask(self, need: NeedsLookup) -> Live:
        lookup = self.lookups.get(need.source)
        if lookup is None:
            return LookupUnavailable(f"source {need.source!r} has no lookup configured", reason="invalid")
        try:
            return await lookup.cart(need.cart_id)
        except LookupUnavailable as exc:
            return exc

    # ------------------------------------------------------------------ when to look again

    def _plan(self, now: datetime, started: float, due: datetime | None) -> None:
        # A timer's delay is virtual time; the loop sleeps real time (they differ on a ScaledClock).
        left = None if due is None else (due - self.clock.now()).total_seconds()
        wait = self.max_poll if left is None else real_seconds(self.clock, left)
        # Rounds start at least TICK apart (unless the processor wakes the runner, or a round was
        # full): timers due a few ms apart then fire together, a little late, in one round.
        wait = max(wait, TICK - (time.monotonic() - started))
        self.poll = min(self.max_poll, max(0.0, wait))
        if self._gauges_at is None or now - self._gauges_at >= GAUGES_EVERY:
            self._gauges_at = now
            if self._gauges is None or self._gauges.done():
                # Counting a million pending timers takes ~0.1 s: not in the way of the next round.
                self._gauges = asyncio.create_task(self._count(now), name="tidings-flows-gauges")

    async def _count(self, now: datetime) -> None:
        try:
            pending, overdue = await self.store.read(lambda c: runs.pending_count(c, now, OVERDUE_AFTER))
        except Exception:
            log.exception("counting timers failed", extra={"action": "flow_gauges_failed"})
            return
        self.metrics.timers_pending.set(pending)
        self.metrics.timers_overdue.set(overdue)

    async def stop(self) -> None:
        await super().stop()
        await self._answer_handed()  # handed over after the last round: not left leased
        if self._gauges is not None:
            await self._gauges
