"""When to try again: a schedule, with jitter, never sooner than the vendor's Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

# Seconds after the 1st, 2nd, ... failure: about a day and a half in all, then the dead letters.
DEFAULT_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 21600, 43200, 86400)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2  # +-20 %, so a burst of failures does not come back as a burst
    max_retry_after: float = 6 * 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None) -> timedelta | None:
        """The wait before attempt `attempt + 1`, or None when the schedule is spent."""
        if attempt > len(self.schedule):
            return None
        base = self.schedule[attempt - 1] * (1 + self.rng.uniform(-self.jitter, self.jitter))
        if retry_after is not None:
            base = max(base, min(retry_after, self.max_retry_after))
        return timedelta(seconds=base)


@dataclass(frozen=True, slots=True)
class Breaker:
    """After `threshold` failures in a row, the destination is paused, longer each time."""

    threshold: int = 5
    first_pause: float = 30.0
    max_pause: float = 600.0
    auth_pause: float = 300.0  # rejected credentials: try again in 5 minutes (a key may be rotated)

    def pause_for(self, failures: int) -> timedelta | None:
        if failures < self.threshold:
            return None
        return timedelta(seconds=min(self.max_pause, self.first_pause * 2 ** (failures - self.threshold)))
