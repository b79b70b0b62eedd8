"""Destinations over the admin API: their state and counts (read), and a profile backfill (write).

A backfill queues one profile push with `backfill: true` per current profile that has an email
or a phone: the vendor's no-trigger mode where it has one (Klaviyo, Mailchimp `is_syncing`; see
docs/destinations/README.md), the fields rendered from the profile when each push is sent. It is
idempotent per run: the same `run` queues nothing twice, and a profile whose backfill push is
still pending is not queued again by another run.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from tidings.api.admin import errors
from tidings.api.auth import require
from tidings.config import Settings
from tidings.delivery import outbox
from tidings.delivery.effects import UPSERT_CONTACT
from tidings.destinations.registry import destination_class

router = APIRouter(prefix="/api/v1", tags=["destinations"])

STATUSES = (outbox.PENDING, outbox.IN_FLIGHT, outbox.DELIVERED, outbox.DEAD)
BATCH = 500  # profiles per transaction: short ones, so ingest and delivery keep going
RUN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DestinationOut(BaseModel):
    name: str
    kind: str
    actions: list[str] = Field(description="what the destination can do")
    profile_sync: bool = Field(description="whether profile changes are pushed to it")
    paused_until: datetime | None = Field(description="set while the destination is paused")
    paused_reason: str | None = Field(description="why it is paused (set while it is)")
    consecutive_failures: int
    deliveries: dict[str, int] = Field(description="by status: pending, in_flight, delivered, dead")


class BackfillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str | None = Field(
        None,
        pattern=RUN_PATTERN,
        description="names the backfill: repeating a run queues nothing twice; omitted, a new one",
    )


class BackfillOut(BaseModel):
    destination: str
    run: str
    profiles: int = Field(description="profiles looked at: current ones with an email or phone")
    queued: int = Field(description="pushes queued now (the rest were already queued)")


def destinations_document(conn: Connection, settings: Settings, now: datetime) -> list[DestinationOut]:
    states = outbox.destination_states(conn)
    counts = outbox.counts(conn)
    out = []
    for name, cfg in settings.destinations.items():
        state = states.get(name)
        paused = state is not None and state.paused_until is not None and state.paused_until > now
        by_status = counts.get(name, {})
        out.append(
            DestinationOut(
                name=name,
                kind=cfg.kind,
                actions=sorted(destination_class(cfg.kind).actions),
                profile_sync=cfg.profile_sync is not None,
                paused_until=state.paused_until if paused and state is not None else None,
                paused_reason=state.paused_reason if paused and state is not None else None,
                consecutive_failures=state.consecutive_failures if state is not None else 0,
                deliveries={s: by_status.get(s, 0) for s in STATUSES},
            )
        )
    return out


def backfill_refusal(settings: Settings, name: str) -> tuple[int, str] | None:
    """Why `name` cannot be backfilled (status, detail), or None."""
    cfg = settings.destinations.get(name)
    if cfg is None:
        known = ", ".join(sorted(settings.destinations)) or "none"
        return 404, f"no destination named {name!r} (configured: {known})"
    if UPSERT_CONTACT not in destination_class(cfg.kind).actions:
        return 400, f"destination {name!r} ({cfg.kind}) does not keep contacts: it has no {UPSERT_CONTACT}"
    if cfg.profile_sync is None:
        return 400, (f"destination {name!r} has no profile_sync: add profile_sync.fields to say what to push")
    return None


def new_run() -> str:
    return uuid.uuid4().hex[:16]


@router.get(
    "/destinations",
    response_model=list[DestinationOut],
    summary="Every destination: kind, whether it is paused and why, deliveries by status",
    responses=errors("read"),
)
async def list_destinations(
    request: Request, _: Annotated[str, Depends(require("read"))]
) -> list[DestinationOut]:
    tidings = request.app.state.tidings
    now = tidings.clock.now()
    found: list[DestinationOut] = await tidings.store.read(
        lambda conn: destinations_document(conn, tidings.settings, now)
    )
    return found


@router.post(
    "/destinations/{name}/backfill",
    response_model=BackfillOut,
    summary="Push every current profile to a destination, in the vendor's no-trigger mode",
    responses=errors(
        "write",
        e404="no destination with this name",
    ),
)
async def backfill(
    request: Request,
    name: Annotated[str, Path(description="a destination under destinations: in tidings.yaml")],
    _: Annotated[str, Depends(require("write"))],
    body: BackfillRequest | None = None,
) -> BackfillOut:
    tidings = request.app.state.tidings
    refusal = backfill_refusal(tidings.settings, name)
    if refusal is not None:
        raise HTTPException(*refusal)
    run = (body.run if body is not None else None) or new_run()
    now = tidings.clock.now()
    profiles = queued = 0
    after: int | None = 0
    while after is not None:
        batch = await tidings.store.write(partial(_batch, destination=name, run=run, now=now, after_id=after))
        profiles += batch.scanned
        queued += batch.queued
        after = batch.last_id
        if batch.queued:
            tidings.dispatcher.wake()
    return BackfillOut(destination=name, run=run, profiles=profiles, queued=queued)


def _batch(conn: Connection, **kwargs: Any) -> outbox.BackfillBatch:
    return outbox.enqueue_backfill(conn, limit=BATCH, **kwargs)
