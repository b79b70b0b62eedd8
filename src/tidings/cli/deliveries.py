"""`tidings deliveries list|show|retry`: what went to the destinations, and the dead letters.

`show --json` prints the document of `GET /api/v1/deliveries/{id}`. The commands work on the
store directly; a running tidings picks up what `retry` queues (its dispatcher polls the store).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tidings.cli import ConfigOption, app, console, err_console, existing_store, settings_from
from tidings.clock import SystemClock
from tidings.config import DEFAULT_CONFIG_FILE
from tidings.delivery import outbox

if TYPE_CHECKING:  # imported where used: the web stack stays out of `tidings --help`
    from tidings.api.admin import DeliveryDetailOut

deliveries_app = typer.Typer(help="Deliveries to destinations, and the dead letters.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")

RETRY_BATCH = 1000  # dead letters per transaction; a progress bar shows beyond one batch
STATUS_STYLE = {"dead": "red", "delivered": "green", "in_flight": "yellow"}


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


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


@deliveries_app.command("show")
def show(
    delivery_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="The delivery's id.")],
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON document.")] = False,
) -> None:
    """One delivery: its payload and every attempt (status, latency, error)."""
    from tidings.api.admin import delivery_document

    store = existing_store(settings_from(config))
    try:
        document = store.read_sync(lambda c: delivery_document(c, delivery_id))
    finally:
        store.close()
    if document is None:
        err_console.print(f"No delivery with id {delivery_id}.")
        raise typer.Exit(1)
    if as_json:
        typer.echo(document.model_dump_json(indent=2))
        return
    console.print(_delivery_panel(document))


def _delivery_panel(d: DeliveryDetailOut) -> Panel:
    facts = Table(box=None, show_header=False)
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("status", Text(d.status, style=STATUS_STYLE.get(d.status, "")))
    facts.add_row("attempts", str(d.attempts))
    facts.add_row("created", _when(d.created_at))
    if d.status == outbox.PENDING:
        facts.add_row("next attempt", _when(d.next_attempt_at))
    if d.delivered_at is not None:
        facts.add_row("delivered", _when(d.delivered_at))
    if d.remote_id:
        facts.add_row("remote id", d.remote_id)
    if d.profile_id is not None:
        facts.add_row("profile", f"#{d.profile_id}")
    facts.add_row("idempotency key", d.idempotency_key)
    if d.error:
        facts.add_row("error", Text(d.error, style="red"))

    history = Table(
        "at", "outcome", "status", "latency", "error", box=None, title="Attempts", title_justify="left"
    )
    for a in d.history:
        history.add_row(
            _when(a.at),
            Text(a.outcome, style=STATUS_STYLE.get(a.outcome, "")),
            str(a.status_code) if a.status_code is not None else "-",
            f"{a.latency_ms} ms" if a.latency_ms is not None else "-",
            Text(a.error or ""),
        )
    parts: list[Any] = [
        facts,
        Text(),
        Text("Payload", style="italic"),
        JSON.from_data(d.payload, default=str),
    ]
    parts += [Text(), history if d.history else Text("No attempts yet.", style="dim")]
    return Panel(Group(*parts), title=f"Delivery #{d.id} · {d.destination} · {d.action}", expand=False)


@deliveries_app.command("retry")
def retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead deliveries to send again.")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    all_dead: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"queued": N}.')] = False,
) -> None:
    """Send dead letters again (they are picked up by the running tidings)."""
    if bool(ids) == all_dead:
        err_console.print("name the deliveries to retry, or --all (not both)")
        raise typer.Exit(2)
    store = existing_store(settings_from(config))
    try:
        count = _retry_all(store, quiet=as_json) if all_dead else _retry_these(store, ids or [])
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"queued": count}))
    else:
        console.print(f"{count} dead letter(s) queued again")


def _retry_these(store: Any, ids: list[int]) -> int:
    from tidings.api.admin import retry_refusal

    def write(conn: Any) -> int | str:
        refusal = retry_refusal(ids, outbox.statuses(conn, ids))
        if refusal is not None:
            return refusal[1]
        return outbox.retry_dead(conn, SystemClock().now(), ids)

    done = store.write_sync(write)
    if isinstance(done, str):
        err_console.print(f"Nothing retried: {done}.", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    return int(done)


def _retry_all(store: Any, *, quiet: bool) -> int:
    """Every dead letter, a batch per transaction, with a progress bar when there are many."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = store.read_sync(outbox.count_dead)
    show = total > RETRY_BATCH and not quiet
    done, after = 0, 0
    with Progress(
        TextColumn("retrying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    ) as bar:
        task = bar.add_task("retry", total=total)
        while True:
            queued, last = store.write_sync(
                partial(outbox.retry_dead_batch, now=SystemClock().now(), after_id=after, limit=RETRY_BATCH)
            )
            if last is None:
                break
            done, after = done + queued, last
            bar.update(task, completed=min(done, total))
    return done
