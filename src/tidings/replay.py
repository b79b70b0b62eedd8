"""Re-applying stored raw events, typically after a mapping fix (`tidings replay --since 2h`).

Replaying marks the chosen inbox rows pending again and runs the ordinary processing stage over
them, so a replayed event goes through exactly the code a new one does. It is idempotent: an
event's row in the event log is keyed by its inbox id and every profile write is a merge by
version, so replaying the same events twice leaves the profile as once.

Which rows: those received in [since, until) (optionally from one source) that were processed,
unmapped or failed. Flagged rows (authentic but not interpretable at all) are left alone: no
mapping can read them. Rows still pending are simply processed along the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, select, update

from tidings.app import Tidings
from tidings.configmodel import parse_duration
from tidings.store.schema import inbox

REPLAYABLE = ("processed", "unmapped", "failed")
SETTLED = REPLAYABLE
STALL_PAUSE_SECONDS = 0.1  # another process holds the rows we wait for (PostgreSQL): let it finish


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time from ISO 8601 (`2026-03-01T10:00:00Z`; no offset means UTC) or a duration
    back from `now` (`90s`, `30m`, `2h`, `7d`, `1w`)."""
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    if not value.isdigit():  # a bare number would be ambiguous: seconds ago, or a unix time?
        try:
            delta = parse_duration(value)
        except ValueError:
            pass
        else:
            assert isinstance(delta, timedelta)
            return now - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 such as 2026-03-01T10:00:00Z, "
            "or a duration back from now such as 2h or 7d)"
        ) from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Selection:
    """The inbox rows a replay covers: received in [since, until), from `source` if given."""

    since: datetime
    until: datetime | None = None
    source: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        out = [inbox.c.received_at >= self.since]
        if self.until is not None:
            out.append(inbox.c.received_at < self.until)
        if self.source is not None:
            out.append(inbox.c.source == self.source)
        return out


@dataclass(frozen=True, slots=True)
class Summary:
    """How the replayed rows stand afterwards."""

    replayed: int = 0
    processed: int = 0
    unmapped: int = 0
    failed: int = 0
    pending: int = 0  # still pending: only when the replay was cut short
    # the most common reasons rows are still failed or unmapped, with their counts
    reasons: list[tuple[str, str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "processed": self.processed,
            "unmapped": self.unmapped,
            "failed": self.failed,
            "pending": self.pending,
            "reasons": [{"status": s, "error": e, "count": n} for s, e, n in self.reasons],
        }


# ------------------------------------------------------------------ store steps (one transaction each)


def count_replayable(conn: Connection, selection: Selection) -> dict[str, int]:
    """How many rows a replay would take, by their current status (for the confirmation)."""
    rows = conn.execute(
        select(inbox.c.status, func.count())
        .where(*selection.clauses(), inbox.c.status.in_(REPLAYABLE))
        .group_by(inbox.c.status)
    ).all()
    return {str(status): int(n) for status, n in rows}


def mark_pending(conn: Connection, selection: Selection) -> tuple[int, int | None]:
    """Mark the selected rows pending again; return (rows now waiting in the selection, last id).

    The last id bounds the replay: rows that arrive while it runs are not counted as its own.
    """
    last_id = conn.execute(
        select(func.max(inbox.c.id)).where(*selection.clauses(), inbox.c.status.in_(REPLAYABLE))
    ).scalar()
    if last_id is None:
        return 0, None
    conn.execute(
        update(inbox)
        .where(*selection.clauses(), inbox.c.status.in_(REPLAYABLE), inbox.c.id <= last_id)
        .values(status="pending", error=None)
    )
    return waiting(conn, selection, last_id), int(last_id)


def waiting(conn: Connection, selection: Selection, last_id: int) -> int:
    """Rows of the replay not yet processed again."""
    return int(
        conn.execute(
            select(func.count()).where(
                *selection.clauses(), inbox.c.id <= last_id, inbox.c.status == "pending"
            )
        ).scalar_one()
    )


def summarise(conn: Connection, selection: Selection, last_id: int, replayed: int) -> Summary:
    scope = and_(*selection.clauses(), inbox.c.id <= last_id)
    counts = {
        str(status): int(n)
        for status, n in conn.execute(
            select(inbox.c.status, func.count())
            .where(scope, inbox.c.status.in_((*SETTLED, "pending")))
            .group_by(inbox.c.status)
        )
    }
    reasons = conn.execute(
        select(inbox.c.status, inbox.c.error, func.count().label("n"))
        .where(scope, inbox.c.status.in_(("failed", "unmapped")))
        .group_by(inbox.c.status, inbox.c.error)
        .order_by(func.count().desc(), inbox.c.status, inbox.c.error)
        .limit(5)
    ).all()
    return Summary(
        replayed=replayed,
        processed=counts.get("processed", 0),
        unmapped=counts.get("unmapped", 0),
        failed=counts.get("failed", 0),
        pending=counts.get("pending", 0),
        reasons=[(str(r.status), str(r.error or ""), int(r.n)) for r in reasons],
    )


# ------------------------------------------------------------------ the whole replay

Progress = Callable[[int, int], None]  # (done, total)


async def replay(tidings: Tidings, selection: Selection, *, progress: Progress | None = None) -> Summary:
    """Mark the selection pending and process it here with `tidings.processor` until it is done.

    `tidings` should be started with `process=False` (its own loop would race this one for the
    rows, harmlessly but confusing the progress). Another tidings process running on the same
    PostgreSQL store may take some of the rows: they are waited for, not processed twice.
    """
    total, last_id = await tidings.store.write(partial(mark_pending, selection=selection))
    if last_id is None:
        if progress is not None:
            progress(0, 0)
        return Summary()
    left = total
    while True:
        if progress is not None:
            progress(total - left, total)
        if left == 0:
            break
        applied = await tidings.processor.run_once()
        now_left = await tidings.store.read(partial(waiting, selection=selection, last_id=last_id))
        if applied == 0 and now_left >= left:
            await asyncio.sleep(STALL_PAUSE_SECONDS)
        left = now_left
    return await tidings.store.read(partial(summarise, selection=selection, last_id=last_id, replayed=total))
