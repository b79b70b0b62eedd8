"""The schema: migrations produce exactly what schema.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tidings.store import Store
from tidings.store.schema import metadata


def test_migrations_match_the_declared_schema(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.upgrade()
        assert store.current_revision() is not None
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert diff == []
    finally:
        store.close()


def test_sqlite_runs_in_wal_with_the_configured_synchronous_level(tmp_path) -> None:
    from sqlalchemy import text

    for level, number in (("FULL", 2), ("NORMAL", 1)):
        store = Store(f"sqlite:///{tmp_path / level}.db", sqlite_synchronous=level)
        try:
            with store.engine.connect() as conn:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert conn.execute(text("PRAGMA synchronous")).scalar() == number
        finally:
            store.close()


def test_committed_writes_reach_the_database_file_without_a_writer_checkpointing(tmp_path) -> None:
    """The checkpoint runs on a thread of its own: writers only append to the WAL."""
    import sqlite3
    import time

    from sqlalchemy import text

    path = tmp_path / "wal.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.write_sync(lambda c: c.execute(text("CREATE TABLE t (n INTEGER)")))
        store.write_sync(lambda c: c.execute(text("INSERT INTO t VALUES (1), (2), (3)")))
        with store.engine.connect() as conn:  # far below the writers' own threshold
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 16_384

        def in_main_file() -> int:
            # immutable=1 reads the database file alone, ignoring the WAL
            main = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            try:
                return int(main.execute("SELECT count(*) FROM t").fetchone()[0])
            except sqlite3.OperationalError:  # the table is not in the file yet
                return 0
            finally:
                main.close()

        deadline = time.monotonic() + 10
        while in_main_file() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_main_file() == 3
    finally:
        store.close()


def test_urls_hide_passwords() -> None:
    from tidings.store.engine import display_url

    shown = display_url("postgresql://tid:s3cret@db.example.com/tidings")
    assert "s3cret" not in shown
    assert shown.startswith("postgresql+psycopg://tid:***@db.example.com")


async def test_writes_queued_together_share_one_commit_and_fail_alone(store_url: str) -> None:
    """What queued behind a running write commits with one commit; a write that fails is rolled
    back alone and only its caller hears of it."""
    import asyncio
    import threading

    import pytest
    from sqlalchemy import event, select

    from tidings.exceptions import StoreError
    from tidings.store.schema import destination_state

    store = Store(store_url)
    store.upgrade()
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    now = datetime(2026, 3, 1, tzinfo=UTC)

    def add(name: str, fail: Exception | None = None):
        def write(conn) -> str:
            conn.execute(
                destination_state.insert().values(destination=name, consecutive_failures=0, updated_at=now)
            )
            if fail is not None:
                raise fail
            return name

        return write

    try:
        entered, gate = threading.Event(), threading.Event()

        def hold(conn) -> bool:
            entered.set()
            return gate.wait(10)

        first = asyncio.ensure_future(store.write(hold))
        assert await asyncio.to_thread(entered.wait, 10)  # the writer is inside `first`: the rest queue
        queued = [
            asyncio.ensure_future(store.write(add("a"))),
            asyncio.ensure_future(store.write(add("b", ValueError("bad data")))),
            asyncio.ensure_future(store.write(add("a"))),  # the same key again: a database error
            asyncio.ensure_future(store.write(add("c"))),
        ]
        gate.set()
        assert await first is True
        assert await queued[0] == "a"
        with pytest.raises(ValueError, match="bad data"):
            await queued[1]
        with pytest.raises(StoreError):
            await queued[2]
        assert await queued[3] == "c"
        assert len(commits) == 2  # `first` alone, then the four queued behind it together
        kept = store.read_sync(
            lambda conn: sorted(conn.execute(select(destination_state.c.destination)).scalars())
        )
        assert kept == ["a", "c"]
    finally:
        store.close()


async def test_the_sqlite_writer_keeps_one_connection_and_replaces_a_broken_one(tmp_path) -> None:
    """Each transaction used to check a connection out of the pool and back in, which cost more
    than a small transaction's statements; a connection that broke is not used again."""
    from sqlalchemy import event, select
    from sqlalchemy.exc import OperationalError

    from tidings.exceptions import StoreError
    from tidings.store.schema import destination_state

    store = Store(f"sqlite:///{tmp_path / 'one.db'}")
    store.upgrade()
    checkouts: list[int] = []
    event.listen(store.engine, "checkout", lambda *_: checkouts.append(1))
    now = datetime(2026, 3, 1, tzinfo=UTC)

    def add(name: str):
        def write(conn) -> None:
            conn.execute(
                destination_state.insert().values(destination=name, consecutive_failures=0, updated_at=now)
            )

        return write

    def breaks(conn) -> None:
        conn.invalidate()  # as SQLAlchemy does when the driver reports the connection lost
        raise OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    try:
        for name in ("a", "b", "c"):
            await store.write(add(name))
        assert len(checkouts) == 1
        with pytest.raises(StoreError, match="disk I/O error"):
            await store.write(breaks)
        await store.write(add("d"))
        assert len(checkouts) == 2  # a new connection after the broken one
        kept = store.read_sync(
            lambda conn: sorted(conn.execute(select(destination_state.c.destination)).scalars())
        )
        assert kept == ["a", "b", "c", "d"]
    finally:
        store.close()


