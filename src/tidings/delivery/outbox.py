"""SQL of the outbox: enqueue (idempotent, coalescing), claim with a lease, settle, list, retry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import zip_longest
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tidings.delivery.effects import UPSERT_CONTACT, Effect
from tidings.store.prepared import Prepared
from tidings.store.schema import delivery_attempts, destination_state, identities, outbox, profiles

PENDING, IN_FLIGHT, DELIVERED, DEAD = "pending", "in_flight", "delivered", "dead"


def enqueue(
    conn: Connection,
    *,
    destination: str,
    action: str,
    idempotency_key: str,
    payload: dict[str, Any],
    now: datetime,
    coalesce_key: str | None = None,
    profile_id: int | None = None,
    data_occurred_at: datetime | None = None,
) -> bool:
    """Add an effect; False if it is already there (same idempotency key) or coalesced into a
    pending one (same coalesce key: the pending one will carry the freshest data when sent)."""
    added = (
        _ADD[conn.dialect.name == "postgresql"]
        .execute(
            conn,
            {
                "destination": destination,
                "action": action,
                "idempotency_key": idempotency_key,
                "coalesce_key": coalesce_key,
                "profile_id": profile_id,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
                "data_occurred_at": data_occurred_at,
            },
        )
        .rowcount
    )
    if not added and coalesce_key is not None and data_occurred_at is not None:
        _FRESHER.execute(conn, {"key": coalesce_key, "occurred": data_occurred_at, "now": now})
    return bool(added)


def enqueue_many(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> None:
    """Add effects without coalescing (flow sends), in one statement; a row whose idempotency key
    is already there is left out. Each row: destination, action, idempotency_key, payload,
    profile_id, data_occurred_at."""
    if not rows:
        return
    common = {"coalesce_key": None, "status": PENDING, "attempts": 0, "next_attempt_at": now}
    _ADD[conn.dialect.name == "postgresql"].execute_many(
        conn, [{**common, "created_at": now, "updated_at": now, **row} for row in rows]
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    effect: Effect
    recovered: bool  # it was in flight when a process died: its outcome is unknown
    data_occurred_at: datetime | None


def paused_destinations(conn: Connection, now: datetime) -> set[str]:
    return set(_PAUSED.execute(conn, {"now": now}).scalars())


def claim(
    conn: Connection, now: datetime, *, destinations: Sequence[str], limit: int, lease: timedelta
) -> list[Claimed]:
    """Up to `limit` due effects of these destinations (and any whose lease ran out), marked in
    flight until `now + lease`.

    Each destination is read on its own, in due order, from the (destination, status,
    next_attempt_at) index: a destination left out (paused) costs nothing however long its
    backlog, and a big backlog of one destination does not hold back the others, which share
    `limit` in turn.
    """
    if not destinations or limit <= 0:
        return []
    lapsed = _LAPSED.execute(conn, {"now": now, "destinations": list(destinations), "limit": limit}).all()
    queues = [_DUE.execute(conn, {"destination": d, "now": now, "limit": limit}).all() for d in destinations]
    rows = list(lapsed[:limit])
    for turn in zip_longest(*queues):
        rows.extend(r for r in turn if r is not None)
    rows = rows[:limit]
    if not rows:
        return []
    _TAKE.execute(conn, {"ids": [r.id for r in rows], "until": now + lease, "now": now})
    return [
        Claimed(
            Effect(
                id=r.id,
                destination=r.destination,
                action=r.action,
                idempotency_key=r.idempotency_key,
                payload=dict(r.payload),
                attempt=r.attempts + 1,
            ),
            recovered=r.status == IN_FLIGHT,
            data_occurred_at=r.data_occurred_at,
        )
        for r in rows
    ]


def waiting_destinations(conn: Connection, configured: Sequence[str]) -> set[str]:
    """Destinations other than `configured` with effects still to send (removed from the config)."""
    stmt = (
        select(outbox.c.destination)
        .where(outbox.c.status.in_([PENDING, IN_FLIGHT]), outbox.c.destination.not_in(list(configured)))
        .distinct()
    )
    return set(conn.execute(stmt).scalars())


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """How one attempt at an effect ended: `delivered`, `retry` (pending again at `retry_at`),
    `dead`, or `paused` (pending again, held back with its destination)."""

    effect_id: int
    action: str
    attempt: int
    outcome: str
    error: str | None = None
    status_code: int | None = None
    latency_ms: int | None = None
    remote_id: str | None = None
    retry_at: datetime | None = None


def settle(conn: Connection, settlements: Sequence[Settlement], now: datetime) -> None:
    """Record the attempts and the effects' new state: two statements, however many settled."""
    if not settlements:
        return
    _ATTEMPT.execute_many(
        conn,
        [
            {
                "outbox_id": s.effect_id,
                "at": now,
                "request": {"action": s.action, "attempt": s.attempt},
                "status_code": s.status_code,
                "latency_ms": s.latency_ms,
                "outcome": s.outcome,
                "error": s.error,
            }
            for s in settlements
        ],
    )
    _SETTLE.execute_many(
        conn,
        [
            {
                "_id": s.effect_id,
                "_status": _STATUS_AFTER[s.outcome],
                "_delivered_at": now if s.outcome == "delivered" else None,
                "_remote_id": s.remote_id,
                "_next": s.retry_at or now if _STATUS_AFTER[s.outcome] == PENDING else None,
                "_error": s.error,
                "_now": now,
            }
            for s in settlements
        ],
    )


