"""A flow run as stored: its state is its durable timer (`due_at`), claimed with a lease.

Claiming pushes `due_at` one lease ahead and bumps `claim`; the work is settled only if the claim
is still the same, so a process that died mid-way (its lease ran out, another took the run over)
settles nothing, and a timer fires once whatever the delay.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Integer, Select, Update, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tidings.store.prepared import Prepared
from tidings.store.schema import flow_runs

ACTIVE, COMPLETED, EXITED, FAILED = "active", "completed", "exited", "failed"


@dataclass(slots=True, kw_only=True)
class Run:
    id: int
    flow: str
    version: str
    run_key: str
    profile_id: int
    status: str
    step: str | None
    due_at: datetime | None
    wake: str | None
    claim: int
    visits: int
    context: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    dirty: bool = field(default=False, compare=False)
    overdue_since: datetime | None = field(default=None, compare=False)  # the due time it was claimed at

    @classmethod
    def from_row(cls, row: Any) -> Run:
        return cls(
            id=row.id,
            flow=row.flow,
            version=row.version,
            run_key=row.run_key,
            profile_id=row.profile_id,
            status=row.status,
            step=row.step,
            due_at=row.due_at,
            wake=row.wake,
            claim=row.claim,
            visits=row.visits,
            context=dict(row.context),
            started_at=row.started_at,
            ended_at=row.ended_at,
            end_reason=row.end_reason,
        )

    def doc(self) -> dict[str, Any]:
        """What conditions and templates see as `run`."""
        return {
            "id": self.id,
            "flow": self.flow,
            "key": self.run_key,
            "started_at": self.started_at.isoformat(),
            "trigger": self.context.get("event"),
        }

    def end(self, status: str, reason: str, now: datetime) -> None:
        self.status, self.end_reason, self.ended_at = status, reason, now
        self.step, self.due_at, self.wake = None, None, None
        self.dirty = True

    def schedule(self, step: str, due_at: datetime | None, wake: str | None) -> None:
        self.step, self.due_at, self.wake = step, due_at, wake
        self.dirty = True


def active_for_profiles(conn: Connection, pids: Iterable[int]) -> list[Run]:
    ids = sorted(set(pids))
    if not ids:
        return []
    stmt = _ACTIVE_FOR_LOCKED if conn.dialect.name == "postgresql" else _ACTIVE_FOR
    rows = stmt.execute(conn, {"pids": ids})
    return [Run.from_row(r) for r in rows]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A run an event starts (see `start`)."""

    flow: str
    version: str
    key: str
    profile_id: int
    step: str
    context: dict[str, Any]


def start(conn: Connection, new: Sequence[NewRun], now: datetime) -> dict[tuple[str, str], int]:
    """New active runs, due now, in one statement: the ids of those started, by (flow, key).

    A run is not started if one is already active for its (flow, key): the unique index decides,
    against another processor's runs too. Of several with one (flow, key), the first is started.
    """
    if not new:
        return {}
    stmt = _START_PG if conn.dialect.name == "postgresql" else _START_SQLITE
    params = [
        {
            "flow": n.flow,
            "version": n.version,
            "run_key": n.key,
            "active_key": n.key,
            "profile_id": n.profile_id,
            "status": ACTIVE,
            "step": n.step,
            "due_at": now,
            "wake": "start",
            "claim": 0,
            "visits": 0,
            "context": n.context,
            "started_at": now,
            "updated_at": now,
        }
        for n in new
    ]
    return {(r.flow, r.active_key): int(r.id) for r in stmt.execute_many(conn, params)}


def active_run(conn: Connection, flow: str, key: str) -> Run | None:
    """The active run of (flow, key), locked on PostgreSQL (its caller changes it)."""
    stmt = _ACTIVE_RUN_LOCKED if conn.dialect.name == "postgresql" else _ACTIVE_RUN
    row = stmt.execute(conn, {"flow": flow, "key": key}).first()
    return Run.from_row(row) if row is not None else None


def ever_ran(conn: Connection, flow: str, keys: Collection[str]) -> set[str]:
    """Those of `keys` that had a run of `flow`, active or ended."""
    if not keys:
        return set()
    return set(_EVER_RAN.execute(conn, {"flow": flow, "keys": sorted(keys)}).scalars())


