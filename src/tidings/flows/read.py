"""Reading flows and runs (for the admin API, the CLI and the dashboard)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from tidings.flows.catalog import FlowCatalog
from tidings.flows.runs import ACTIVE
from tidings.store.schema import flow_runs, flow_steps


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSummary:
    name: str
    version: str
    trigger: list[str]
    runs: dict[str, int]  # by status
    active_by_step: dict[str, int]
    sends: dict[str, int]  # outcome -> count (sent, skipped, delayed)
    skip_reasons: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    at: datetime
    step: str
    kind: str
    outcome: str
    reason: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunView:
    id: int
    flow: str
    version: str
    key: str
    profile_id: int
    status: str
    step: str | None
    due_at: datetime | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    steps: list[StepRecord] = field(default_factory=list)


def summaries(conn: Connection, catalog: FlowCatalog) -> list[FlowSummary]:
    out = []
    for name, flow in catalog.current.items():
        by_status = conn.execute(
            select(flow_runs.c.status, func.count())
            .where(flow_runs.c.flow == name)
            .group_by(flow_runs.c.status)
        )
        by_step = conn.execute(
            select(flow_runs.c.step, func.count())
            .where(flow_runs.c.flow == name, flow_runs.c.status == ACTIVE)
            .group_by(flow_runs.c.step)
        )
        sends = conn.execute(
            select(flow_steps.c.outcome, flow_steps.c.reason, func.count())
            .where(flow_steps.c.flow == name, flow_steps.c.kind == "send")
            .group_by(flow_steps.c.outcome, flow_steps.c.reason)
        )
        outcomes: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for outcome, reason, n in sends:
            outcomes[outcome] = outcomes.get(outcome, 0) + n
            if outcome == "skipped" and reason:
                reasons[reason] = reasons.get(reason, 0) + n
        out.append(
            FlowSummary(
                name=name,
                version=catalog.versions[name],
                trigger=list(flow.trigger.names),
                runs={s: n for s, n in by_status},
                active_by_step={str(s): n for s, n in by_step},
                sends=outcomes,
                skip_reasons=reasons,
            )
        )
    return out


def list_runs(
    conn: Connection,
    flow: str,
    *,
    status: str | None = None,
    profile_id: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
    with_steps: bool = True,
) -> list[RunView]:
    """Runs of `flow`, newest first, each with its journal."""
    stmt = select(flow_runs).where(flow_runs.c.flow == flow).order_by(flow_runs.c.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(flow_runs.c.status == status)
    if profile_id is not None:
        stmt = stmt.where(flow_runs.c.profile_id == profile_id)
    if before_id is not None:
        stmt = stmt.where(flow_runs.c.id < before_id)
    rows = list(conn.execute(stmt))
    journal: dict[int, list[StepRecord]] = {}
    if with_steps and rows:
        for s in conn.execute(
            select(flow_steps).where(flow_steps.c.run_id.in_([r.id for r in rows])).order_by(flow_steps.c.id)
        ):
            journal.setdefault(s.run_id, []).append(
                StepRecord(
                    at=s.at, step=s.step, kind=s.kind, outcome=s.outcome, reason=s.reason, detail=s.detail
                )
            )
    return [
        RunView(
            id=r.id,
            flow=r.flow,
            version=r.version,
            key=r.run_key,
            profile_id=r.profile_id,
            status=r.status,
            step=r.step,
            due_at=r.due_at,
            started_at=r.started_at,
            ended_at=r.ended_at,
            end_reason=r.end_reason,
            steps=journal.get(r.id, []),
        )
        for r in rows
    ]


def get_run(conn: Connection, run_id: int) -> RunView | None:
    flow = conn.execute(select(flow_runs.c.flow).where(flow_runs.c.id == run_id)).scalar()
    if flow is None:
        return None
    found = list_runs(conn, flow, before_id=run_id + 1, limit=1)
    return found[0] if found and found[0].id == run_id else None
