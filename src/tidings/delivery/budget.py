"""One budget per destination, shared by every worker on the database: leased in pieces, spent locally.

Several `tidings serve --role worker` processes on one PostgreSQL database send to the same vendor
account, and the vendor counts their requests together. Asking the database before every request
would cost more than the request (Klaviyo's events endpoint allows 350 a second), so the database
hands out the budget in pieces and each process spends its piece on its own clock:

- The shortest window (Klaviyo's 75 a second) is a shared **schedule** of start times, spaced
  window x MARGIN / requests apart, as one process spaces its own (`limits.py`). One row per
  destination (`rate_schedule`) holds the first free start; a lease takes the next starts, about
  `lease_span` seconds of them, and the process starts one request at each (a start missed by
  more than a quarter of the margin is lost, not used late). However many workers lease, the
  starts stay evenly spaced, so any window holds at most its budget.
- Longer windows (750 a minute) are counted in fixed slots of window / SLOTS (`rate_budget`). A
  lease gets only what keeps every window that could hold its starts within the budget, counting
  each slot such a window touches in full (conservative by at most one slot). Starts a worker
  leased and did not use are uncounted again with its next transaction.
- Concurrency (Mailchimp's 10 connections) is one row per connection (`rate_permits`), each held
  by at most one worker under a lease the worker renews every `heartbeat`. The workers that want
  to send (`rate_workers`, one heartbeat row each) split the connections evenly; a worker over its
  share gives permits back as its requests finish. A request starts only on a permit the worker
  holds, so the total never exceeds the limit.

Each lease is one short transaction on a thread of its own, never queued behind outbox writes.
Times are the database's clock, so workers on different machines agree; each process maps them to
its monotonic clock by an offset measured over the quickest of a few round trips.

A worker that dies stops renewing: its permits are free again and its heartbeat row stops counting
after `permit_ttl`; the starts it had leased and not used (at most about twice `lease_span`) are
lost, and stay counted in the longer windows until they leave them. Whatever is uncertain counts
as used: the vendor never gets more than the limit, at the price of a little unused budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, delete, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from tidings.delivery.limits import MARGIN
from tidings.destinations.base import Limits, RateWindow
from tidings.store import Store
from tidings.store.schema import rate_budget, rate_permits, rate_schedule, rate_workers

log = logging.getLogger("tidings.delivery.budget")

T = TypeVar("T")

SLOTS = 60  # a longer window is counted in slots of window / SLOTS (a minute: 1 s slots)
CLOCK_REFRESH = 10.0  # seconds between measurements of the database clock's offset
STARVED_POLL = 0.1  # seconds between looks for permits while short of this worker's share
MAX_LEAD = 0.025  # seconds: the most a lease's first start is put off to cover its round trip
RETRY_AFTER_ERROR = 1.0  # seconds before a failed lease or heartbeat is tried again

_NOW_US = {
    "postgresql": text("CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"),
    "sqlite": text("CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"),
}


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the budget is leased; the defaults suit production, tests shorten them."""

    lease_span: float = 0.1  # seconds of the shared schedule one lease takes at most
    heartbeat: float = 1.0  # seconds between renewals of a worker's permits and heartbeat
    permit_ttl: float = 5.0  # a permit (or heartbeat) not renewed for this long is free again

    def __post_init__(self) -> None:
        if not (0 < self.lease_span and 0 < self.heartbeat < self.permit_ttl):
            raise ValueError(f"budget tuning needs lease_span > 0 and 0 < heartbeat < permit_ttl, got {self}")


def worker_name() -> str:
    """Unique per process and run, readable in the tables: host, pid, random suffix."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _insert(conn: Connection, table: Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class DatabaseClock:
    """The database's clock (microseconds since the epoch) read from this process's monotonic clock."""

    def __init__(self) -> None:
        self._offset_us: int | None = None
        self._measured_at = -math.inf

    @property
    def due(self) -> bool:
        return self._offset_us is None or time.monotonic() - self._measured_at > CLOCK_REFRESH

    def measure(self, conn: Connection) -> None:
        """Take the offset from the quickest of three round trips (its error is half that trip)."""
        query = select(_NOW_US["postgresql" if conn.dialect.name == "postgresql" else "sqlite"])
        best: tuple[float, int] | None = None
        for _ in range(3):
            before = time.monotonic()
            remote = int(conn.execute(query).scalar_one())
            after = time.monotonic()
            if best is None or after - before < best[0]:
                best = (after - before, remote - round((before + after) / 2 * 1e6))
        assert best is not None
        self._offset_us = best[1]
        self._measured_at = time.monotonic()

    def now_us(self) -> int:
        assert self._offset_us is not None, "measure() first"
        return round(time.monotonic() * 1e6) + self._offset_us

    def local(self, remote_us: int) -> float:
        """The monotonic time at which the database's clock reads `remote_us`."""
        assert self._offset_us is not None, "measure() first"
        return (remote_us - self._offset_us) / 1e6