def _migrate(store: Store, revision: str, *, down: bool = False) -> None:
    from alembic import command

    with store.engine.connect() as conn:
        cfg = store.alembic_config(conn)
        (command.downgrade if down else command.upgrade)(cfg, revision)
        conn.commit()


def test_flow_lines_move_out_of_the_timeline_into_the_journal_it_reads(store_url: str) -> None:
    """Up to 0007 each flow journal line was copied into the timeline; 0008 drops the copies (the
    timeline reads the journal), so a customer's timeline shows each line once, before and after."""
    from sqlalchemy import func, insert, select

    from tidings.profiles.read import load_timeline
    from tidings.store.schema import flow_runs, flow_steps, profiles, timeline

    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    store = Store(store_url)
    try:
        store.upgrade()
        _migrate(store, "0007", down=True)

        def old_data(conn):
            pid = conn.execute(
                insert(profiles).values(
                    created_at=at, updated_at=at, traits={}, trait_versions={}, consent={}, aggregates={}
                )
            ).inserted_primary_key[0]
            run = conn.execute(
                insert(flow_runs).values(
                    flow="cart",
                    version="v1",
                    run_key="c1",
                    profile_id=pid,
                    status="active",
                    step="wait",
                    claim=0,
                    visits=1,
                    context={},
                    started_at=at,
                    updated_at=at,
                )
            ).inserted_primary_key[0]
            line = {"run_id": run, "step": "wait", "kind": "wait", "reason": "until later"}
            conn.execute(
                insert(flow_steps).values(
                    run_id=run,
                    flow="cart",
                    profile_id=pid,
                    at=at,
                    step="wait",
                    kind="wait",
                    outcome="waiting",
                    reason="until later",
                    detail=None,
                )
            )
            conn.execute(
                insert(timeline),
                [
                    {
                        "profile_id": pid,
                        "at": at,
                        "recorded_at": at,
                        "kind": "trait",
                        "field": "plan",
                        "old": None,
                        "new": "gold",
                        "detail": None,
                    },
                    {
                        "profile_id": pid,
                        "at": at,
                        "recorded_at": at,
                        "kind": "flow",
                        "field": "cart",
                        "old": None,
                        "new": "waiting",
                        "detail": line,
                    },
                ],
            )
            return pid, line

        pid, line = store.write_sync(old_data)
        store.upgrade()
        entries = store.write_sync(lambda conn: load_timeline(conn, pid))
        assert [(e.kind, e.field, e.new) for e in entries] == [
            ("flow", "cart", "waiting"),
            ("trait", "plan", "gold"),
        ]
        assert entries[0].detail == line
        count = select(func.count()).select_from(timeline)
        assert store.write_sync(lambda conn: conn.execute(count).scalar()) == 1

        _migrate(store, "0007", down=True)  # and back: the copy is there again
        rows = store.write_sync(lambda conn: conn.execute(select(timeline.c.kind, timeline.c.detail)).all())
        assert sorted(kind for kind, _ in rows) == ["flow", "trait"]
        assert [detail for kind, detail in rows if kind == "flow"] == [line]
        store.upgrade()
    finally:
        store.close()


def test_a_sqlite_write_takes_the_lock_at_begin_and_a_read_does_not(tmp_path) -> None:
    """Writes begin IMMEDIATE: a second writer waits at BEGIN rather than failing (or deadlocking)
    when it first writes; reads leave the lock free."""
    import sqlite3

    store = Store(f"sqlite:///{tmp_path / 'lock.db'}")
    store.upgrade()
    other = sqlite3.connect(tmp_path / "lock.db", timeout=0, isolation_level=None)

    def try_to_write(_conn: object) -> str:
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return str(exc)
        other.execute("ROLLBACK")
        return "free"

    try:
        assert store.write_sync(try_to_write) == "database is locked"
        assert store.read_sync(try_to_write) == "free"
    finally:
        other.close()
        store.close()
