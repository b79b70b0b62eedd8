"""Profiles over the admin API: GET /api/v1/profiles/{ref} and its timeline (bearer token, read).

`ref` is a profile id (a merged profile's id answers with the profile it was merged into), an
email address, or `kind:value` for any identity (`user_id:u1`, `shopify:customer:123`). The
documents built here are also what `tidings profile show|timeline --json` prints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Connection, select

from tidings.api.auth import require
from tidings.profiles.read import load, load_timeline, resolve
from tidings.store.schema import events, identities

router = APIRouter()

REF = Path(
    description="A profile id, an email address, or kind:value for any identity "
    "(user_id:u1, phone:+14155550100, shopify:customer:123)",
    examples=["ann@example.com", "42", "shopify:customer:123"],
)


class ErrorOut(BaseModel):
    error: str
    detail: str


class IdentityOut(BaseModel):
    kind: str = Field(description="email, phone, user_id, anonymous_id, or a per-source kind")
    value: str


class ConsentOut(BaseModel):
    state: Literal["subscribed", "unsubscribed", "unknown"]
    at: datetime | None = Field(None, description="when the latest change happened (the event's time)")
    source: str | None = Field(None, description="the source whose event made the latest change")


class ProfileOut(BaseModel):
    id: int
    identities: list[IdentityOut]
    traits: dict[str, Any]
    consent: dict[str, ConsentOut] = Field(description="per channel, e.g. email")
    created_at: datetime
    updated_at: datetime
    merged_from: list[int] = Field(description="ids of the profiles merged into this one")
    redirected_from: int | None = Field(
        None, description="the id asked for, when that profile has been merged into this one"
    )


class TimelineEntryOut(BaseModel):
    id: int = Field(description="the line's id; for kind flow, its line in the run's journal")
    at: datetime = Field(description="when it happened: the causing event's occurred_at")
    kind: str = Field(description="event, trait, consent, merge or flow")
    event_id: int | None = Field(None, description="the event that caused it (events and changes)")
    name: str | None = Field(None, description="that event's name")
    source: str | None = Field(None, description="that event's source")
    field: str | None = Field(None, description="the trait, or the consent channel, that changed")
    old: Any = None
    new: Any = None
    merged_profile: int | None = Field(None, description="merge: the profile folded into this one")
    identities: list[str] | None = Field(None, description="merge: the identities it brought")
    flow_step: FlowStepOut | None = Field(
        None, description="flow: what a run did (field: the flow; new: the outcome) and why"
    )


class FlowStepOut(BaseModel):
    run_id: int
    step: str
    kind: str = Field(description="trigger, wait, wait_for, branch, send, update_profile, exit or end")
    reason: str | None = None
    destination: str | None = None
    action: str | None = None


class TimelinePage(BaseModel):
    profile_id: int
    redirected_from: int | None = None
    entries: list[TimelineEntryOut] = Field(description="newest first")
    next_offset: int | None = Field(description="the offset of the next page; null on the last")


# ------------------------------------------------------------------ building the documents


def find(conn: Connection, ref: str) -> tuple[int, int | None] | None:
    """(the profile's id, the merged id asked for if it was redirected), or None if unknown."""
    pid = resolve(conn, ref.strip())
    if pid is None:
        return None
    asked = int(ref) if ref.strip().isdigit() else None
    return pid, asked if asked is not None and asked != pid else None


def profile_document(conn: Connection, ref: str) -> ProfileOut | None:
    found = find(conn, ref)
    view = load(conn, found[0]) if found is not None else None
    if found is None or view is None:
        return None
    ids = conn.execute(
        select(identities.c.kind, identities.c.value)
        .where(identities.c.profile_id == view.id)
        .order_by(identities.c.kind, identities.c.value)
    )
    return ProfileOut(
        id=view.id,
        identities=[IdentityOut(kind=r.kind, value=r.value) for r in ids],
        traits=view.traits,
        consent={
            channel: ConsentOut(
                state=entry.get("state", "unknown"), at=entry.get("at"), source=entry.get("source")
            )
            for channel, entry in view.consent.items()
        },
        created_at=view.created_at,
        updated_at=view.updated_at,
        merged_from=view.merged_from,
        redirected_from=found[1],
    )


def timeline_document(conn: Connection, ref: str, *, limit: int = 50, offset: int = 0) -> TimelinePage | None:
    found = find(conn, ref)
    if found is None:
        return None
    pid, redirected = found
    rows = load_timeline(conn, pid, limit=limit, offset=offset)
    causes = {r.event_id for r in rows if r.event_id is not None}
    named = {
        e.id: (e.name, e.source)
        for e in conn.execute(
            select(events.c.id, events.c.name, events.c.source).where(events.c.id.in_(causes))
        )
    }
    entries = []
    for r in rows:
        detail = r.detail if isinstance(r.detail, dict) else {}
        name, source = named.get(r.event_id or -1, (detail.get("name"), detail.get("source")))
        merged = detail.get("merged_profile") if r.kind == "merge" else None
        entries.append(
            TimelineEntryOut(
                id=r.id,
                at=r.at,
                kind=r.kind,
                event_id=r.event_id,
                name=name,
                source=source,
                field=r.field,
                old=r.old,
                new=r.new,
                merged_profile=merged,
                identities=detail.get("identities") if r.kind == "merge" else None,
                flow_step=_flow_step(detail) if r.kind == "flow" else None,
            )
        )
    return TimelinePage(
        profile_id=pid,
        redirected_from=redirected,
        entries=entries,
        next_offset=offset + limit if len(rows) == limit else None,
    )


def _flow_step(detail: dict[str, Any]) -> FlowStepOut:
    return FlowStepOut(
        run_id=detail.get("run_id", 0),
        step=str(detail.get("step", "")),
        kind=str(detail.get("kind", "")),
        reason=detail.get("reason"),
        destination=detail.get("destination"),
        action=detail.get("action"),
    )


# ------------------------------------------------------------------ routes

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or wrong token", "model": ErrorOut},
    403: {"description": "token lacks read", "model": ErrorOut},
    404: {"description": "no profile matches ref", "model": ErrorOut},
}


def _not_found(ref: str) -> HTTPException:
    return HTTPException(404, f"no profile matches {ref!r}")


@router.get(
    "/profiles/{ref}",
    response_model=ProfileOut,
    summary="A customer profile: identities, traits, consent",
    responses=RESPONSES,
)
async def get_profile(
    request: Request,
    ref: Annotated[str, REF],
    _: Annotated[str, Depends(require("read"))],
) -> ProfileOut:
    document: ProfileOut | None = await request.app.state.tidings.store.read(
        lambda conn: profile_document(conn, ref)
    )
    if document is None:
        raise _not_found(ref)
    return document


@router.get(
    "/profiles/{ref}/timeline",
    response_model=TimelinePage,
    summary="What happened to a customer, newest first",
    responses=RESPONSES,
)
async def get_timeline(
    request: Request,
    ref: Annotated[str, REF],
    _: Annotated[str, Depends(require("read"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TimelinePage:
    page: TimelinePage | None = await request.app.state.tidings.store.read(
        lambda conn: timeline_document(conn, ref, limit=limit, offset=offset)
    )
    if page is None:
        raise _not_found(ref)
    return page
