"""The admin API under /api/v1 (bearer token)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from tidings.api import profiles
from tidings.api.auth import require
from tidings.delivery import outbox
from tidings.store.inbox import InboxEntry, list_entries

router = APIRouter(prefix="/api/v1", tags=["admin"])


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
    responses={401: {"description": "no or wrong token"}, 403: {"description": "token lacks read"}},
)
async def list_events(
    request: Request,
    _: Annotated[str, Depends(require("read"))],
    source: str | None = None,
    status: Literal["pending", "flagged", "processed", "failed"] | None = None,
    before_id: Annotated[int | None, Query(ge=1, description="page: events older than this id")] = None,
    after_id: Annotated[
        int | None, Query(ge=0, description="tail: events newer than this id, oldest first")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    include_payload: bool = False,
) -> EventPage:
    entries = await request.app.state.tidings.store.read(
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
    more = len(entries) == limit and after_id is None
    return EventPage(events=[_out(e) for e in entries], next_before_id=entries[-1].id if more else None)


# GET /api/v1/profiles/{ref} and /api/v1/profiles/{ref}/timeline
router.include_router(profiles.router)


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


class RetryRequest(BaseModel):
    ids: list[int] | None = None  # None: every dead letter


class RetryResult(BaseModel):
    queued: int


@router.get("/deliveries", response_model=list[DeliveryOut], summary="Deliveries, newest first")
async def list_deliveries(
    request: Request,
    _: Annotated[str, Depends(require("read"))],
    status: Literal["pending", "in_flight", "delivered", "dead"] | None = None,
    destination: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeliveryOut]:
    rows = await request.app.state.tidings.store.read(
        lambda conn: outbox.list_deliveries(conn, status=status, destination=destination, limit=limit)
    )
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


@router.post("/deliveries/retry", response_model=RetryResult, summary="Send dead letters again")
async def retry_deliveries(
    request: Request, body: RetryRequest, _: Annotated[str, Depends(require("write"))]
) -> RetryResult:
    tidings = request.app.state.tidings
    queued = await tidings.store.write(lambda conn: outbox.retry_dead(conn, tidings.clock.now(), body.ids))
    tidings.dispatcher.wake()
    return RetryResult(queued=queued)
