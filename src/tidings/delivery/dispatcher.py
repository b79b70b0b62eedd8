"""The dispatcher: claims due effects, sends each within its destination's budget, settles it.

Every outcome is decided here, from the error class a destination raised:
- delivered: recorded with the vendor's id and the freshness of the data it carried;
- RetryableDeliveryError (5xx, 429, timeouts): tried again on the schedule, never sooner than
  the vendor's Retry-After; enough failures in a row open the circuit (the destination is paused,
  then probed by the next due effect);
- PermanentDeliveryError (400, 404, 422): to the dead letters with the vendor's own words;
- DestinationAuthError (401, 403): the destination is paused and an error is logged, loudly;
- an effect whose process died mid-send (its lease ran out) is retried if its action is
  idempotent for that destination, else parked in the dead letters: sending twice is worse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tidings.clock import Clock
from tidings.delivery import outbox
from tidings.delivery.budget import SharedBudgets, Tuning
from tidings.delivery.effects import Effect, Receipt
from tidings.delivery.limits import Limiter, Slots
from tidings.delivery.retry import Breaker, RetryPolicy
from tidings.destinations.base import Destination
from tidings.exceptions import (
    DeliveryError,
    DestinationAuthError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from tidings.logging import bound
from tidings.loop import Loop
from tidings.metrics import Metrics
from tidings.store import Store

log = logging.getLogger("tidings.delivery")

LEASE = timedelta(minutes=5)
# How often to look for effects of destinations no longer configured (they are settled as dead).
OTHERS_EVERY = timedelta(minutes=5)

# Turns an effect as stored into what the destination is given (profile sync renders the
# profile's current fields here, so a coalesced push carries the freshest values).
Prepare = Callable[[Effect], Awaitable[Effect | None]]


Opened = tuple[str, int, float]  # a circuit this worker opened: destination, failures, seconds


async def _as_is(effect: Effect) -> Effect | None:
    return effect


@dataclass(frozen=True, slots=True)
class Handoff:
    """Effects claimed in another stage's transaction, for this dispatcher to send once it commits
    (`Dispatcher.claim_within`); `more`: the claim was full, so more may be due."""

    claimed: list[outbox.Claimed]
    more: bool


class Dispatcher(Loop):
    name = "dispatcher"

    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, Destination[Any]],
        *,
        clock: Clock,
        metrics: Metrics,
        prepare: Prepare = _as_is,
        retry: RetryPolicy | None = None,
        breaker: Breaker | None = None,
        batch_size: int = 100,
        shared_budget: bool | None = None,
        budget_tuning: Tuning | None = None,
    ) -> None:
        self.store = store
        self.destinations = destinations
        self.clock = clock
        self.metrics = metrics
        self.prepare = prepare
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or Breaker()
        self.batch_size = batch_size
        # Workers on one PostgreSQL database share each destination's budget through it; on
        # SQLite (one process) the budget stays in the process, at no database cost.
        shared = store.dialect == "postgresql" if shared_budget is None else shared_budget
        self.budgets = SharedBudgets(store, tuning=budget_tuning) if shared else None
        self.limiters: dict[str, Slots] = {name: self._limiter(name, d) for name, d in destinations.items()}
        self._others: set[str] = set()  # destinations not configured with effects waiting
        self._others_at: datetime | None = None
        self._inflight: set[asyncio.Task[Outcome]] = set()
        self._handed: list[outbox.Claimed] = []  # claimed in another stage's transaction, to send
        self._look_asked = False  # woken to look for due effects (not merely handed some)
        super().__init__()

    def _limiter(self, name: str, destination: Destination[Any]) -> Slots:
        limits = destination.limits
        if self.budgets is None or (limits.concurrency is None and not limits.windows):
            return Limiter(limits)
        return self.budgets.limiter(name, limits)

    def wake(self) -> None:
        self._look_asked = True
        super().wake()

    def claim_within(self, conn: Any, now: datetime) -> Handoff | None:
        """Claim due effects in the caller's transaction (the flow runner's, which has just written
        sends), to be given to this dispatcher by `take` once that transaction commits: the sends
        go out without a claim transaction of the dispatcher's own, nor the wait for it.

        Claimed as the dispatcher claims (due order, paused destinations left out, a lease), up to
        the room it has; a claim that does not commit claimed nothing. None while the dispatcher is
        not running or is stopping: the effects stay pending for its own claim (`wake`). The
        stages upstream stop first, so nothing is handed to a dispatcher that has stopped."""
        if self._task is None or self._task.done() or self._stopping:
            return None
        room = self.batch_size - len(self._inflight) - len(self._handed)  # about: read off the loop
        if room <= 0:
            return None
        claimed = self._claim(conn, now, room)
        return Handoff(claimed, more=len(claimed) == room)

    def take(self, handoff: Handoff | None) -> None:
        """Send what `claim_within` claimed, now that its transaction committed (None: look)."""
        if handoff is None or handoff.more:
            self.wake()
        if handoff is not None and handoff.claimed:
            self._handed.extend(handoff.claimed)
            self._wake.set()

    async def stop(self) -> None:
        """Finish what is in flight, then give back the shared budget this worker holds."""
        await super().stop()
        if self.budgets is not None:
            await self.budgets.close()

    # ------------------------------------------------------------------ one round

    async def run_once(self) -> int:
        """Claim what is due, send it all, settle it in one transaction; return how many."""
        claimed = await self._transact([], self.batch_size)
        outcomes = await asyncio.gather(*(self._send(c) for c in claimed))
        await self._transact(list(outcomes), 0)
        return len(claimed)

    async def drain(self) -> None:
        """Send until nothing is due now (for the CLI, tests and the simulator)."""
        while await self.run_once():
            pass

    async def _transact(self, finished: list[Outcome], want: int) -> list[outbox.Claimed]:
        """One write transaction: settle what finished, then claim up to `want` more."""
        now = self.clock.now()
        if want > 0 and (self._others_at is None or now - self._others_at >= OTHERS_EVERY):
            # A scan of the outbox's destinations: on a reader, not holding up the writer.
            configured = list(self.destinations)
            self._others = await self.store.read(lambda conn: outbox.waiting_destinations(conn, configured))
            self._others_at = now

        def write(conn: Any) -> tuple[list[Opened], list[outbox.Claimed]]:
            opened = self._write_outcomes(conn, finished, now)
            return opened, self._claim(conn, now, want) if want else []

        opened, claimed = await self.store.write(write)
        self._observe(finished, opened, now)
        return claimed

    def _claim(self, conn: Any, now: datetime, want: int) -> list[outbox.Claimed]:
        paused = outbox.paused_destinations(conn, now)
        active = [d for d in (*self.destinations, *sorted(self._others)) if d not in paused]
        return outbox.claim(conn, now, destinations=active, limit=want, lease=LEASE)

    async def _send(self, claimed: outbox.Claimed) -> Outcome:
        effect = claimed.effect
        # Every line logged while sending names the effect (key rotation, OAuth, pauses, ...).
        with bound(
            outbox_id=effect.id, destination=effect.destination, effect=effect.action, attempt=effect.attempt
        ):
            return await self._send_bound(claimed)

    async def _send_bound(self, claimed: outbox.Claimed) -> Outcome:
        effect = claimed.effect
        destination = self.destinations.get(effect.destination)
        if destination is None:
            return Outcome(claimed, "dead", f"destination {effect.destination!r} is not configured")
        if claimed.recovered and effect.action not in destination.idempotent_actions:
            unknown = (
                "outcome unknown: tidings stopped while sending; not repeated, since "
                f"{effect.action} is not idempotent at {destination.kind} "
                "(retry it by hand if it did not arrive)"
            )
            return Outcome(claimed, "dead", unknown)
        prepared = await self.prepare(effect)
        if prepared is None:
            return Outcome(claimed, "delivered", None, receipt=Receipt(detail={"skipped": "nothing to send"}))
        started = time.perf_counter()
        async with self.limiters[effect.destination].slot():
            try:
                receipt = await destination.deliver(prepared)
            except DeliveryError as exc:
                return self._failed(claimed, destination, exc, time.perf_counter() - started)
        return Outcome(claimed, "delivered", None, receipt=receipt, latency=time.perf_counter() - started)

    def _launch(self, claimed: list[outbox.Claimed]) -> None:
        for c in claimed:
            self._inflight.add(asyncio.create_task(self._send(c), name=f"tidings-send-{c.effect.id}"))

    def _failed(
        self, claimed: outbox.Claimed, destination: Destination[Any], exc: DeliveryError, latency: float
    ) -> Outcome:
        now = self.clock.now()
        if isinstance(exc, DestinationAuthError):
            log.error(
                "destination rejected the credentials; paused",
                extra={
                    "action": "destination_paused",
                    "destination": destination.name,
                    "reason": "credentials_rejected",
                    "status": exc.status,
                },
            )
            until = now + timedelta(seconds=self.breaker.auth_pause)
            return Outcome(
                claimed,
                "paused",
                str(exc),
                status=exc.status,
                latency=latency,
                pause=(until, f"credentials rejected: {exc}"),
            )
        if isinstance(exc, PermanentDeliveryError):
            return Outcome(claimed, "dead", str(exc), status=exc.status, latency=latency)
        assert isinstance(exc, RetryableDeliveryError)
        attempt = claimed.effect.attempt
        wait = self.retry.delay(attempt, exc.retry_after)
        if wait is None:
            return Outcome(
                claimed,
                "dead",
                f"gave up after {attempt} attempts: {exc}",
                status=exc.status,
                latency=latency,
                failure=True,
            )
        return Outcome(
            claimed, "retry", str(exc), status=exc.status, latency=latency, retry_at=now + wait, failure=True
        )

    def _write_outcomes(self, conn: Any, finished: list[Outcome], now: datetime) -> list[Opened]:
        """Settle the effects, then keep each destination's circuit breaker (shared by every
        worker) in order of the outcomes; return the circuits this opened."""
        outbox.settle(conn, [o.settlement() for o in finished], now)
        opened: list[Opened] = []
        reset: set[str] = set()  # destinations whose failure count is zero already in this batch
        for o in finished:
            destination = o.claimed.effect.destination
            if o.result == "delivered":
                if destination not in reset:
                    outbox.note_success(conn, destination, now)
                    reset.add(destination)
                continue
            reset.discard(destination)
            if o.pause is not None:
                outbox.pause(conn, destination, now, o.pause[0], o.pause[1])
            elif o.failure:
                failures = outbox.note_failure(conn, destination, now)
                wait = self.breaker.pause_for(failures)
                if wait is not None:
                    reason = f"circuit open after {failures} failures"
                    outbox.pause(conn, destination, now, now + wait, reason)
                    opened.append((destination, failures, wait.total_seconds()))
        return opened

    def _observe(self, finished: list[Outcome], opened: list[Opened], now: datetime) -> None:
        """After the commit: log what needs a person, count the rest."""
        for o in finished:
            effect = o.claimed.effect
            if o.result == "dead":
                # The vendor's words stay in the store (`tidings deliveries list`): they may quote an
                # address.
                log.warning(
                    "delivery is dead",
                    extra={
                        "action": "delivery_dead",
                        "outbox_id": effect.id,
                        "destination": effect.destination,
                        "effect": effect.action,
                        "attempt": effect.attempt,
                    },
                )
            self.metrics.deliveries.labels(effect.destination, o.result).inc()
            if o.latency is not None:
                self.metrics.delivery_seconds.labels(effect.destination).observe(o.latency)
            occurred = o.claimed.data_occurred_at
            if o.result == "delivered" and occurred is not None:
                self.metrics.delivered_data_age.labels(effect.destination).observe(
                    max(0.0, (now - occurred).total_seconds())
                )
        for destination, failures, seconds in opened:
            log.error(
                "destination paused: the circuit opened after failures in a row",
                extra={
                    "action": "destination_paused",
                    "destination": destination,
                    "reason": "circuit_open",
                    "failures": failures,
                    "pause_seconds": seconds,
                },
            )

    async def _run(self) -> None:
        """Keep up to `batch_size` effects in flight. Whatever finished meanwhile is settled in one
        transaction, which also claims more when something may be due (a full claim, a wake-up,
        or the poll's time ran out).

        So a slow destination (5 requests a second) never holds back a fast one, a destination
        limited to N connections keeps all N busy, and under load a transaction settles many
        effects rather than one.
        """
        inflight = self._inflight
        finished: list[Outcome] = []
        look, looked = True, time.monotonic()
        while not self._stopping or inflight or finished or self._handed:
            self._wake.clear()
            handed, self._handed = self._handed, []
            self._launch(handed)  # at once: not after the transaction that settles what finished
            room = 0 if self._stopping else self.batch_size - len(inflight)
            want = room if look else 0
            claimed: list[outbox.Claimed] = []
            if finished or want:
                if want:
                    self._look_asked = False  # this transaction looks: a wake from now on asks again
                try:
                    claimed = await self._transact(finished, want)
                except Exception:
                    self._log.exception(
                        "settling or claiming failed; retrying", extra={"action": "dispatch_failed"}
                    )
                    if self._stopping:
                        return  # what is unsettled is retried when its lease runs out
                    await asyncio.sleep(min(self.poll, 1.0))
                    continue
                finished = []
                if want:
                    looked = time.monotonic()
                look = want > 0 and len(claimed) == want  # a full claim: there may be more due now
            self._launch(claimed)
            if look and len(inflight) < self.batch_size:
                continue
            if not inflight and self._stopping:
                return
            waker = asyncio.create_task(self._wake.wait())
            done, _ = await asyncio.wait(
                {*inflight, waker}, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED
            )
            waker.cancel()
            if self._look_asked or time.monotonic() - looked >= self.poll:
                look = True  # woken to look, or a poll's time since the last look
            for task in [t for t in inflight if t in done]:
                inflight.discard(task)
                if task.cancelled() or task.exception() is not None:
                    self._log.error(
                        "a send failed unexpectedly",
                        exc_info=None if task.cancelled() else task.exception(),
                        extra={"action": "send_failed"},
                    )
                else:
                    finished.append(task.result())


@dataclass(slots=True)
class Outcome:
    """How one attempt ended, decided by `_send`, written by the next transaction."""

    claimed: outbox.Claimed
    result: str  # delivered | retry | dead | paused
    error: str | None
    receipt: Receipt | None = None
    status: int | None = None
    latency: float | None = None
    retry_at: datetime | None = None
    failure: bool = False  # counts towards opening the circuit
    pause: tuple[datetime, str] | None = None  # hold the destination back until, and why

    def settlement(self) -> outbox.Settlement:
        effect = self.claimed.effect
        return outbox.Settlement(
            effect_id=effect.id,
            action=effect.action,
            attempt=effect.attempt,
            outcome=self.result,
            error=self.error,
            status_code=self.status if self.receipt is None else self.receipt.status_code,
            latency_ms=None if self.latency is None else int(self.latency * 1000),
            remote_id=None if self.receipt is None else self.receipt.remote_id,
            retry_at=self.retry_at,
        )