def save(conn: Connection, run: Run, now: datetime, *, claim: int | None = None, bump: bool = False) -> bool:
    """Write the run's state; with `claim`, only if the run is still under that claim.

    `bump` (a change made by an event) voids any claim a runner holds on it: what that runner
    decided was decided on the old state.
    """
    params = _state(run, now) if claim is None else {**_state(run, now), "_claim": claim}
    done = _SAVE[(claim is not None, bump)].execute(conn, params).rowcount
    run.dirty = False
    return bool(done)


def _state(run: Run, now: datetime) -> dict[str, Any]:
    """The parameters of `_SAVE` (what a save writes)."""
    return {
        "_id": run.id,
        "_status": run.status,
        "_active_key": run.run_key if run.status == ACTIVE else None,
        "_profile_id": run.profile_id,
        "_version": run.version,
        "_step": run.step,
        "_due_at": run.due_at,
        "_wake": run.wake,
        "_visits": run.visits,
        "_context": run.context,
        "_updated_at": now,
        "_ended_at": run.ended_at,
        "_end_reason": run.end_reason,
    }


def save_all(conn: Connection, runs: Sequence[Run], now: datetime, *, bump: bool = False) -> None:
    """`save` for many runs, in one statement: the runner's round (its own runs, claimed in this
    transaction, so no claim check), or the runs a batch of events changed (`bump`)."""
    if not runs:
        return
    _SAVE[(False, bump)].execute_many(conn, [_state(run, now) for run in runs])
    for run in runs:
        run.dirty = False


def claim_due(conn: Connection, now: datetime, *, limit: int, lease: timedelta) -> list[Run]:
    """Active runs due by `now`, oldest first, each pushed one lease ahead under a new claim."""
    stmt = _CLAIM_LOCKED if conn.dialect.name == "postgresql" else _CLAIM
    return _claimed(conn, stmt.execute(conn, {"now": now, "limit": limit}), now, lease)


def claim_ids(conn: Connection, ids: Sequence[int], now: datetime, *, lease: timedelta) -> list[Run]:
    """Those of `ids` still active and due by `now` (not fired or moved by anyone meanwhile),
    claimed as `claim_due` does."""
    if not ids:
        return []
    stmt = _CLAIM_IDS_LOCKED if conn.dialect.name == "postgresql" else _CLAIM_IDS
    # Rows read by id and sifted here: with the conditions in SQL, SQLite's planner scans the
    # (status, due_at) index over every overdue run instead. The rows are locked (PostgreSQL) or
    # the transaction is the only writer (SQLite), so what is sifted here cannot change under it.
    rows = stmt.execute(conn, {"ids": list(ids)})
    due = (r for r in rows if r.status == ACTIVE and r.due_at is not None and r.due_at <= now)
    return _claimed(conn, due, now, lease)


def overdue_ids(conn: Connection, now: datetime, *, limit: int) -> list[int]:
    """The ids of the `limit` runs longest overdue at `now`, in storage (id) order."""
    return sorted(_OVERDUE.execute(conn, {"now": now, "limit": limit}).scalars())


def _claimed(conn: Connection, rows: Iterable[Any], now: datetime, lease: timedelta) -> list[Run]:
    runs = [Run.from_row(r) for r in rows]
    if runs:
        _PUSH.execute(conn, {"ids": [r.id for r in runs], "until": now + lease})
    for run in runs:
        run.overdue_since = run.due_at
        run.claim += 1
    return runs


def still_claimed(conn: Connection, runs: list[Run]) -> list[Run]:
    """Those of `runs` nobody else took over since they were claimed (locked on PostgreSQL)."""
    if not runs:
        return []
    stmt = _CLAIMS_LOCKED if conn.dialect.name == "postgresql" else _CLAIMS
    claims = {r.id: r.claim for r in stmt.execute(conn, {"ids": [r.id for r in runs]})}
    return [r for r in runs if claims.get(r.id) == r.claim]


def _plain_and_locked(stmt: Select[Any], *, skip_locked: bool = False) -> tuple[Prepared, Prepared]:
    """The statement, and the same locking its rows (PostgreSQL: SQLite's writer holds the store)."""
    return Prepared(stmt), Prepared(stmt.with_for_update(skip_locked=skip_locked))


_CLAIMS, _CLAIMS_LOCKED = _plain_and_locked(
    select(flow_runs.c.id, flow_runs.c.claim).where(flow_runs.c.id.in_(bindparam("ids", expanding=True)))
)
_NEXT_DUE = Prepared(select(func.min(flow_runs.c.due_at)).where(flow_runs.c.status == ACTIVE))


def next_due(conn: Connection) -> datetime | None:
    due: datetime | None = _NEXT_DUE.execute(conn).scalar()
    return due


