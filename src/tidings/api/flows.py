"""Flows over the admin API: what each flow is doing, and every run with its reasons (read)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from tidings.api.admin import errors
from tidings.api.auth import require
from tidings.flows.read import get_run, list_runs, summaries

router = APIRouter(prefix="/api/v1", tags=["flows"])


class FlowOut(BaseModel):
    name: str
    version: str = Field(description="a hash of the flow's definition; a change is a new version")
    trigger: list[str]
    runs: dict[str, int] = Field(description="runs by status: active, completed, exited, failed")
    active_by_step: dict[str, int] = Field(description="active runs by the step they stand at")
    sends: dict[str, int] = Field(description="send steps by outcome: sent, skipped, delayed")
    skip_reasons: dict[str, int]


class StepOut(BaseModel):
    at: datetime
    step: str
    kind: str = Field(description="trigger, wait, wait_for, branch, send, update_profile, exit, end")
    outcome: str
    reason: str | None
    detail: dict[str, Any] | None = Field(description="a send: destination, action and the payload")


class RunOut(BaseModel):
    id: int
    flow: str
    version: str
    key: str
    profile_id: int
    status: str
    step: str | None = Field(description="where an active run stands")
    due_at: datetime | None = Field(description="when an active run's timer fires")
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    steps: list[StepOut]


class RunPage(BaseModel):
    runs: list[RunOut]
    next_before_id: int | None


@router.get(
    "/flows",
    response_model=list[FlowOut],
    summary="Every flow: runs, where they stand, sends",
    responses=errors("read"),
)
async def flows(request: Request, _: Annotated[str, Depends(require("read"))]) -> list[FlowOut]:
    tidings = request.app.state.tidings
    found = await tidings.store.read(lambda conn: summaries(conn, tidings.flows))
    return [FlowOut(**asdict(s)) for s in found]


@router.get(
    "/flows/{flow}/runs",
    response_model=RunPage,
    summary="A flow's runs, newest first, each with every step taken and why",
    responses=errors("read", e404="no such flow"),
)
async def runs(
    request: Request,
    flow: str,
    _: Annotated[str, Depends(require("read"))],
    status: Literal["active", "completed", "exited", "failed"] | None = None,
    profile_id: int | None = None,
    before_id: Annotated[int | None, Query(ge=1, description="page: runs older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    tidings = request.app.state.tidings
    if flow not in tidings.flows.current:
        raise HTTPException(404, f"no flow named {flow!r}")
    found = await tidings.store.read(
        lambda conn: list_runs(
            conn, flow, status=status, profile_id=profile_id, before_id=before_id, limit=limit
        )
    )
    return RunPage(
        runs=[RunOut(**asdict(r)) for r in found],
        next_before_id=found[-1].id if len(found) == limit else None,
    )


@router.get(
    "/flows/{flow}/runs/{run_id}",
    response_model=RunOut,
    summary="One run with every step taken and why",
    responses=errors("read", e404="no such run in this flow"),
)
async def run(
    request: Request, flow: str, run_id: int, _: Annotated[str, Depends(require("read"))]
) -> RunOut:
    found = await request.app.state.tidings.store.read(lambda conn: get_run(conn, run_id))
    if found is None or found.flow != flow:
        raise HTTPException(404, f"no run {run_id} in flow {flow!r}")
    return RunOut(**asdict(found))
