"""The store: one SQLAlchemy engine, writes serialised on one thread, reads on a small pool.

tidings speaks SQLAlchemy Core synchronously in worker threads rather than through an async
driver: the sqlite3 and psycopg C drivers are fast, a group commit is one call, and the event loop
never blocks. On SQLite, writers take the lock up front (`BEGIN IMMEDIATE`), so two writers never
deadlock on a lock upgrade; WAL lets readers run beside the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from tidings.exceptions import StoreError
from tidings.store.checkpoint import WAL_PAGES, Checkpointer
from tidings.store.codec import json_dumps, json_loads
from tidings.store.writer import Writer

T = TypeVar("T")
log = logging.getLogger("tidings.store")

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> URL:
    """`sqlite:///x.db` and `postgresql://...` in config; the drivers tidings ships with underneath."""
    parsed = make_url(
        url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    )
    if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    return parsed


def _write_failed(exc: SQLAlchemyError) -> StoreError:
    error = StoreError(f"store write failed: {type(exc).__name__}: {exc.__cause__ or exc}")
    error.__cause__ = exc
    return error


def display_url(url: str) -> str:
    return normalise_url(url).render_as_string(hide_password=True)


class Store:
    """Owns the engine. Every stage reads and writes through `read` and `write`."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5) -> None:
        self.url = normalise_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = self._sqlite_engine(sqlite_synchronous)
        else:
            self.engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                json_serializer=json_dumps,
                json_deserializer=json_loads,
            )
        self._checkpointer: Checkpointer | None = None  # started by the first write (SQLite files)
        self._starting = threading.Lock()
        self._checkpointed = self.dialect != "sqlite" or self.url.database in (None, "", ":memory:")
        self._writer = Writer(self._write_connection, _write_failed, hold=self.dialect == "sqlite")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tidings-store-read")

    def _sqlite_engine(self, synchronous: str) -> Engine:
        if self.url.database and self.url.database != ":memory:":
            Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_serializer=json_dumps,
            json_deserializer=json_loads,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")  # see checkpoint.py
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("tidings_write", False)
            statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
            # On the driver's connection: Core's execution path for this one keyword was a
            # sixteenth of the server's CPU at 100 webhooks/s. If it fails, Core's path runs it
            # again and handles the failure as always (its error, a dead connection invalidated).
            try:
                conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
            except sqlite3.Error:
                conn.exec_driver_sql(statement)

        return engine

    # ---------------------------------------------------------------- synchronous core

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        """A connection whose transactions take the write lock at BEGIN (SQLite)."""
        if not self._checkpointed:
            with self._starting:
                if not self._checkpointed:
                    self._checkpointer = Checkpointer(str(Path(str(self.url.database)).expanduser()))
                    self._checkpointed = True
        with self.engine.connect() as conn:
            yield conn.execution_options(tidings_write=True)

    def write_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction, in this thread; commit if it returns, roll back if
        it raises."""
        try:
            with self._write_connection() as conn, conn.begin():
                return fn(conn)
        except SQLAlchemyError as exc:
            raise _write_failed(exc) from exc

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.engine.connect() as conn, conn.begin():
                return fn(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}: {exc.__cause__ or exc}") from exc

    # ---------------------------------------------------------------- async faces

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in a write transaction on the writer thread (see writer.py): returns once it
        is committed, perhaps together with other writes that queued meanwhile."""
        result: T = await asyncio.wrap_future(self._writer.submit(fn))
        return result

    async def read(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self.read_sync, fn)

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute(text("SELECT 1")).scalar_one())

    # ---------------------------------------------------------------- schema

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to `revision` with Alembic."""
        from alembic import command

        with self.engine.connect() as conn:
            cfg = self.alembic_config(conn)
            command.upgrade(cfg, revision)
            conn.commit()

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def alembic_config(self, conn: Connection) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def close(self) -> None:
        self._writer.close()
        self._readers.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.engine.dispose()
