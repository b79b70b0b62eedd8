"""The stage loop acts on a wake-up at once, busy or not: a webhook's way through the stages is a
chain of wake-ups, and any wait at one of them is latency for every webhook (at 100 webhooks/s a
5 ms linger of the processor's was most of the median)."""

from __future__ import annotations

import asyncio
import time

from tidings.loop import Loop

AT_ONCE = 0.2  # wide, so that a slow machine cannot blur "at once" and "lingered"


class Recorder(Loop):
    name = "recorder"
    poll = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[float] = []
        self.ran = asyncio.Event()

    async def run_once(self) -> int:
        self.rounds.append(time.monotonic())
        self.ran.set()
        return 0


async def _woken(loop: Recorder) -> float:
    """Wake the loop; how long until its round ran."""
    loop.ran.clear()
    woke = time.monotonic()
    loop.wake()
    await asyncio.wait_for(loop.ran.wait(), 10)
    return loop.rounds[-1] - woke


async def test_every_wake_up_is_acted_on_at_once_even_in_quick_succession() -> None:
    loop = Recorder()
    loop.start()
    try:
        await asyncio.wait_for(loop.ran.wait(), 10)  # the first round
        waits = [await _woken(loop) for _ in range(5)]  # each right after the last round: busy
        assert max(waits) < AT_ONCE, waits
    finally:
        await loop.stop()
