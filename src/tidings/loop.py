"""The background loop every stage runs: work while there is work, then wait for a wake-up.

A wake-up (new work committed in this process) is the fast path; polling every `poll` seconds is
the safety net (work committed by another process). Stopping never cuts a round short: the round
under way finishes, so no transaction is abandoned halfway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod


class Loop(ABC):
    name: str = "tidings-loop"
    poll: float = 1.0  # seconds between looks when nobody wakes us
    batch_size: int = 100

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._log = logging.getLogger(f"tidings.{self.name}")

    @abstractmethod
    async def run_once(self) -> int:
        """Do one round of work; return how much was done (a full batch means: go again now)."""

    def wake(self) -> None:
        """New work is there: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"tidings-{self.name}")

    async def stop(self) -> None:
        """Finish the round under way, then return."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                done = await self.run_once()
            except Exception:
                self._log.exception(
                    f"{self.name} round failed; retrying", extra={"action": f"{self.name}_failed"}
                )
                done = 0
            if done < self.batch_size and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await self._wake.wait()