class SharedBudgets:
    """Every shared budget of one worker: its name, its database thread, its view of the clock."""

    def __init__(self, store: Store, *, worker: str | None = None, tuning: Tuning | None = None) -> None:
        self.store = store
        self.worker = worker or worker_name()
        self.tuning = tuning or Tuning()
        self.clock = DatabaseClock()
        self.budgets: dict[str, SharedBudget] = {}
        self._executor: ThreadPoolExecutor | None = None

    def limiter(self, destination: str, limits: Limits) -> SharedBudget:
        budget = SharedBudget(self, destination, limits)
        self.budgets[destination] = budget
        return budget

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """`fn` in one write transaction on the budget's own thread (and connection)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidings-budget")

        def work(conn: Connection) -> T:
            if conn.dialect.name == "postgresql":
                # A lease is worth nothing after a crash of the database: no fsync to wait for.
                conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            if self.clock.due:
                self.clock.measure(conn)
            return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, self.store.write_sync, work)

    async def close(self) -> None:
        """Stop leasing and give back what this worker holds (others need not wait for it to expire)."""
        for budget in self.budgets.values():
            await budget.close()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)


class SharedBudget:
    """A destination's limits shared through the database; `async with budget.slot():` as Limiter."""

    def __init__(self, owner: SharedBudgets, destination: str, limits: Limits) -> None:
        self.owner = owner
        self.destination = destination
        windows = sorted(limits.windows, key=lambda w: w.per)
        self.schedule = _Schedule(self, windows[0], windows[1:]) if windows else None
        self.permits = _Permits(self, limits.concurrency) if limits.concurrency else None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        permit = await self.permits.acquire() if self.permits is not None else None
        try:
            if self.schedule is not None:
                await self.schedule.take()
            yield
        finally:
            if permit is not None:
                assert self.permits is not None
                self.permits.release(permit)

    async def close(self) -> None:
        if self.schedule is not None:
            await self.schedule.close()
        if self.permits is not None:
            await self.permits.close()

    def stats(self) -> dict[str, int]:
        """What this worker leased and lost, and the permits it holds (for tests, the bench, logs)."""
        out: dict[str, int] = {}
        if self.schedule is not None:
            out.update(leases=self.schedule.leases, leased=self.schedule.leased, lost=self.schedule.lost)
        if self.permits is not None:
            out.update(permits=len(self.permits.held), share=self.permits.target)
        return out


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _broadcast(event: asyncio.Event) -> asyncio.Event:
    """Wake everyone waiting on `event`; return a fresh one for the next round."""
    event.set()
    return asyncio.Event()


# --------------------------------------------------------------------------- request windows


@dataclass(frozen=True, slots=True)
class _Counted:
    """A longer window, counted in fixed slots of the database's clock."""

    requests: int
    window_us: int  # the vendor's window: the rows' key
    span_us: int  # the window as kept (x MARGIN)
    slot_us: int

    def slot(self, at_us: int) -> int:
        return at_us // self.slot_us * self.slot_us


