"""`tidings deliveries list|retry`: what went to the destinations, and the dead letters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tidings.cli import ConfigOption, app, console, err_console, existing_store, settings_from
from tidings.clock import SystemClock
from tidings.config import DEFAULT_CONFIG_FILE
from tidings.delivery import outbox

deliveries_app = typer.Typer(help="Deliveries to destinations, and the dead letters.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")


@deliveries_app.command("list")
def list_deliveries(
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    status: Annotated[str | None, typer.Option(help="pending, in_flight, delivered or dead.")] = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List deliveries, newest first (`--status dead` for the dead letters)."""
    store = existing_store(settings_from(config))
    try:
        rows = store.read_sync(
            lambda c: outbox.list_deliveries(c, status=status, destination=destination, limit=limit)
        )
    finally:
        store.close()
    if as_json:
        for r in rows:
            typer.echo(
                json.dumps(
                    {
                        "id": r.id,
                        "destination": r.destination,
                        "action": r.action,
                        "status": r.status,
                        "attempts": r.attempts,
                        "created_at": r.created_at.isoformat(),
                        "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
                        "error": r.last_error,
                    }
                )
            )
        return
    table = Table("id", "destination", "action", "status", "attempts", "updated", "error", box=None)
    for r in rows:
        shown = f"[red]{r.status}[/]" if r.status == "dead" else r.status
        table.add_row(
            str(r.id),
            r.destination,
            r.action,
            shown,
            str(r.attempts),
            r.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
            (r.last_error or "")[:80],
        )
    console.print(table)


@deliveries_app.command("retry")
def retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead deliveries to send again.")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    all_dead: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Send dead letters again (they are picked up by the running tidings)."""
    if not ids and not all_dead:
        err_console.print("name the deliveries to retry, or --all")
        raise typer.Exit(2)
    store = existing_store(settings_from(config))
    try:
        count = store.write_sync(
            lambda c: outbox.retry_dead(c, SystemClock().now(), None if all_dead else ids)
        )
    finally:
        store.close()
    console.print(f"{count} dead letter(s) queued again")
