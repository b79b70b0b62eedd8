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

# Turns an effect as stored into what the destination is given (profile sync renders the
# profile's current fields here, so a coalesced push carries the freshest values).
Prepare = Callable[[Effect], Awaitable[Effect | None]]


async def _as_is(effect: Effect) -> Effect | None:
    return effect


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
        super().__init__()

    def _limiter(self, name: str, destination: Destination[Any]) -> Slots:
        limits = destination.limits
        if self.budgets is None or (limits.concurrency is None and not limits.windows):
            return Limiter(limits)
        return self.budgets.limiter(name, limits)

    async def stop(self) -> None:
        """Finish what is in flight, then give back the shared budget this worker holds."""
        await super().stop()
        if self.budgets is not None:
            await self.budgets.close()

    # ------------------------------------------------------------------ one round

    async def _claim(self, limit: int) -> list[outbox.Claimed]:
        now = self.clock.now()
        return await self.store.write(
            lambda conn: outbox.claim(
                conn, now, limit=limit, lease=LEASE, skip=outbox.paused_destinations(conn, now)
            )
        )

    async def run_once(self) -> int:
        """Claim what is due and send it all; return how many effects were settled."""
        claimed = await self._claim(self.batch_size)
        await asyncio.gather(*(self._send(c) for c in claimed))
        return len(claimed)

    async def drain(self) -> None:
        """Send until nothing is due now (for the CLI, tests and the simulator)."""
        while await self.run_once():
            pass

    async def _send(self, claimed: outbox.Claimed) -> None:
        effect = claimed.effect
        # Every line logged while sending names the effect (key rotation, OAuth, pauses, ...).
        with bound(
            outbox_id=effect.id, destination=effect.destination, effect=effect.action, attempt=effect.attempt
        ):
            await self._send_bound(claimed)

    async def _send_bound(self, claimed: outbox.Claimed) -> None:
        effect = claimed.effect
        destination = self.destinations.get(effect.destination)
        if destination is None:
            await self._settle(effect, "dead", f"destination {effect.destination!r} is not configured")
            return
        if claimed.recovered and effect.action not in destination.idempotent_actions:
            unknown = (
                "outcome unknown: tidings stopped while sending; not repeated, since "
                f"{effect.action} is not idempotent at {destination.kind} "
                "(retry it by hand if it did not arrive)"
            )
            await self._settle(effect, "dead", unknown)
            return
        prepared = await self.prepare(effect)
        if prepared is None:
            await self._settle(
                effect, "delivered", None, receipt=Receipt(detail={"skipped": "nothing to send"})
            )
            return
        started = time.perf_counter()
        async with self.limiters[effect.destination].slot():
            try:
                receipt = await destination.deliver(prepared)
            except DeliveryError as exc:
                await self._failed(effect, destination, exc, time.perf_counter() - started)
                return
        latency = time.perf_counter() - started
        await self._settle(
            effect,
            "delivered",
            None,
            receipt=receipt,
            latency=latency,
            data_occurred_at=claimed.data_occurred_at,
        )

    async def _failed(
        self, effect: Effect, destination: Destination[Any], exc: DeliveryError, latency: float
    ) -> None:
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
            await self._settle(
                effect,
                "paused",
                str(exc),
                status=exc.status,
                latency=latency,
                retry_at=now,
                pause=(until, f"credentials rejected: {exc}"),
            )
            return
        if isinstance(exc, PermanentDeliveryError):
            await self._settle(effect, "dead", str(exc), status=exc.status, latency=latency)
            return
        assert isinstance(exc, RetryableDeliveryError)
        wait = self.retry.delay(effect.attempt, exc.retry_after)
        if wait is None:
            await self._settle(
                effect,
                "dead",
                f"gave up after {effect.attempt} attempts: {exc}",
                status=exc.status,
                latency=latency,
                failure=True,
            )
            return
        await self._settle(
            effect,
            "retry",
            str(exc),
            status=exc.status,
            latency=latency,
            retry_at=now + wait,
            failure=True,
        )

    async def _settle(
        self,
        effect: Effect,
        outcome: str,
        error: str | None,
        *,
        receipt: Receipt | None = None,
        status: int | None = None,
        latency: float | None = None,
        retry_at: datetime | None = None,
        failure: bool = False,
        pause: tuple[datetime, str] | None = None,
        data_occurred_at: datetime | None = None,
    ) -> None:
        now = self.clock.now()
        destination = effect.destination

        def write(conn: Any) -> None:
            outbox.record_attempt(
                conn,
                effect.id,
                now=now,
                request={"action": effect.action, "attempt": effect.attempt},
                status_code=status if receipt is None else receipt.status_code,
                latency_ms=None if latency is None else int(latency * 1000),
                outcome=outcome,
                error=error,
            )
            if outcome == "delivered":
                outbox.mark_delivered(conn, effect.id, now, receipt.remote_id if receipt else None)
                outbox.note_success(conn, destination, now)
            elif outcome == "dead":
                outbox.mark_dead(conn, effect.id, now, error or "")
            else:
                outbox.mark_retry(conn, effect.id, now, retry_at or now, error or "")
            if pause is not None:
                outbox.pause(conn, destination, now, pause[0], pause[1])
            elif failure:
                failures = outbox.note_failure(conn, destination, now)
                wait = self.breaker.pause_for(failures)
                if wait is not None:
                    outbox.pause(
                        conn,
                        destination,
                        now,
                        now + wait,
                        f"circuit open after {failures} failures",
                    )
                    opened.append((failures, wait.total_seconds()))

        opened: list[tuple[int, float]] = []
        await self.store.write(write)
        if outcome == "dead":
            # The vendor's words stay in the store (`tidings deliveries list`): they may quote an address.
            log.warning(
                "delivery is dead",
                extra={"action": "delivery_dead", "outbox_id": effect.id, "destination": destination},
            )
        for failures, seconds in opened:
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
        self.metrics.deliveries.labels(destination, outcome).inc()
        if latency is not None:
            self.metrics.delivery_seconds.labels(destination).observe(latency)
        if outcome == "delivered" and data_occurred_at is not None:
            self.metrics.delivered_data_age.labels(destination).observe(
                max(0.0, (now - data_occurred_at).total_seconds())
            )

    async def _run(self) -> None:
        """Keep up to `batch_size` effects in flight, claiming more as each one settles.

        So a slow destination (5 requests a second) never holds back a fast one, and a destination
        limited to N connections keeps all N busy instead of waiting for a whole batch to finish.
        """
        inflight: set[asyncio.Task[None]] = set()
        while not self._stopping or inflight:
            self._wake.clear()
            claimed: list[outbox.Claimed] = []
            if not self._stopping and len(inflight) < self.batch_size:
                try:
                    claimed = await self._claim(self.batch_size - len(inflight))
                except Exception:
                    self._log.exception("claiming failed; retrying", extra={"action": "dispatch_failed"})
            for effect in claimed:
                inflight.add(asyncio.create_task(self._send(effect), name=f"tidings-send-{effect.effect.id}"))
            if claimed and len(inflight) < self.batch_size:
                continue  # there may be more due right now
            waker = asyncio.create_task(self._wake.wait())
            done, _ = await asyncio.wait(
                {*inflight, waker}, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED
            )
            waker.cancel()
            for task in done - {waker}:
                inflight.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    self._log.error(
                        "a send failed unexpectedly",
                        exc_info=task.exception(),
                        extra={"action": "send_failed"},
                    )
