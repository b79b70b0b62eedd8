"""A destination's budget: at most N requests at once and at most M per window, before sending.

`Limiter` keeps the budget in this process, with no database cost: what one process needs, and
what the dispatcher uses on SQLite (one process). Workers sharing a PostgreSQL database share the
budget instead (`budget.SharedBudget`, same `async with ....slot():`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from tidings.destinations.base import Limits

# The vendor counts requests when they arrive, tidings when it starts them: connection setup and
# a busy event loop move arrivals by tens of milliseconds. So each window is kept a little longer
# than the vendor's, and the shortest (burst) window's budget is spread evenly, not spent at once.
MARGIN = 1.05


class Slots(Protocol):
    """What sending needs of a budget: `async with budget.slot():` around each request."""

    def slot(self) -> AbstractAsyncContextManager[None]: ...


class Limiter:
    """Concurrency (a semaphore) and sliding windows (timestamps of recent starts), in this process."""

    def __init__(self, limits: Limits, monotonic: Callable[[], float] | None = None) -> None:
        self._semaphore = asyncio.Semaphore(limits.concurrency) if limits.concurrency else None
        self._windows = [(w.requests, w.per.total_seconds() * MARGIN, deque[float]()) for w in limits.windows]
        self._lock = asyncio.Lock()
        self._now = monotonic or time.monotonic

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._semaphore is not None:
            await self._semaphore.acquire()
        try:
            await self._wait_for_window()
            yield
        finally:
            if self._semaphore is not None:
                self._semaphore.release()

    async def _wait_for_window(self) -> None:
        async with self._lock:  # starts are taken in order, so the windows stay exact
            while True:
                now = self._now()
                wait = 0.0
                for index, (requests, seconds, starts) in enumerate(self._windows):
                    while starts and starts[0] <= now - seconds:
                        starts.popleft()
                    if len(starts) >= requests:
                        wait = max(wait, starts[0] + seconds - now)
                    elif starts and index == 0:  # the burst window is spent evenly, not all at once
                        wait = max(wait, starts[-1] + seconds / requests - now)
                if wait <= 0:
                    for _, _, starts in self._windows:
                        starts.append(now)
                    return
                await asyncio.sleep(wait)
