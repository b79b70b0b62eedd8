"""The `tidings` command: init, check (exit codes through `main`), db, events tail, --version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from tests.integration.test_standard_webhooks import CONFIG, signed
from tidings import __version__
from tidings.cli import app
from tidings.store.engine import MIGRATIONS, normalise_url

runner = CliRunner()


def tidings(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m tidings ...` in a process of its own: exit codes as `main` sets them."""
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def head_revision() -> str:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def config_file(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(f'storage:\n  url: "{url}"\n{extra}')
    return path


# ------------------------------------------------------------------ --version, init


def test_version() -> None:
    result = tidings("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tidings {__version__}"


def test_init_writes_the_starter_file(tmp_path: Path) -> None:
    target = tmp_path / "tidings.yaml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == resources.files("tidings.cli").joinpath("starter.yaml").read_text()
    assert f"tidings check -c {target}" in result.output


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "tidings.yaml"
    target.write_text("# my own, carefully edited config\n")
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 1
    assert "--force" in result.stderr
    assert target.read_text() == "# my own, carefully edited config\n"

    result = runner.invoke(app, ["init", str(target), "--force"])
    assert result.exit_code == 0, result.output
    assert target.read_text().startswith("# tidings.yaml")


def test_the_written_starter_file_passes_check(tmp_path: Path) -> None:
    assert tidings("init", cwd=tmp_path).returncode == 0
    result = tidings("check", "-c", "tidings.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tidings.yaml is valid" in result.stdout


# ------------------------------------------------------------------ check

BROKEN = """\
server:
  listen: localhost
storage:
  dedupe_window: 7 days
sources:
  crm:
    kind: pipedrive
  app:
    kind: standard-webhooks
    secrets: ["${APP_SECRET}"]
"""


def test_check_exits_0_on_a_valid_file_and_lists_the_sources(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(CONFIG)
    result = tidings("check", "-c", "good.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "good.yaml is valid" in result.stdout
    assert "source app (standard-webhooks)" in result.stdout


def test_check_exits_2_with_one_file_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BROKEN)
    result = tidings("check", "-c", "bad.yaml", cwd=tmp_path, env={"APP_SECRET": ""})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0] == "Configuration error: 4 problem(s)"
    located = [re.match(r"^bad\.yaml:(\d+): ([\w.\[\]]+): (.+)$", line) for line in lines[1:]]
    assert all(located), lines  # each problem on one line of its own, never wrapped
    assert [(int(m[1]), m[2]) for m in located if m] == [
        (2, "server.listen"),
        (4, "storage.dedupe_window"),
        (7, "sources.crm.kind"),
        (10, "sources.app.secrets"),
    ]
    assert "segment" in lines[3]  # the known kinds, on the same line


def test_check_reads_the_file_named_by_tidings_config(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("server:\n  listen: nope\n")
    result = tidings("check", cwd=tmp_path, env={"TIDINGS_CONFIG": "bad.yaml"})
    assert result.returncode == 2
    assert "bad.yaml:2: server.listen:" in result.stderr


def test_check_of_a_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    result = tidings("check", "-c", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml: cannot read" in result.stderr


def test_check_never_prints_the_database_password(tmp_path: Path) -> None:
    config_file(tmp_path / "t.yaml", "postgresql://tidings:${DB_PASSWORD}@db.internal/tidings")
    result = tidings("check", "-c", "t.yaml", cwd=tmp_path, env={"DB_PASSWORD": "hunter2-secret"})
    assert result.returncode == 0, result.stderr
    assert "db.internal" in result.stdout
    assert "hunter2-secret" not in result.stdout + result.stderr


# ------------------------------------------------------------------ db upgrade / current


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store with no schema at all: a new SQLite path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'tidings.db'}"
        return
    server = normalise_url(request.getfixturevalue("pg_database"))
    name = f"tidings_cli_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_db_upgrade_creates_the_schema_and_current_reports_it(tmp_path: Path, empty_store_url: str) -> None:
    config = str(config_file(tmp_path / "t.yaml", empty_store_url))
    head = head_revision()

    before = runner.invoke(app, ["db", "current", "-c", config])
    assert before.exit_code == 0, before.output
    assert "empty" in before.output

    upgrade = runner.invoke(app, ["db", "upgrade", "-c", config])
    assert upgrade.exit_code == 0, upgrade.output
    assert f"schema at {head}" in upgrade.output

    engine = create_engine(normalise_url(empty_store_url))
    try:
        assert {"requests", "inbox", "dedupe_keys"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()

    again = runner.invoke(app, ["db", "upgrade", "-c", config])  # a second run changes nothing
    assert again.exit_code == 0, again.output
    current = runner.invoke(app, ["db", "current", "-c", config])
    assert current.exit_code == 0, current.output
    assert current.output.strip() == head


# ------------------------------------------------------------------ events tail


async def test_events_tail_json_prints_the_latest_events_oldest_first(
    running, clock, store_url: str, tmp_path: Path
) -> None:
    async with running(CONFIG) as (_, client):
        for i in range(7):
            body = json.dumps({"type": f"order.t{i}", "data": {"n": i}}).encode()
            response = await client.post(
                "/hooks/app", content=body, headers=signed(body, f"msg_{i}", clock.now())
            )
            assert response.status_code == 200, response.text
    config = str(config_file(tmp_path / "t.yaml", store_url))

    result = runner.invoke(app, ["events", "tail", "--json", "-n", "5", "-c", config])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["dedupe_key"] for e in events] == [f"msg_{i}" for i in range(2, 7)]
    assert [e["topic"] for e in events] == [f"order.t{i}" for i in range(2, 7)]
    assert {e["source"] for e in events} == {"app"}
    assert events == sorted(events, key=lambda e: e["id"])
    assert all(e["size"] > 0 and e["received_at"] and e["status"] for e in events)

    other = runner.invoke(app, ["events", "tail", "--json", "--source", "elsewhere", "-c", config])
    assert other.exit_code == 0, other.output
    assert other.stdout == ""


def test_serve_refuses_a_bad_listen_address_before_starting(tmp_path: Path) -> None:
    config = str(config_file(tmp_path / "t.yaml", f"sqlite:///{tmp_path / 't.db'}"))
    result = runner.invoke(app, ["serve", "-c", config, "--listen", "8080"])
    assert result.exit_code == 2
    assert "--listen" in result.output
    assert "HOST:PORT" in result.output
    assert not (tmp_path / "t.db").exists()  # nothing was opened


def test_reading_commands_refuse_a_store_that_does_not_exist(tmp_path) -> None:
    """A mistyped SQLite path is an error, not a new empty database."""
    import subprocess
    import sys

    config = tmp_path / "t.yaml"
    config.write_text(f"storage:\n  url: sqlite:///{tmp_path}/typo/x.db\n")
    for verb in (["events", "tail"], ["profile", "show", "a@b.co"], ["profile", "timeline", "a@b.co"]):
        done = subprocess.run(
            [sys.executable, "-m", "tidings", *verb, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, (verb, done.stdout, done.stderr)
        assert "no store at" in done.stderr
    assert not (tmp_path / "typo").exists()