def pending_count(conn: Connection, now: datetime, overdue_after: timedelta) -> tuple[int, int]:
    """(runs waiting on a timer, of which overdue by more than `overdue_after`)."""
    waiting = conn.execute(
        select(func.count()).where(flow_runs.c.status == ACTIVE, flow_runs.c.due_at.is_not(None))
    ).scalar_one()
    overdue = conn.execute(
        select(func.count()).where(flow_runs.c.status == ACTIVE, flow_runs.c.due_at < now - overdue_after)
    ).scalar_one()
    return int(waiting), int(overdue)


_SAVED = (
    "status",
    "active_key",
    "profile_id",
    "version",
    "step",
    "due_at",
    "wake",
    "visits",
    "context",
    "updated_at",
    "ended_at",
    "end_reason",
)
# Built once: constructing an UPDATE per run cost as much as running it.
_SAVE_ALL = (
    update(flow_runs)
    .where(flow_runs.c.id == bindparam("_id"))
    .values({name: bindparam(f"_{name}", type_=flow_runs.c[name].type) for name in _SAVED})
)

# Built once: a round at a steady due rate fires one or two runs, so building these per round
# cost about as much as the firing (bench/timers.py, steady phase).
_CLAIM_SELECT = (
    select(flow_runs)
    .where(
        flow_runs.c.status == ACTIVE, flow_runs.c.due_at <= bindparam("now", type_=flow_runs.c.due_at.type)
    )
    .order_by(flow_runs.c.due_at)
    .limit(bindparam("limit"))
)
_CLAIM, _CLAIM_LOCKED = _plain_and_locked(_CLAIM_SELECT, skip_locked=True)
_CLAIM_IDS_SELECT = (
    select(flow_runs).where(flow_runs.c.id.in_(bindparam("ids", expanding=True))).order_by(flow_runs.c.id)
)
_CLAIM_IDS, _CLAIM_IDS_LOCKED = _plain_and_locked(_CLAIM_IDS_SELECT, skip_locked=True)
_OVERDUE = Prepared(
    select(flow_runs.c.id)
    .where(
        flow_runs.c.status == ACTIVE, flow_runs.c.due_at <= bindparam("now", type_=flow_runs.c.due_at.type)
    )
    .order_by(flow_runs.c.due_at)
    .limit(bindparam("limit"))
)
_PUSH = Prepared(
    update(flow_runs)
    .where(flow_runs.c.id.in_(bindparam("ids", expanding=True)))
    .values(due_at=bindparam("until", type_=flow_runs.c.due_at.type), claim=flow_runs.c.claim + 1)
)

# Built once, like the runner's: the processor starts runs and saves them in every batch.
_START_SQLITE, _START_PG = (
    Prepared(
        dialect.insert(flow_runs)
        .on_conflict_do_nothing()
        .returning(flow_runs.c.id, flow_runs.c.flow, flow_runs.c.active_key)
    )
    for dialect in (sqlite, postgresql)
)
_ACTIVE_RUN_SELECT = select(flow_runs).where(
    flow_runs.c.flow == bindparam("flow"), flow_runs.c.active_key == bindparam("key")
)
_ACTIVE_RUN, _ACTIVE_RUN_LOCKED = _plain_and_locked(_ACTIVE_RUN_SELECT)
_EVER_RAN = Prepared(
    select(flow_runs.c.run_key)
    .distinct()
    .where(flow_runs.c.flow == bindparam("flow"), flow_runs.c.run_key.in_(bindparam("keys", expanding=True)))
)


def _save_statement(checked: bool, bump: bool) -> Update:
    stmt = _SAVE_ALL
    if checked:
        stmt = stmt.where(flow_runs.c.claim == bindparam("_claim", type_=Integer))
    if bump:
        stmt = stmt.values(claim=flow_runs.c.claim + 1)
    return stmt


# By (checked against a claim, bumping the claim).
_SAVE = {
    (checked, bump): Prepared(_save_statement(checked, bump))
    for checked in (False, True)
    for bump in (False, True)
}

_ACTIVE_FOR_SELECT = (
    select(flow_runs)
    .where(
        flow_runs.c.profile_id.in_(bindparam("pids", expanding=True)),
        flow_runs.c.status == ACTIVE,
    )
    .order_by(flow_runs.c.id)
)
_ACTIVE_FOR, _ACTIVE_FOR_LOCKED = _plain_and_locked(_ACTIVE_FOR_SELECT)