_STATUS_AFTER = {"delivered": DELIVERED, "retry": PENDING, "paused": PENDING, "dead": DEAD}

_NOW = bindparam("now", type_=outbox.c.next_attempt_at.type)
_PAUSED = Prepared(
    select(destination_state.c.destination).where(
        destination_state.c.paused_until > bindparam("now", type_=destination_state.c.paused_until.type)
    )
)
_DUE = Prepared(
    select(outbox)
    .where(
        outbox.c.destination == bindparam("destination"),
        outbox.c.status == PENDING,
        outbox.c.next_attempt_at <= _NOW,
    )
    .order_by(outbox.c.next_attempt_at)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)
_LAPSED = Prepared(
    select(outbox)
    .where(
        outbox.c.status == IN_FLIGHT,
        outbox.c.lease_until < _NOW,
        outbox.c.destination.in_(bindparam("destinations", expanding=True)),
    )
    .order_by(outbox.c.id)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)
_TAKE = Prepared(
    update(outbox)
    .where(outbox.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=IN_FLIGHT,
        lease_until=bindparam("until", type_=outbox.c.lease_until.type),
        attempts=outbox.c.attempts + 1,
        updated_at=_NOW,
    )
)
_SETTLE = Prepared(
    update(outbox)
    .where(outbox.c.id == bindparam("_id"))
    .values(
        status=bindparam("_status"),
        delivered_at=bindparam("_delivered_at", type_=outbox.c.delivered_at.type),
        remote_id=bindparam("_remote_id"),
        next_attempt_at=func.coalesce(
            bindparam("_next", type_=outbox.c.next_attempt_at.type), outbox.c.next_attempt_at
        ),
        lease_until=None,
        last_error=bindparam("_error"),
        updated_at=bindparam("_now", type_=outbox.c.updated_at.type),
    )
)


_DIALECTS = ((False, sqlite), (True, postgresql))
# By whether the store is PostgreSQL: an effect whose idempotency key is there is left out.
_ADD = {pg: Prepared(dialect.insert(outbox).on_conflict_do_nothing()) for pg, dialect in _DIALECTS}
# A coalesced effect carries the newest data of the ones folded into it.
_FRESHER = Prepared(
    update(outbox)
    .where(
        outbox.c.coalesce_key == bindparam("key"),
        outbox.c.status == PENDING,
        or_(
            outbox.c.data_occurred_at.is_(None),
            outbox.c.data_occurred_at < bindparam("occurred", type_=outbox.c.data_occurred_at.type),
        ),
    )
    .values(
        data_occurred_at=bindparam("occurred", type_=outbox.c.data_occurred_at.type),
        updated_at=bindparam("now", type_=outbox.c.updated_at.type),
    )
)
_ATTEMPT = Prepared(insert(delivery_attempts))
_SUCCEEDED = Prepared(
    update(destination_state)
    .where(destination_state.c.destination == bindparam("_destination"))
    .values(
        consecutive_failures=0,
        paused_until=None,
        paused_reason=None,
        updated_at=bindparam("now", type_=destination_state.c.updated_at.type),
    )
)