class _Schedule:
    """This worker's side of the shared schedule: starts leased, waiters given one each."""

    def __init__(self, budget: SharedBudget, pace: RateWindow, longer: Sequence[RateWindow]) -> None:
        self.budget = budget
        seconds = pace.per.total_seconds()
        self.step_us = max(1, round(seconds * MARGIN * 1e6 / pace.requests))
        # A start may be used this late; with the arrival jitter it shares the MARGIN.
        self.grace = seconds * (MARGIN - 1) / 4
        self.most = max(1, int(budget.owner.tuning.lease_span * 1e6 // self.step_us))
        self.counted = [
            _Counted(
                requests=w.requests,
                window_us=round(w.per.total_seconds() * 1e6),
                span_us=round(w.per.total_seconds() * MARGIN * 1e6),
                slot_us=max(1000, round(w.per.total_seconds() * 1e6 / SLOTS)),
            )
            for w in longer
        ]
        self._swept: dict[int, int] = {}  # window_us -> oldest slot kept after the last clean-up
        self._starts: deque[tuple[float, int]] = deque()  # leased, not yet given out: (monotonic, lease)
        # Per lease: starts not yet used or lost, and the slots of the longer windows it was counted in.
        self._pieces: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        self._unused: Counter[tuple[int, int]] = Counter()  # lost starts to uncount: (window, slot)
        self._needing = 0  # waiters without a start
        self._arrived = asyncio.Event()
        self._demand = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lead = MAX_LEAD  # until a lease has been timed
        self._cold = True  # no request sent yet
        self.leases = self.leased = self.lost = 0

    async def take(self) -> None:
        """Return at a start this worker leased (never more than GRACE after it)."""
        self._needing += 1
        needing = True
        try:
            while True:
                self._drop_late()
                if self._starts:
                    at, piece = self._starts.popleft()
                    self._needing -= 1
                    needing = False
                    delay = at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if time.monotonic() <= at + self.grace:
                        self._settle(piece, used=True)
                        return
                    self._settle(piece, used=False)  # woke too late: it could crowd the next starts
                    self._needing += 1
                    needing = True
                    continue
                self._kick()
                arrived = self._arrived
                await arrived.wait()
        finally:
            if needing:
                self._needing -= 1

    def _drop_late(self) -> None:
        limit = time.monotonic() - self.grace
        while self._starts and self._starts[0][0] < limit:
            self._settle(self._starts.popleft()[1], used=False)

    def _settle(self, piece: int, *, used: bool) -> None:
        """A start was used, or passed unused: then the longer windows need not count it."""
        if not used:
            self.lost += 1
        found = self._pieces.get(piece)
        if found is None:
            return
        left, slots = found
        left[0] -= 1
        if not used:
            self._unused.update(slots)
        if left[0] <= 0:
            del self._pieces[piece]

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._lease_loop(), name=f"tidings-budget-{self.budget.destination}"
            )
        self._demand.set()

    async def _lease_loop(self) -> None:
        span = self.budget.owner.tuning.lease_span
        while True:
            self._drop_late()
            deficit = self._needing - len(self._starts)
            if deficit <= 0:
                await self._idle()
                continue
            ahead = self._starts[-1][0] - time.monotonic() if self._starts else 0.0
            if ahead > span:  # enough in hand; lease the next piece when it runs low
                await asyncio.sleep(ahead - span)
                continue
            want = min(deficit, self.most) + (1 if self._cold else 0)
            began = time.monotonic()
            unused, self._unused = self._unused, Counter()
            lease = partial(self._lease, want=want, lead=self._lead, unused=unused)
            try:
                starts, slots, wait = await self.budget.owner.run(lease)
            except Exception:
                log.exception(
                    "leasing from the shared budget failed; retrying",
                    extra={"action": "budget_lease_failed", "destination": self.budget.destination},
                )
                await asyncio.sleep(RETRY_AFTER_ERROR)
                continue
            self._lead = min(MAX_LEAD, time.monotonic() - began)
            if not starts:
                await asyncio.sleep(min(wait, 1.0))  # sooner if this worker's unused starts make room
                continue
            self._received(starts, slots)

    async def _idle(self) -> None:
        """Nobody waits: uncount what went unused; wake when asked, or when starts in hand pass."""
        if self._unused:
            unused, self._unused = self._unused, Counter()
            with contextlib.suppress(Exception):  # logged by the next lease if the store is down
                await self.budget.owner.run(partial(self._lease, want=0, lead=0.0, unused=unused))
            return
        self._demand.clear()
        timeout = self._starts[-1][0] + self.grace - time.monotonic() if self._starts else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if timeout is None else max(0.0, timeout) + 0.001):
                await self._demand.wait()

    def _received(self, starts: list[float], slots: list[tuple[int, int]]) -> None:
        self.leases += 1
        self.leased += len(starts)
        piece = self.leases
        if slots:
            self._pieces[piece] = ([len(starts)], slots)
        if self._cold and len(starts) >= 2:
            # This worker's first request opens a connection and runs code not yet warm: it
            # arrives tens of milliseconds after the ones that follow would. The start after it
            # is left unused, so that it cannot crowd them.
            self._cold = False
            del starts[1]
            self._settle(piece, used=False)
            self.lost -= 1  # set aside on purpose, not lost
        self._starts.extend((at, piece) for at in starts)
        self._arrived = _broadcast(self._arrived)

    def _lease(
        self, conn: Connection, *, want: int, lead: float, unused: Counter[tuple[int, int]]
    ) -> tuple[list[float], list[tuple[int, int]], float]:
        """Take up to `want` starts: their monotonic times and the slots they were counted in, or
        none and how long to wait. Starts that passed unused are uncounted first.

        The first start is at least `lead` (the last lease's round trip) away, so that it is
        still ahead when the lease reaches the event loop."""
        destination = self.budget.destination
        locked = (
            select(rate_schedule.c.next_start_us)
            .where(rate_schedule.c.destination == destination)
            .with_for_update()
        )
        next_start = conn.execute(locked).scalar()
        if next_start is None:
            conn.execute(
                _insert(conn, rate_schedule).on_conflict_do_nothing(),
                {"destination": destination, "next_start_us": 0},
            )
            next_start = conn.execute(locked).scalar_one()
        for (window_us, slot_start_us), count in unused.items():  # under the lock: no deadlock
            conn.execute(
                update(rate_budget)
                .where(
                    rate_budget.c.destination == destination,
                    rate_budget.c.window_us == window_us,
                    rate_budget.c.slot_start_us == slot_start_us,
                    rate_budget.c.used >= count,
                )
                .values(used=rate_budget.c.used - count)
            )
        if want <= 0:
            return [], [], 0.0
        clock = self.budget.owner.clock
        start = max(int(next_start), clock.now_us() + round(lead * 1e6))  # now: after the lock
        count = want
        for window in self.counted:
            count, free_at = self._room(conn, window, start, count)
            if count <= 0:
                return [], [], max(0.001, clock.local(free_at) - time.monotonic())
        conn.execute(
            update(rate_schedule)
            .where(rate_schedule.c.destination == destination)
            .values(next_start_us=start + count * self.step_us)
        )
        last = start + (count - 1) * self.step_us
        slots = [self._count(conn, window, start, last, count) for window in self.counted]
        return [clock.local(start + i * self.step_us) for i in range(count)], slots, 0.0

    def _room(self, conn: Connection, window: _Counted, start: int, want: int) -> tuple[int, int]:
        """How many of `want` starts from `start` fit the window; if none, when one will."""
        lo = window.slot(start - window.span_us)
        hi = window.slot(start + (want - 1) * self.step_us)
        rows = conn.execute(
            select(rate_budget.c.slot_start_us, rate_budget.c.used)
            .where(
                rate_budget.c.destination == self.budget.destination,
                rate_budget.c.window_us == window.window_us,
                rate_budget.c.slot_start_us >= lo,
                rate_budget.c.slot_start_us <= hi,
            )
            .order_by(rate_budget.c.slot_start_us)
        ).all()
        room = window.requests - sum(int(r.used) for r in rows)
        if room > 0:
            return min(want, room), 0
        oldest = next((int(r.slot_start_us) for r in rows if r.used > 0), lo)
        return 0, oldest + window.slot_us + window.span_us  # when that slot leaves every window

    def _count(
        self, conn: Connection, window: _Counted, start: int, last: int, count: int
    ) -> tuple[int, int]:
        # All of the lease goes into the slot of its last start: later leases start after it, so
        # every window that holds one of these starts and is checked later holds that slot.
        destination = self.budget.destination
        stmt = _insert(conn, rate_budget).values(
            destination=destination,
            window_us=window.window_us,
            slot_start_us=window.slot(last),
            used=count,
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["destination", "window_us", "slot_start_us"],
                set_={"used": rate_budget.c.used + count},
            )
        )
        oldest = window.slot(start - window.span_us)
        if self._swept.get(window.window_us) != oldest:  # slots no window can reach again
            conn.execute(
                delete(rate_budget).where(
                    rate_budget.c.destination == destination,
                    rate_budget.c.window_us == window.window_us,
                    rate_budget.c.slot_start_us < oldest,
                )
            )
            self._swept[window.window_us] = oldest
        return window.window_us, window.slot(last)

    async def close(self) -> None:
        """Stop leasing; the longer windows need not count the starts left in hand."""
        await _cancel(self._task)
        self._task = None
        while self._starts:
            self._settle(self._starts.popleft()[1], used=False)
        unused, self._unused = self._unused, Counter()
        if unused:
            with contextlib.suppress(Exception):  # counted a little longer than needed: harmless
                await self.budget.owner.run(partial(self._lease, want=0, lead=0.0, unused=unused))
        self._pieces.clear()


