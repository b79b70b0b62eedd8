"""Local time for flows: the customer's time zone, quiet hours, "at 09:00 their time"."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@functools.lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like Europe/Paris)") from exc


def customer_zone(traits: dict[str, object], default: str) -> ZoneInfo:
    """The profile's `timezone` trait when it names a real zone, else the default."""
    name = traits.get("timezone")
    if isinstance(name, str) and name:
        try:
            return zone(name)
        except ValueError:
            pass
    return zone(default)


def next_local(after: datetime, at: time, tz: ZoneInfo) -> datetime:
    """The first instant at or after `after` when the wall clock in `tz` reads `at` (in UTC).

    A wall time skipped by a DST change (02:30 on a spring-forward night) is taken as the
    instant the clocks jumped to.
    """
    local = after.astimezone(tz)
    for days in range(3):
        day = (local + timedelta(days=days)).date()
        candidate = datetime.combine(day, at, tzinfo=tz)
        # Round-trip through UTC normalises a nonexistent wall time forward.
        instant = candidate.astimezone(UTC)
        if instant >= after.astimezone(UTC):
            return instant
    raise AssertionError("unreachable: a time of day recurs within three days")


def quiet_until(now: datetime, start: time, end: time, tz: ZoneInfo) -> datetime | None:
    """When quiet hours end, if `now` falls in them (in `tz`); None if sending is fine now.

    The span may cross midnight (21:00 to 08:00).
    """
    wall = now.astimezone(tz).time()
    inside = start <= wall < end if start <= end else (wall >= start or wall < end)
    if start == end or not inside:
        return None
    return next_local(now, end, tz)
