"""The verbs: init, check, serve, db upgrade|current, events tail."""

from __future__ import annotations

import enum
import json
import time
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from tidings.cli import (
    ConfigOption,
    app,
    console,
    db_app,
    err_console,
    events_app,
    existing_store,
    settings_from,
)
from tidings.config import DEFAULT_CONFIG_FILE, ServerSettings
from tidings.exceptions import TidingsError
from tidings.store import Store
from tidings.store.engine import display_url
from tidings.store.inbox import InboxEntry, list_entries


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter config.")] = Path(
        DEFAULT_CONFIG_FILE
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter tidings.yaml."""
    if path.exists() and not force:
        err_console.print(f"{path} exists; use --force to overwrite it.")
        raise typer.Exit(1)
    path.write_text(resources.files("tidings.cli").joinpath("starter.yaml").read_text())
    console.print(
        f"Wrote {path}. Next: [bold]tidings check -c {path}[/], then [bold]tidings serve -c {path}[/].",
        soft_wrap=True,  # the commands stay whole, to be copied
    )


@app.command()
def check(config: ConfigOption = Path(DEFAULT_CONFIG_FILE)) -> None:
    """Validate the config file; exit 2 listing every problem (file:line: key: message)."""
    settings = settings_from(config)
    console.print(f"[green]✓[/] {config} is valid")
    console.print(f"  storage: {display_url(settings.storage.url)}")
    for name, source in settings.sources.items():
        console.print(f"  source [bold]{name}[/] ({source.kind})")


class Role(enum.StrEnum):
    all = "all"
    ingest = "ingest"
    worker = "worker"


@app.command()
def serve(
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    listen: Annotated[str | None, typer.Option(help="HOST:PORT, overriding server.listen.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    role: Annotated[
        Role,
        typer.Option(
            envvar="TIDINGS_ROLE",
            help="all: receive and process. ingest: receive and store only. worker: process only "
            "(its HTTP server keeps /healthz, /readyz, /metrics and /api). Run an ingest and a worker "
            "process on one store to use two cores.",
        ),
    ] = Role.all,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Send nothing for real: every destination is a local simulator on 127.0.0.1 that "
            "records what it was sent (GET /api/v1/sandbox/requests). Same as `sandbox: true`.",
        ),
    ] = False,
) -> None:
    """Run tidings: receive webhooks, process them, serve the API."""
    import uvicorn

    from tidings import logging as tlogging
    from tidings.api.app import create_app
    from tidings.app import Tidings

    settings = settings_from(config)
    if listen is not None:
        try:  # validated like server.listen (model_copy alone would not check it)
            server = ServerSettings.model_validate({**settings.server.model_dump(), "listen": listen})
        except ValidationError as exc:
            raise typer.BadParameter(
                exc.errors()[0]["msg"].removeprefix("Value error, "), param_hint="--listen"
            ) from exc
        settings = settings.model_copy(update={"server": server})
    if sandbox:
        settings = settings.model_copy(update={"sandbox": True})
    tlogging.configure(log_level)
    server = settings.server
    err_console.print(
        f"tidings ({role.value}) listening on http://{server.listen} "
        f"(store: {display_url(settings.storage.url)})"
    )
    if settings.sandbox and role is not Role.ingest:
        err_console.print(
            "[yellow]sandbox mode[/]: destinations are local simulators; nothing is sent "
            "(see GET /api/v1/sandbox/requests)"
        )
    uvicorn.run(
        create_app(Tidings(settings, process=role is not Role.ingest), receive=role is not Role.worker),
        host=server.host,
        port=server.port,
        log_level="warning",
        log_config=None,  # our JSON logging stays in charge of uvicorn's loggers too
        access_log=False,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        backlog=4096,
        timeout_graceful_shutdown=10,
    )


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = Path(DEFAULT_CONFIG_FILE)) -> None:
    """Create or migrate the schema to the latest version."""
    settings = settings_from(config)
    store = Store(settings.storage.url, sqlite_synchronous=settings.storage.sqlite_synchronous)
    try:
        store.upgrade()
        console.print(
            f"[green]✓[/] schema at {store.current_revision()} ({display_url(settings.storage.url)})"
        )
    finally:
        store.close()


@db_app.command("current")
def db_current(config: ConfigOption = Path(DEFAULT_CONFIG_FILE)) -> None:
    """Print the schema revision."""
    settings = settings_from(config)
    try:
        store = existing_store(settings)
    except TidingsError as exc:
        console.print(f"empty: {exc}")
        return
    try:
        console.print(store.current_revision() or "empty (run tidings db upgrade)")
    finally:
        store.close()


def _entry_json(entry: InboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "source": entry.source,
        "topic": entry.topic,
        "dedupe_key": entry.dedupe_key,
        "received_at": entry.received_at.isoformat(),
        "status": entry.status,
        "error": entry.error,
        "size": entry.size,
    }


@events_app.command("tail")
def events_tail(
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many recent events to show first.")] = 20,
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.")] = 1.0,
) -> None:
    """List what arrived, newest last; with --follow, keep watching."""
    settings = settings_from(config)
    store = existing_store(settings)

    def show(entries: list[InboxEntry]) -> None:
        if as_json:
            for entry in entries:
                typer.echo(json.dumps(_entry_json(entry)))
            return
        if not entries:
            return
        table = Table("id", "received", "source", "topic", "status", "bytes", "dedupe key", box=None)
        for e in entries:
            status = f"[yellow]{e.status}[/]" if e.status == "flagged" else e.status
            table.add_row(
                str(e.id),
                e.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                e.source,
                e.topic or "",
                status,
                str(e.size),
                e.dedupe_key[:40],
            )
        console.print(table)

    try:
        recent = store.read_sync(lambda conn: list_entries(conn, source=source, limit=lines))
        recent.reverse()
        show(recent)
        last = recent[-1].id if recent else 0
        while follow:
            time.sleep(interval)
            new = store.read_sync(partial(list_entries, source=source, after_id=last, limit=500))
            show(new)
            if new:
                last = new[-1].id
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