# --------------------------------------------------------------------------- concurrency


@dataclass(frozen=True, slots=True)
class _Grant:
    held: list[int]
    share: int


class _Permits:
    """This worker's permits (connections it may have open), leased from `rate_permits`."""

    def __init__(self, budget: SharedBudget, allowed: int) -> None:
        self.budget = budget
        self.allowed = allowed
        tuning = budget.owner.tuning
        self.ttl_us = round(tuning.permit_ttl * 1e6)
        self.safety = tuning.permit_ttl / 5  # stop using a lease this long before it runs out
        self.held: set[int] = set()
        self.target = 0  # this worker's share, as of the last heartbeat
        self._free: list[int] = []
        self._in_use: set[int] = set()
        self._giving_back: set[int] = set()  # over the share: returned at the next heartbeat
        self._valid_until = 0.0  # monotonic: every held permit's lease runs out after it
        self._waiting = 0
        self._wanted = False  # what the last heartbeat told the others
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._registered = False

    async def acquire(self) -> int:
        self._waiting += 1
        try:
            while True:
                expired = time.monotonic() >= self._valid_until
                if self._free and not expired:
                    permit = self._free.pop()
                    self._in_use.add(permit)
                    return permit
                self._start()
                if not self._wanted or len(self.held) - len(self._giving_back) < self.target or expired:
                    self._poke.set()  # tell the others this worker wants its share, or take it
                changed = self._changed
                await changed.wait()
        finally:
            self._waiting -= 1

    def release(self, permit: int) -> None:
        self._in_use.discard(permit)
        if permit not in self.held:
            return  # lost with an expired lease: not this worker's any more
        if len(self.held) - len(self._giving_back) > self.target:
            self._giving_back.add(permit)
            self._poke.set()
        else:
            self._free.append(permit)
        self._changed = _broadcast(self._changed)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"tidings-budget-permits-{self.budget.destination}"
            )

    async def _heartbeat_loop(self) -> None:
        tuning = self.budget.owner.tuning
        last = -math.inf
        while True:
            wait = last + tuning.heartbeat - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._poke.wait()
                pause = last + STARVED_POLL - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
            self._poke.clear()
            last = time.monotonic()
            try:
                await self._heartbeat()
            except Exception:
                log.exception(
                    "renewing the shared permits failed; retrying",
                    extra={"action": "budget_heartbeat_failed", "destination": self.budget.destination},
                )
                await asyncio.sleep(RETRY_AFTER_ERROR)

    async def _heartbeat(self) -> None:
        wants = self._waiting + len(self._in_use)
        in_use, returned = set(self._in_use), set(self._giving_back)
        free = list(self._free)
        began = time.monotonic()
        try:
            grant = await self.budget.owner.run(partial(self._renew, wants=wants, in_use=in_use, free=free))
        finally:
            self._changed = _broadcast(self._changed)
        self._registered = True
        self._wanted = wants > 0
        self.target = grant.share
        self.held = set(grant.held)
        self._giving_back = (self._giving_back - returned) & self.held
        self._free = [p for p in grant.held if p not in self._in_use and p not in self._giving_back]
        excess = len(self.held) - len(self._giving_back) - self.target
        while excess > 0 and self._free:  # over the share: the idle ones go back at once
            self._giving_back.add(self._free.pop())
            excess -= 1
        if self._giving_back:
            self._poke.set()
        self._valid_until = began + self.budget.owner.tuning.permit_ttl - self.safety

    def _renew(self, conn: Connection, *, wants: int, in_use: set[int], free: list[int]) -> _Grant:
        """Heartbeat, work out this worker's share, renew what it holds, claim up to its share.

        Only what the worker set aside (`_giving_back`) is given back here: a free permit may be
        taken by a request while this runs. Over its share, the worker sets permits aside as they
        become free, and they go back with the next heartbeat."""
        destination, me = self.budget.destination, self.budget.owner.worker
        rows = self._lock_rows(conn)
        now = self.budget.owner.clock.now_us()
        share = self._share(conn, now, wants)
        mine = {r.permit for r in rows if r.holder == me}
        keep = [p for p in (*in_use, *free) if p in mine and p < self.allowed]
        lost = len(in_use - mine)  # in use, but taken by another after this worker's lease ran out
        claimable = [
            r.permit
            for r in rows
            if r.permit < self.allowed and r.permit not in mine and (r.holder is None or r.expires_us <= now)
        ]
        held = keep + claimable[: max(0, share - len(keep) - lost)]
        if held:
            conn.execute(
                update(rate_permits)
                .where(rate_permits.c.destination == destination, rate_permits.c.permit.in_(held))
                .values(holder=me, expires_us=now + self.ttl_us)
            )
        returned = sorted(mine - set(held))
        if returned:
            conn.execute(
                update(rate_permits)
                .where(
                    rate_permits.c.destination == destination,
                    rate_permits.c.permit.in_(returned),
                    rate_permits.c.holder == me,
                )
                .values(holder=None, expires_us=0)
            )
        return _Grant(held=held, share=share)

    def _lock_rows(self, conn: Connection) -> list[Any]:
        """Every permit row of the destination, locked (so heartbeats of one destination queue)."""
        destination = self.budget.destination
        query = (
            select(rate_permits.c.permit, rate_permits.c.holder, rate_permits.c.expires_us)
            .where(rate_permits.c.destination == destination)
            .order_by(rate_permits.c.permit)
            .with_for_update()
        )
        rows = conn.execute(query).all()
        missing = set(range(self.allowed)) - {r.permit for r in rows}
        if missing:
            conn.execute(
                _insert(conn, rate_permits).on_conflict_do_nothing(),
                [{"destination": destination, "permit": p, "holder": None, "expires_us": 0} for p in missing],
            )
            rows = conn.execute(query).all()
        return list(rows)

    def _share(self, conn: Connection, now: int, wants: int) -> int:
        """The permits this worker may hold: the allowed number split among the workers wanting some."""
        destination, me = self.budget.destination, self.budget.owner.worker
        conn.execute(
            _insert(conn, rate_workers)
            .values(destination=destination, worker=me, wants=wants, expires_us=now + self.ttl_us)
            .on_conflict_do_update(
                index_elements=["destination", "worker"],
                set_={"wants": wants, "expires_us": now + self.ttl_us},
            )
        )
        conn.execute(  # long gone workers (a live one renews every heartbeat)
            delete(rate_workers).where(
                rate_workers.c.destination == destination,
                rate_workers.c.expires_us < now - self.ttl_us,
            )
        )
        if not wants:
            return 0
        wanting = list(
            conn.execute(
                select(rate_workers.c.worker)
                .where(
                    rate_workers.c.destination == destination,
                    rate_workers.c.expires_us > now,
                    or_(rate_workers.c.wants > 0, rate_workers.c.worker == me),
                )
                .order_by(rate_workers.c.worker)
            ).scalars()
        )
        rank, count = wanting.index(me), len(wanting)
        return self.allowed // count + (1 if rank < self.allowed % count else 0)

    async def close(self) -> None:
        await _cancel(self._task)
        self._task = None
        if not self._registered:
            return
        destination, me = self.budget.destination, self.budget.owner.worker

        def give_back(conn: Connection) -> None:
            conn.execute(
                update(rate_permits)
                .where(rate_permits.c.destination == destination, rate_permits.c.holder == me)
                .values(holder=None, expires_us=0)
            )
            conn.execute(
                delete(rate_workers).where(
                    rate_workers.c.destination == destination, rate_workers.c.worker == me
                )
            )

        try:
            await self.budget.owner.run(give_back)
        except Exception:  # they expire by themselves
            log.exception(
                "giving the shared permits back failed",
                extra={"action": "budget_release_failed", "destination": destination},
            )
        self._registered = False
        self.held.clear()
        self._free.clear()
        self._giving_back.clear()
        self._valid_until = 0.0
