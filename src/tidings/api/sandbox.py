"""Sandbox mode over the admin API: what the simulators standing in for the destinations received."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from tidings.api.auth import require
from tidings.sandbox import SandboxError, recorded

router = APIRouter(prefix="/api/v1", tags=["sandbox"])


class SandboxRequestOut(BaseModel):
    id: int
    destination: str = Field(description="the destination's name in tidings.yaml")
    kind: str = Field(description="klaviyo, mailchimp, mailchimp-transactional, sendgrid, ..., smtp")
    method: str = Field(description="the HTTP method; SMTP for a mail")
    path: str = Field(description="the path with its query string; DATA for a mail")
    body: Any = Field(description="JSON as sent, form fields as an object, else text; credentials masked")
    status: int | None = Field(description="the simulator's answer (250: a mail accepted); null: none")
    at: datetime


class SandboxPage(BaseModel):
    requests: list[SandboxRequestOut]
    next_before_id: int | None = Field(description="pass as before_id for older requests")


@router.get(
    "/sandbox/requests",
    response_model=SandboxPage,
    summary="Sandbox mode: every request a destination's simulator received, newest first",
    responses={
        401: {"description": "no or wrong token"},
        403: {"description": "token lacks read"},
        404: {"description": "not in sandbox mode, or no such destination"},
    },
)
async def sandbox_requests(
    request: Request,
    _: Annotated[str, Depends(require("read"))],
    destination: Annotated[str | None, Query(description="only this destination's")] = None,
    before_id: Annotated[int | None, Query(ge=1, description="page: requests older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> SandboxPage:
    try:
        found = recorded(request.app.state.tidings, destination=destination, limit=limit, before_id=before_id)
    except SandboxError as exc:
        raise HTTPException(404, str(exc)) from exc
    return SandboxPage(
        requests=[SandboxRequestOut(**r.as_json()) for r in found],
        next_before_id=found[-1].id if len(found) == limit else None,
    )
