"""The stage loop lingers after a wake-up only while work keeps coming."""

from __future__ import annotations

import asyncio
import time

from tidings.loop import Loop

LINGER = 0.4  # wide, so that a slow machine cannot blur "lingered" and "did not"


class Recorder(Loop):
    name = "recorder"
    linger = LINGER
    busy_lingers = 0.25  # busy: woken within 0.1 s of the last round
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


async def test_a_wake_up_after_a_quiet_spell_is_acted_on_at_once_and_one_while_busy_lingers() -> None:
    loop = Recorder()
    loop.start()
    try:
        await asyncio.wait_for(loop.ran.wait(), 10)  # the first round
        await asyncio.sleep(0.3)  # quiet: longer than the loop counts as busy
        assert await _woken(loop) < LINGER / 2
        assert await _woken(loop) >= LINGER  # woken again at once: busy, so it lingers
    finally:
        await loop.stop()
