"""The admin API under /api/v1 (bearer token): what arrived, profiles, deliveries and dead letters.

Each refusal is the JSON error of `tidings.api.errors`, documented per route with `errors()`.
The documents built here are also what the CLI prints with `--json`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from tidings.api import profiles
from tidings.api.auth import require
from tidings.api.profiles import ErrorOut
from tidings.delivery import outbox
from tidings.store.inbox import InboxEntry, list_entries

router = APIRouter(prefix="/api/v1", tags=["admin"])

_WHY = {
    400: "bad input: the parameter or body field at fault is named in `detail`",
    401: "no bearer token, or not a valid one",
    404: "not found",
    409: "conflict with the current state",
}


def errors(scope: str, **more: str) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route needing `scope`, plus any of `e404=...`, `e409=...`."""
    out: dict[int | str, dict[str, Any]] = {
        400: {"description": _WHY[400], "model": ErrorOut},
        401: {"description": _WHY[401], "model": ErrorOut},
        403: {"description": f"the token lacks the {scope!r} scope", "model": ErrorOut},
        # Bad input is 400, never FastAPI's 422; a range here keeps 422 out of the description.
        "4XX": {"description": "any other refusal (e.g. 405)", "model": ErrorOut},
    }
    for key, description in more.items():
        out[int(key.removeprefix("e"))] = {"description": description, "model": ErrorOut}
    return out


def configured_or_seen(name: str, configured: Sequence[str], what: str, seen: bool) -> None:
    """A filter naming something never configured and never seen is a typo: say so."""
    if name not in configured and not seen:
        known = ", ".join(sorted(configured)) or "none"
        raise HTTPException(400, f"no {what} named {name!r} (configured: {known}), and none stored")


# ------------------------------------------------------------------ events


class EventOut(BaseModel):
    id: int
    source: str
    topic: str | None
    dedupe_key: str
    received_at: datetime
    status: str
    error: str | None
    size: int
    headers: dict[str, str]
    payload_base64: str | None = None


class EventPage(BaseModel):
    events: list[EventOut]
    next_before_id: int | None


def _out(entry: InboxEntry) -> EventOut:
    return EventOut(
        id=entry.id,
        source=entry.source,
        topic=entry.topic,
        dedupe_key=entry.dedupe_key,
        received_at=entry.received_at,
        status=entry.status,
        error=entry.error,
        size=entry.size,
        headers=entry.headers,
        payload_base64=base64.b64encode(entry.payload).decode() if entry.payload is not None else None,
    )


