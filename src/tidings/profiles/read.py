"""Reading profiles and timelines (for the admin API, the CLI and tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from tidings.events import IdentityError, normalise_identity
from tidings.store.schema import flow_steps, identities, profiles, timeline


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileView:
    id: int
    created_at: datetime
    updated_at: datetime
    traits: dict[str, Any]
    consent: dict[str, dict[str, Any]]
    identities: list[str]
    merged_from: list[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    id: int
    at: datetime
    kind: str
    event_id: int | None
    field: str | None
    old: Any
    new: Any
    detail: Any


def resolve(conn: Connection, ref: str) -> int | None:
    """A profile id from `ref`: a numeric id (following merges), an email, or `kind:value`."""
    if ref.isdigit():
        pid: int | None = int(ref)
        seen = set()
        while pid is not None and pid not in seen:
            seen.add(pid)
            row = conn.execute(
                select(profiles.c.id, profiles.c.merged_into).where(profiles.c.id == pid)
            ).first()
            if row is None:
                return None
            if row.merged_into is None:
                return int(row.id)
            pid = row.merged_into
        return None
    if "@" in ref.split(":", 1)[0] or ":" not in ref:
        kind, value = "email", ref
    elif ref.startswith("email:"):
        kind, value = "email", ref[len("email:") :]
    else:  # per-source kinds hold a colon themselves: shopify:customer:123
        kind, _, value = ref.rpartition(":")
    try:
        value = normalise_identity(kind, value)
    except IdentityError:
        return None
    found = conn.execute(
        select(identities.c.profile_id).where(identities.c.kind == kind, identities.c.value == value)
    ).scalar()
    return int(found) if found is not None else None


def load(conn: Connection, pid: int) -> ProfileView | None:
    row = conn.execute(select(profiles).where(profiles.c.id == pid)).first()
    if row is None:
        return None
    ids = conn.execute(
        select(identities.c.kind, identities.c.value)
        .where(identities.c.profile_id == pid)
        .order_by(identities.c.kind, identities.c.value)
    )
    merged = conn.execute(select(profiles.c.id).where(profiles.c.merged_into == pid).order_by(profiles.c.id))
    consent = {
        channel: {k: v for k, v in entry.items() if k != "version"} for channel, entry in row.consent.items()
    }
    return ProfileView(
        id=row.id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        traits=row.traits,
        consent=consent,
        identities=[f"{r.kind}:{r.value}" for r in ids],
        merged_from=list(merged.scalars()),
    )


def load_timeline(conn: Connection, pid: int, *, limit: int = 100, offset: int = 0) -> list[TimelineEntry]:
    """Newest first, by when it happened. The profile's own lines (events, changes, merges) and
    its flow runs' journal (`flow_steps`, read here rather than copied into the timeline) are
    merged; at the same instant a flow line comes first, then the later-recorded line."""
    need = limit + offset
    own = (
        select(timeline)
        .where(timeline.c.profile_id == pid)
        .order_by(timeline.c.at.desc(), timeline.c.id.desc())
        .limit(need)
    )
    journal = (
        select(flow_steps)
        .where(flow_steps.c.profile_id == pid)
        .order_by(flow_steps.c.at.desc(), flow_steps.c.id.desc())
        .limit(need)
    )
    lines = [
        (
            False,
            TimelineEntry(
                id=r.id,
                at=r.at,
                kind=r.kind,
                event_id=r.event_id,
                field=r.field,
                old=r.old,
                new=r.new,
                detail=r.detail,
            ),
        )
        for r in conn.execute(own)
    ]
    lines += [(True, _flow_line(r)) for r in conn.execute(journal)]
    lines.sort(key=lambda line: (line[1].at, line[0], line[1].id), reverse=True)
    return [entry for _, entry in lines[offset:need]]


def _flow_line(r: Any) -> TimelineEntry:
    """A journal line as a timeline entry: field is the flow, new the outcome."""
    detail = {"run_id": r.run_id, "step": r.step, "kind": r.kind, "reason": r.reason, **(r.detail or {})}
    return TimelineEntry(
        id=r.id, at=r.at, kind="flow", event_id=None, field=r.flow, old=None, new=r.outcome, detail=detail
    )
