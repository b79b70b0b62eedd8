"""One clock for all of tidings, so tests and simulations can run on virtual time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)

    def set(self, when: datetime) -> None:
        self._now = when


class ScaledClock:
    """Virtual time running `speed` times faster than real time from `start` (the demo's clock).

    Unlike FakeClock it moves by itself, so the real background loops run on it; whatever sleeps
    until a virtual instant must sleep `real_seconds(...)` of real time, or it wakes late.
    """

    def __init__(self, start: datetime | None = None, *, speed: float = 60.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.start = start or datetime.now(UTC)
        self.speed = speed
        self._origin = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._origin) * self.speed)

    def real_seconds(self, virtual: float) -> float:
        """How long `virtual` seconds of this clock take in real time."""
        return virtual / self.speed

    def at_monotonic(self, reading: float) -> datetime:
        """This clock's time when `time.monotonic()` read `reading` (to place what others timed)."""
        return self.start + timedelta(seconds=(reading - self._origin) * self.speed)


def real_seconds(clock: Clock, virtual: float) -> float:
    """Real seconds until `virtual` seconds have passed on `clock` (the same, but on a ScaledClock)."""
    return clock.real_seconds(virtual) if isinstance(clock, ScaledClock) else virtual
