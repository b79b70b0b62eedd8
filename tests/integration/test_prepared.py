"""Prepared statements give what `conn.execute` gives, on SQLite's cursor and through Core elsewhere."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, event, func, insert, select, update
from sqlalchemy.exc import ArgumentError, IntegrityError

from tidings.exceptions import StoreError
from tidings.store import Store
from tidings.store.prepared import Prepared
from tidings.store.schema import outbox

NOW = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)

_ADD = Prepared(insert(outbox))
_ADD_RETURNING = Prepared(insert(outbox).returning(outbox.c.id, outbox.c.idempotency_key))
_READ = Prepared(
    select(outbox.c.id, outbox.c.payload, outbox.c.next_attempt_at, outbox.c.lease_until)
    .where(
        outbox.c.id.in_(bindparam("ids", expanding=True)),
        outbox.c.status.in_(["pending", "in_flight"]),  # literal values: no parameter to give
    )
    .order_by(outbox.c.id)
)
_COUNT = Prepared(select(func.count()).select_from(outbox))
_TAKE = Prepared(
    update(outbox).where(outbox.c.id.in_(bindparam("ids", expanding=True))).values(status="in_flight")
)


def effect(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "destination": "klaviyo",
        "action": "track_event",
        "idempotency_key": f"k{n}",
        "payload": {"n": n, "items": [{"sku": "A", "price": 1.5}], "note": None, "big": 2**70},
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": NOW + timedelta(minutes=n),
        "created_at": NOW,
        "updated_at": NOW,
        **extra,
    }


@pytest.fixture
def store(store_url: str):
    store = Store(store_url)
    store.upgrade()
    yield store
    store.close()


def test_rows_come_back_as_core_returns_them(store: Store) -> None:
    """Same rows, same Python values (JSON, aware UTC timestamps, NULL), same attribute names."""

    def write(conn):
        ids = [_ADD_RETURNING.execute(conn, effect(n)).scalar_one() for n in range(3)]
        return ids, _READ.execute(conn, {"ids": ids[:2]}).all()

    ids, prepared = store.write_sync(write)
    core = store.read_sync(lambda conn: conn.execute(_READ.statement, {"ids": ids[:2]}).all())
    assert [tuple(r) for r in prepared] == [tuple(r) for r in core]
    first = prepared[0]
    assert first.payload == effect(0)["payload"]  # nested JSON; an integer beyond 64 bits exact
    assert first.next_attempt_at == NOW and first.next_attempt_at.tzinfo is not None
    assert first.lease_until is None
    assert [r.id for r in prepared] == ids[:2]


def test_an_expanding_parameter_takes_any_length_and_an_empty_one_matches_nothing(store: Store) -> None:
    def write(conn):
        ids = [_ADD_RETURNING.execute(conn, effect(n)).scalar_one() for n in range(5)]
        return [[r.id for r in _READ.execute(conn, {"ids": ids[:k]})] for k in (0, 1, 3, 5, 1)], ids

    seen, ids = store.write_sync(write)
    assert seen == [[], ids[:1], ids[:3], ids, ids[:1]]


def test_many_parameter_sets_and_their_returned_rows_keep_their_order(store: Store) -> None:
    def write(conn):
        returned = _ADD_RETURNING.execute_many(conn, [effect(n) for n in (5, 3, 4)])
        changed = _TAKE.execute(conn, {"ids": [r.id for r in returned]}).rowcount
        _ADD.execute_many(conn, [effect(n) for n in (10, 11)])
        return [r.idempotency_key for r in returned], changed, _COUNT.execute(conn).scalar_one()

    assert store.write_sync(write) == (["k5", "k3", "k4"], 3, 5)


def test_a_failed_statement_is_sqlalchemys_error_and_only_its_write_is_lost(store: Store) -> None:
    """The writer puts queued writes in savepoints: the duplicate's is rolled back alone."""
    store.write_sync(lambda conn: _ADD.execute(conn, effect(1)))
    with pytest.raises(IntegrityError):
        store.engine.dispose()  # a fresh connection: nothing left over from the first write
        with store.engine.connect() as conn, conn.begin():
            _ADD.execute(conn, effect(1))

    async def both() -> list[Any]:
        return await asyncio.gather(
            store.write(lambda conn: _ADD.execute(conn, effect(1))),
            store.write(lambda conn: _ADD.execute(conn, effect(2)).rowcount),
            return_exceptions=True,
        )

    duplicate, added = asyncio.run(both())
    assert isinstance(duplicate, StoreError) and "IntegrityError" in str(duplicate)
    assert added == 1
    assert store.read_sync(lambda conn: _COUNT.execute(conn).scalar_one()) == 2


def test_statement_listeners_see_every_statement(store: Store) -> None:
    """What counts statements (tests, bench/process.py) counts prepared ones too."""
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_: Any) -> None:
        seen.append(statement.split()[0])

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        store.write_sync(lambda conn: (_ADD.execute(conn, effect(1)), _COUNT.execute(conn).scalar_one()))
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert seen[-2:] == ["INSERT", "SELECT"]


def test_a_missing_parameter_is_named(store: Store) -> None:
    with pytest.raises((ArgumentError, StoreError), match="ids"):
        store.write_sync(lambda conn: _READ.execute(conn, {}))
