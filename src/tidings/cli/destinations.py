"""`tidings destinations list|backfill`: each destination's state, and pushing every profile to one.

`list --json` prints the document of `GET /api/v1/destinations`; `backfill` does what
`POST /api/v1/destinations/{name}/backfill` does, in batches with a progress bar. Both work on the
store directly: a running tidings sends what `backfill` queues (its dispatcher polls the store).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from tidings.cli import ConfigOption, app, console, err_console, existing_store, settings_from
from tidings.clock import SystemClock
from tidings.config import DEFAULT_CONFIG_FILE
from tidings.delivery import outbox

destinations_app = typer.Typer(help="Destinations: their state, and profile backfills.", no_args_is_help=True)
app.add_typer(destinations_app, name="destinations")


@destinations_app.command("list")
def destinations_list(
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON document.")] = False,
) -> None:
    """Every destination: kind, whether it is paused and why, deliveries by status."""
    from pydantic import TypeAdapter

    from tidings.api.destinations import DestinationOut, destinations_document

    settings = settings_from(config)
    store = existing_store(settings)
    try:
        found = store.read_sync(lambda c: destinations_document(c, settings, SystemClock().now()))
    finally:
        store.close()
    if as_json:
        typer.echo(TypeAdapter(list[DestinationOut]).dump_json(found, indent=2).decode())
        return
    if not found:
        console.print("No destinations configured.")
        return
    table = Table("name", "kind", "sync", "queued", "delivered", "dead", "state", box=None)
    pauses = []
    for d in found:
        if d.paused_until is not None:
            state = Text("paused", "yellow")
            until = d.paused_until.strftime("%Y-%m-%d %H:%M:%S")
            pauses.append(f"{d.name} is paused until {until} UTC: {d.paused_reason or 'no reason recorded'}")
        elif d.consecutive_failures:
            state = Text(f"failing ({d.consecutive_failures} in a row)", "yellow")
        else:
            state = Text("ok", "green")
        dead = d.deliveries.get(outbox.DEAD, 0)
        table.add_row(
            d.name,
            d.kind,
            "yes" if d.profile_sync else "no",
            str(d.deliveries.get(outbox.PENDING, 0) + d.deliveries.get(outbox.IN_FLIGHT, 0)),
            str(d.deliveries.get(outbox.DELIVERED, 0)),
            Text(str(dead), "red" if dead else ""),
            state,
        )
    console.print(table)
    for line in pauses:  # whole lines, not squeezed into a column
        console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)


@destinations_app.command("backfill")
def backfill(
    name: Annotated[str, typer.Argument(help="The destination, as named under destinations:.")],
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    run: Annotated[
        str | None,
        typer.Option(help="Name the backfill: repeating a run queues nothing twice. Default: a new one."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="Profiles per transaction.")] = 500,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Push every current profile (with an email or phone) to NAME in the vendor's no-trigger
    mode (Klaviyo, Mailchimp: no flows or automations start); fields are rendered when sent."""
    import re

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tidings.api.destinations import RUN_PATTERN, BackfillOut, backfill_refusal, new_run

    if run is not None and not re.match(RUN_PATTERN, run):
        raise typer.BadParameter(
            "up to 64 letters, digits, _ . -, starting with a letter or digit", param_hint="--run"
        )
    settings = settings_from(config)
    refusal = backfill_refusal(settings, name)
    if refusal is not None:
        err_console.print(f"Cannot backfill: {refusal[1]}.", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    run = run or new_run()
    store = existing_store(settings)
    try:
        total = store.read_sync(outbox.count_backfill_profiles)
        if total and not yes:
            kind = settings.destinations[name].kind
            question = f"Queue a no-trigger push of {total} profile(s) to {name!r} ({kind})?"
            if not typer.confirm(question, err=True):
                err_console.print("Nothing queued.")
                raise typer.Exit(1)
        now = SystemClock().now()
        profiles = queued = 0
        after: int | None = 0
        with Progress(
            TextColumn("queueing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task("backfill", total=total)
            while after is not None:
                batch = store.write_sync(
                    partial(
                        outbox.enqueue_backfill,
                        destination=name,
                        run=str(run),
                        now=now,
                        after_id=after,
                        limit=batch_size,
                    )
                )
                profiles, queued, after = profiles + batch.scanned, queued + batch.queued, batch.last_id
                bar.update(task, completed=min(profiles, total))
    finally:
        store.close()
    summary = BackfillOut(destination=name, run=run, profiles=profiles, queued=queued)
    if as_json:
        typer.echo(summary.model_dump_json())
        return
    if profiles == 0:
        console.print("No current profile has an email or phone: nothing to push.")
        return
    console.print(
        f"Queued {queued} push(es) to [bold]{name}[/] for {profiles} profile(s) (run {run})"
        + (f"; {profiles - queued} were already queued" if profiles > queued else "")
    )
