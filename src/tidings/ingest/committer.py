"""Group commit: many concurrent requests, one transaction, one fsync.

Each request hands its reception to `submit` and waits. One task takes everything that queued up
while the previous transaction was running and commits it as the next one; so under load, batches
grow by themselves and throughput is bounded by fsyncs per batch, not per request. A request is
answered only after its transaction committed. When too much is waiting, `submit` refuses at once
(503 with Retry-After) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from tidings.clock import Clock
from tidings.exceptions import Overloaded, StoreError
from tidings.ingest.base import InboundRequest, Outcome, Reception
from tidings.metrics import Metrics
from tidings.store import Store
from tidings.store.inbox import Submission, commit_batch

log = logging.getLogger("tidings.ingest")


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        metrics: Metrics,
        dedupe_window: timedelta,
        max_pending: int,
        max_batch: int,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.dedupe_window = dedupe_window
        self.max_pending = max_pending
        self.max_batch = max_batch
        self._queue: deque[tuple[Submission, asyncio.Future[Outcome]]] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.committing = 0  # requests in the transaction under way
        self.on_commit: Callable[[], None] = lambda: None  # told after each successful commit

    @property
    def pending(self) -> int:
        """Requests waiting for the next transaction."""
        return len(self._queue)

    async def submit(self, request: InboundRequest, reception: Reception) -> Outcome:
        if self._stopping:
            raise Overloaded("tidings is shutting down; retry shortly")
        if len(self._queue) >= self.max_pending:
            raise Overloaded(f"{len(self._queue)} requests are waiting to be stored; retry shortly")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((Submission(request, reception), future))
        self._wake.set()
        # A client that hangs up does not cancel the commit: the sender will retry and be deduplicated.
        return await asyncio.shield(future)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tidings-group-commit")

    async def stop(self) -> None:
        """Refuse new work, commit everything already accepted, then return."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Submission, asyncio.Future[Outcome]]]) -> None:
        subs = [sub for sub, _ in batch]
        self.metrics.commit_batch_size.observe(len(subs))
        self.committing = len(subs)
        try:
            outcomes = await self.store.write(
                partial(commit_batch, batch=subs, now=self.clock.now(), dedupe_window=self.dedupe_window)
            )
        except BaseException as exc:  # the batch must never be left waiting
            log.error("group commit failed", extra={"action": "commit_failed", "batch": len(subs)})
            failure = exc if isinstance(exc, StoreError) else StoreError(f"commit interrupted: {exc!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, StoreError):
                raise
            return
        finally:
            self.committing = 0
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        self.on_commit()
