"""Shared fixtures: a real store (SQLite file, or PostgreSQL), a running tidings, an HTTP client.

PostgreSQL tests run against TIDINGS_TEST_PG_URL (default: the local server's `test` database).
When it is unreachable they are skipped locally, and fail under CI=true, where it must be up.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tidings.api.app import create_app
from tidings.app import Tidings
from tidings.clock import FakeClock
from tidings.config import Settings, parse_settings
from tidings.store.engine import normalise_url

# A copy of ../shared/contracts/fixtures, so the tests run from a clone alone.
FIXTURES = Path(__file__).resolve().parent / "fixtures"

PG_URL = os.environ.get("TIDINGS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fixture(path: str) -> Any:
    """A vendor fixture from the contracts folder, parsed."""
    return json.loads((FIXTURES / path).read_text())


def _pg_available() -> bool:
    try:
        engine = create_engine(normalise_url(PG_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


_PG_UP: bool | None = None


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own for this test session, dropped at the end."""
    global _PG_UP
    if _PG_UP is None:
        _PG_UP = _pg_available()
    if not _PG_UP:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}")
    name = f"tidings_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = normalise_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty store: a fresh SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tidings.db'}"
    url: str = request.getfixturevalue("pg_database")
    from tidings.store import Store

    store = Store(url)
    try:
        store.upgrade()
        from tidings.store.schema import metadata

        tables = ", ".join(t.name for t in metadata.sorted_tables)
        store.write_sync(lambda conn: conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")))
    finally:
        store.close()
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def settings_with(store_url: str, yaml_text: str = "", environ: dict[str, str] | None = None) -> Settings:
    """Settings from YAML text, on the given store."""
    settings = parse_settings(yaml_text or "{}", "test.yaml", environ or {})
    return settings.model_copy(update={"storage": settings.storage.model_copy(update={"url": store_url})})


@pytest.fixture
def running(store_url: str, clock: FakeClock) -> Callable[..., Any]:
    """`async with running(yaml) as (tidings, client):` a started tidings and a client bound to it.

    The processing stage runs in the background only with `process=True`; otherwise a test drives
    it (`await tidings.processor.drain()`), so what it asserts does not race with it.
    """

    @asynccontextmanager
    async def start(
        yaml_text: str = "",
        environ: dict[str, str] | None = None,
        *,
        process: bool = False,
    ) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient]]:
        settings = settings_with(store_url, yaml_text, environ)
        async with Tidings(settings, clock=clock, process=process) as tidings:
            app = create_app(tidings, manage_lifecycle=False)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://tidings.test") as client:
                yield tidings, client

    return start


def inbox_rows(tidings: Tidings) -> list[Any]:
    """Every stored inbox row, oldest first (what a test asserts the store holds)."""
    from sqlalchemy import select

    from tidings.store.schema import inbox

    return tidings.store.read_sync(lambda conn: list(conn.execute(select(inbox).order_by(inbox.c.id))))


def request_count(tidings: Tidings) -> int:
    from sqlalchemy import func, select

    from tidings.store.schema import requests

    return int(
        tidings.store.read_sync(
            lambda conn: conn.execute(select(func.count()).select_from(requests)).scalar_one()
        )
    )