def note_failure(conn: Connection, destination: str, now: datetime) -> int:
    """Count a failure in a row for the destination (shared by every worker); return the count."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(destination_state).values(
        destination=destination, consecutive_failures=1, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[destination_state.c.destination],
        set_={
            "consecutive_failures": destination_state.c.consecutive_failures + 1,
            "updated_at": now,
        },
    )
    conn.execute(stmt)
    return int(
        conn.execute(
            select(destination_state.c.consecutive_failures).where(
                destination_state.c.destination == destination
            )
        ).scalar_one()
    )


def note_success(conn: Connection, destination: str, now: datetime) -> None:
    _SUCCEEDED.execute(conn, {"_destination": destination, "now": now})


def pause(conn: Connection, destination: str, now: datetime, until: datetime, reason: str) -> None:
    """Hold back every effect of the destination until `until` (shared by every worker)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"paused_until": until, "paused_reason": reason, "updated_at": now}
    stmt = dialect.insert(destination_state).values(destination=destination, consecutive_failures=0, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[destination_state.c.destination], set_=values))


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    id: int
    destination: str
    action: str
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    last_error: str | None
    idempotency_key: str


def list_deliveries(
    conn: Connection, *, status: str | None = None, destination: str | None = None, limit: int = 50
) -> list[Delivery]:
    stmt = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(outbox.c.status == status)
    if destination is not None:
        stmt = stmt.where(outbox.c.destination == destination)
    return [
        Delivery(
            id=r.id,
            destination=r.destination,
            action=r.action,
            status=r.status,
            attempts=r.attempts,
            created_at=r.created_at,
            updated_at=r.updated_at,
            delivered_at=r.delivered_at,
            last_error=r.last_error,
            idempotency_key=r.idempotency_key,
        )
        for r in conn.execute(stmt)
    ]


def retry_dead(conn: Connection, now: datetime, ids: Sequence[int] | None = None) -> int:
    """Send dead letters again (all of them, or these ids): pending now, attempts counted afresh."""
    stmt = update(outbox).where(outbox.c.status == DEAD)
    if ids is not None:
        stmt = stmt.where(outbox.c.id.in_(list(ids)))
    return int(
        conn.execute(stmt.values(status=PENDING, attempts=0, next_attempt_at=now, updated_at=now)).rowcount
    )


def counts(conn: Connection) -> dict[str, dict[str, int]]:
    rows = conn.execute(
        select(outbox.c.destination, outbox.c.status, func.count().label("n")).group_by(
            outbox.c.destination, outbox.c.status
        )
    )
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r.destination, {})[r.status] = r.n
    return out


# --------------------------------------------------------------------------- admin: one delivery


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    at: datetime
    request: dict[str, Any]  # a summary: never credentials or bodies
    status_code: int | None
    latency_ms: int | None
    outcome: str
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRecord:
    """One outbox row in full, with every attempt made at it, oldest first."""

    id: int
    destination: str
    action: str
    status: str
    attempts: int
    idempotency_key: str
    profile_id: int | None
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime
    lease_until: datetime | None
    delivered_at: datetime | None
    remote_id: str | None
    last_error: str | None
    history: list[AttemptRecord]


def get_delivery(conn: Connection, delivery_id: int) -> DeliveryRecord | None:
    row = conn.execute(select(outbox).where(outbox.c.id == delivery_id)).first()
    if row is None:
        return None
    tries = conn.execute(
        select(delivery_attempts)
        .where(delivery_attempts.c.outbox_id == delivery_id)
        .order_by(delivery_attempts.c.id)
    )
    return DeliveryRecord(
        id=row.id,
        destination=row.destination,
        action=row.action,
        status=row.status,
        attempts=row.attempts,
        idempotency_key=row.idempotency_key,
        profile_id=row.profile_id,
        payload=dict(row.payload),
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_attempt_at=row.next_attempt_at,
        lease_until=row.lease_until,
        delivered_at=row.delivered_at,
        remote_id=row.remote_id,
        last_error=row.last_error,
        history=[
            AttemptRecord(
                at=t.at,
                request=dict(t.request or {}),
                status_code=t.status_code,
                latency_ms=t.latency_ms,
                outcome=t.outcome,
                error=t.error,
            )
            for t in tries
        ],
    )


