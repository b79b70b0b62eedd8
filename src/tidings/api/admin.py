"""The admin API under /api/v1 (bearer token)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from tidings.api import profiles
from tidings.api.auth import require
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
