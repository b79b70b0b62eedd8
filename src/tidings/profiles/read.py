"""Reading profiles and timelines (for the admin API, the CLI and tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, String, Text, cast, literal, null, select, union_all

from tidings.events import IdentityError, normalise_identity
from tidings.store.schema import Id, flow_steps, identities, profiles, timeline


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
    merged in one query; at the same instant a flow line comes first, then the later-recorded one."""
    own = select(
        literal(0).label("from_flow"),
        timeline.c.id,
        timeline.c.at,
        timeline.c.kind,
        timeline.c.event_id,
        timeline.c.field,
        timeline.c.old,
        timeline.c.new,
        timeline.c.detail,
        # the journal's own columns, null here
        cast(null(), Id).label("run_id"),
        cast(null(), String).label("step"),
        cast(null(), String).label("step_kind"),
        cast(null(), Text).label("reason"),
        cast(null(), String).label("outcome"),
    ).where(timeline.c.profile_id == pid)
    journal = select(
        literal(1),
        flow_steps.c.id,
        flow_steps.c.at,
        literal("flow"),
        cast(null(), Id),
        flow_steps.c.flow,
        cast(null(), JSON),
        cast(null(), JSON),
        flow_steps.c.detail,
        flow_steps.c.run_id,
        flow_steps.c.step,
        flow_steps.c.kind,
        flow_steps.c.reason,
        flow_steps.c.outcome,
    ).where(flow_steps.c.profile_id == pid)
    lines = union_all(own, journal).subquery()
    stmt = (
        select(lines)
        .order_by(lines.c.at.desc(), lines.c.from_flow.desc(), lines.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_flow_line(r) if r.from_flow else _own_line(r) for r in conn.execute(stmt)]


def _own_line(r: Any) -> TimelineEntry:
    return TimelineEntry(
        id=r.id,
        at=r.at,
        kind=r.kind,
        event_id=r.event_id,
        field=r.field,
        old=r.old,
        new=r.new,
        detail=r.detail,
    )


def _flow_line(r: Any) -> TimelineEntry:
    """A journal line as a timeline entry: field is the flow, new the outcome."""
    detail = {"run_id": r.run_id, "step": r.step, "kind": r.step_kind, "reason": r.reason, **(r.detail or {})}
    return TimelineEntry(
        id=r.id, at=r.at, kind="flow", event_id=None, field=r.field, old=None, new=r.outcome, detail=detail
    )