def has_deliveries(conn: Connection, destination: str) -> bool:
    """Whether the outbox holds anything for `destination` (configured now or not)."""
    found = conn.execute(select(outbox.c.id).where(outbox.c.destination == destination).limit(1)).first()
    return found is not None


# --------------------------------------------------------------------------- admin: destinations


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRecord:
    destination: str
    consecutive_failures: int
    paused_until: datetime | None
    paused_reason: str | None


def destination_states(conn: Connection) -> dict[str, DestinationRecord]:
    """The shared circuit-breaker state of every destination that has any."""
    return {
        r.destination: DestinationRecord(
            destination=r.destination,
            consecutive_failures=r.consecutive_failures,
            paused_until=r.paused_until,
            paused_reason=r.paused_reason,
        )
        for r in conn.execute(select(destination_state))
    }


# --------------------------------------------------------------------------- admin: backfill

# Profiles a vendor can key a contact on: without an email or a phone a push can only fail.
_CONTACTABLE = ("email", "phone")


def _backfill_profiles() -> Any:
    reachable = (
        select(identities.c.profile_id)
        .where(identities.c.profile_id == profiles.c.id, identities.c.kind.in_(_CONTACTABLE))
        .exists()
    )
    return profiles.c.merged_into.is_(None) & reachable


def count_backfill_profiles(conn: Connection) -> int:
    """How many profiles a backfill pushes: current (not merged) ones with an email or phone."""
    stmt = select(func.count()).select_from(profiles).where(_backfill_profiles())
    return int(conn.execute(stmt).scalar_one())


@dataclass(frozen=True, slots=True)
class BackfillBatch:
    scanned: int  # profiles looked at
    queued: int  # pushes added (the rest were already queued by this run, or by another pending one)
    last_id: int | None  # where the next batch starts; None when there are no more profiles


def enqueue_backfill(
    conn: Connection,
    *,
    destination: str,
    run: str,
    now: datetime,
    after_id: int = 0,
    limit: int = 500,
) -> BackfillBatch:
    """Queue a no-trigger profile push (`backfill: true`) for the next `limit` profiles after
    `after_id`. Idempotent per run (the key names the run and the profile); a profile whose
    backfill push from any run is still pending is not queued twice (they coalesce)."""
    ids = list(
        conn.execute(
            select(profiles.c.id)
            .where(_backfill_profiles(), profiles.c.id > after_id)
            .order_by(profiles.c.id)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return BackfillBatch(0, 0, None)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    rows = [
        {
            "destination": destination,
            "action": UPSERT_CONTACT,
            "idempotency_key": f"{destination}:backfill:{run}:{pid}",
            "coalesce_key": f"{destination}:backfill:{pid}",
            "profile_id": pid,
            "payload": {"profile_id": pid, "backfill": True},
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
            "data_occurred_at": None,
        }
        for pid in ids
    ]
    stmt = dialect.insert(outbox).values(rows).on_conflict_do_nothing().returning(outbox.c.id)
    queued = len(conn.execute(stmt).all())
    return BackfillBatch(len(ids), queued, ids[-1])


# --------------------------------------------------------------------------- admin: retry in batches


def count_dead(conn: Connection) -> int:
    return int(
        conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == DEAD)).scalar_one()
    )


def retry_dead_batch(
    conn: Connection, now: datetime, *, after_id: int = 0, limit: int = 1000
) -> tuple[int, int | None]:
    """Send the next `limit` dead letters after `after_id` again; (how many, the last id or None
    when none are left). For retrying many in short transactions, with progress."""
    ids = list(
        conn.execute(
            select(outbox.c.id)
            .where(outbox.c.status == DEAD, outbox.c.id > after_id)
            .order_by(outbox.c.id)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0, None
    return retry_dead(conn, now, ids), ids[-1]


def statuses(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    """The status of each of these deliveries that exists."""
    rows = conn.execute(select(outbox.c.id, outbox.c.status).where(outbox.c.id.in_(list(ids))))
    return {r.id: r.status for r in rows}