@router.get(
    "/events",
    response_model=EventPage,
    summary="What arrived, newest first",
    responses=errors("read"),
)
async def list_events(
    request: Request,
    _: Annotated[str, Depends(require("read"))],
    source: Annotated[str | None, Query(description="only this source")] = None,
    status: Literal["pending", "flagged", "processed", "failed"] | None = None,
    before_id: Annotated[int | None, Query(ge=1, description="page: events older than this id")] = None,
    after_id: Annotated[
        int | None, Query(ge=0, description="tail: events newer than this id, oldest first")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    include_payload: bool = False,
) -> EventPage:
    if before_id is not None and after_id is not None and after_id >= before_id - 1:
        raise HTTPException(400, f"after_id ({after_id}) must be below before_id - 1 ({before_id - 1})")
    tidings = request.app.state.tidings
    entries = await tidings.store.read(
        lambda conn: list_entries(
            conn,
            source=source,
            status=status,
            before_id=before_id,
            after_id=after_id,
            limit=limit,
            with_payload=include_payload,
        )
    )
    if source is not None and not entries:
        seen = await tidings.store.read(lambda conn: bool(list_entries(conn, source=source, limit=1)))
        configured_or_seen(source, list(tidings.settings.sources), "source", seen)
    more = len(entries) == limit and after_id is None
    return EventPage(events=[_out(e) for e in entries], next_before_id=entries[-1].id if more else None)


# GET /api/v1/profiles/{ref} and /api/v1/profiles/{ref}/timeline
router.include_router(
    profiles.router,
    responses={
        400: {"description": _WHY[400], "model": ErrorOut},
        "4XX": {"description": "any other refusal (e.g. 405)", "model": ErrorOut},
    },
)


# ------------------------------------------------------------------ deliveries


class DeliveryOut(BaseModel):
    id: int
    destination: str
    action: str
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    error: str | None


class AttemptOut(BaseModel):
    at: datetime
    request: dict[str, Any] = Field(description="a summary of what was asked (never credentials or bodies)")
    status_code: int | None = Field(description="the vendor's HTTP status; null if no answer came")
    latency_ms: int | None
    outcome: str = Field(description="delivered, retry, dead or paused")
    error: str | None


class DeliveryDetailOut(BaseModel):
    id: int
    destination: str
    action: str
    status: str = Field(description="pending, in_flight, delivered or dead")
    attempts: int = Field(description="attempts counted since it was last queued (a retry starts at 0)")
    idempotency_key: str
    profile_id: int | None
    payload: dict[str, Any] = Field(
        description="as stored; a profile push names the profile and is rendered when sent"
    )
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime
    lease_until: datetime | None
    delivered_at: datetime | None
    remote_id: str | None = Field(description="the vendor's id for what was made, when it gives one")
    error: str | None
    history: list[AttemptOut] = Field(description="every attempt, oldest first")


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo (`id`) must not mean "every dead letter"

    ids: (
        Annotated[
            list[Annotated[int, Field(ge=1)]],
            Field(min_length=1, max_length=10_000),
        ]
        | None
    ) = Field(None, description="dead deliveries to send again; omit for every dead letter")


class RetryResult(BaseModel):
    queued: int


def delivery_document(conn: Connection, delivery_id: int) -> DeliveryDetailOut | None:
    found = outbox.get_delivery(conn, delivery_id)
    if found is None:
        return None
    return DeliveryDetailOut(
        id=found.id,
        destination=found.destination,
        action=found.action,
        status=found.status,
        attempts=found.attempts,
        idempotency_key=found.idempotency_key,
        profile_id=found.profile_id,
        payload=found.payload,
        created_at=found.created_at,
        updated_at=found.updated_at,
        next_attempt_at=found.next_attempt_at,
        lease_until=found.lease_until,
        delivered_at=found.delivered_at,
        remote_id=found.remote_id,
        error=found.last_error,
        history=[
            AttemptOut(
                at=a.at,
                request=a.request,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                outcome=a.outcome,
                error=a.error,
            )
            for a in found.history
        ],
    )


def retry_refusal(ids: Sequence[int], found: Mapping[int, str]) -> tuple[int, str] | None:
    """Why these ids cannot all be retried (status, detail), or None: unknown ids first."""
    unknown = [i for i in dict.fromkeys(ids) if i not in found]
    if unknown:
        return 404, "no delivery with id " + ", ".join(map(str, unknown))
    alive = [f"{i} is {found[i]}" for i in dict.fromkeys(ids) if found[i] != outbox.DEAD]
    if alive:
        return 409, "only dead letters are retried: delivery " + ", ".join(alive)
    return None


@router.get(
    "/deliveries",
    response_model=list[DeliveryOut],
    summary="Deliveries, newest first",
    responses=errors("read"),
)
async def list_deliveries(
    request: Request,
    _: Annotated[str, Depends(require("read"))],
    status: Literal["pending", "in_flight", "delivered", "dead"] | None = None,
    destination: Annotated[str | None, Query(description="only this destination")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeliveryOut]:
    tidings = request.app.state.tidings
    rows = await tidings.store.read(
        lambda conn: outbox.list_deliveries(conn, status=status, destination=destination, limit=limit)
    )
    if destination is not None and not rows:
        seen = await tidings.store.read(lambda conn: outbox.has_deliveries(conn, destination))
        configured_or_seen(destination, list(tidings.settings.destinations), "destination", seen)
    return [
        DeliveryOut(
            id=r.id,
            destination=r.destination,
            action=r.action,
            status=r.status,
            attempts=r.attempts,
            created_at=r.created_at,
            updated_at=r.updated_at,
            delivered_at=r.delivered_at,
            error=r.last_error,
        )
        for r in rows
    ]


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetailOut,
    summary="One delivery: its payload and every attempt (status, latency, error)",
    responses=errors("read", e404="no delivery with this id"),
)
async def get_delivery(
    request: Request,
    delivery_id: Annotated[int, Path(ge=1, description="the delivery's id")],
    _: Annotated[str, Depends(require("read"))],
) -> DeliveryDetailOut:
    document: DeliveryDetailOut | None = await request.app.state.tidings.store.read(
        lambda conn: delivery_document(conn, delivery_id)
    )
    if document is None:
        raise HTTPException(404, f"no delivery with id {delivery_id}")
    return document


@router.post(
    "/deliveries/retry",
    response_model=RetryResult,
    summary="Send dead letters again (these ids, or all of them)",
    responses=errors(
        "write",
        e404="an id names no delivery (nothing was retried)",
        e409="an id names a delivery that is not dead (nothing was retried)",
    ),
)
async def retry_deliveries(
    request: Request, body: RetryRequest, _: Annotated[str, Depends(require("write"))]
) -> RetryResult:
    tidings = request.app.state.tidings
    now = tidings.clock.now()
    ids = body.ids

    def retry(conn: Connection) -> int:
        if ids is not None:
            refusal = retry_refusal(ids, outbox.statuses(conn, ids))
            if refusal is not None:
                raise HTTPException(*refusal)  # raised inside: nothing is retried
        return outbox.retry_dead(conn, now, ids)

    queued = await tidings.store.write(retry)
    tidings.dispatcher.wake()
    return RetryResult(queued=queued)
