"""The schema: migrations produce exactly what schema.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

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
