"""The verbs: profile show|timeline (read the store directly) and replay (re-process stored events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection

from tidings.cli import ConfigOption, app, console, err_console, existing_store, settings_from
from tidings.config import DEFAULT_CONFIG_FILE, Settings

if TYPE_CHECKING:  # imported where used: the web stack and the processor stay out of `tidings --help`
    from tidings.api.profiles import ProfileOut, TimelinePage
    from tidings.replay import Selection, Summary

profile_app = typer.Typer(help="Customer profiles.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")

T = TypeVar("T")

RefArgument = Annotated[
    str,
    typer.Argument(
        metavar="EMAIL|REF",
        help="An email address, a profile id, or kind:value (user_id:u1, shopify:customer:123).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON document.")]


def _read(config: Path, fn: Callable[[Connection], T]) -> T:
    settings = settings_from(config)
    store = existing_store(settings)
    try:
        return store.read_sync(fn)
    finally:
        store.close()


def _not_found(ref: str) -> typer.Exit:
    err_console.print(f"No profile matches {ref!r}.", highlight=False)
    return typer.Exit(1)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _short(value: Any, width: int = 60) -> str:
    text = "∅" if value is None else _value(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------ profile show


@profile_app.command("show")
def profile_show(
    ref: RefArgument,
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """A customer's identities, traits and consent."""
    from tidings.api.profiles import profile_document

    document = _read(config, lambda conn: profile_document(conn, ref))
    if document is None:
        raise _not_found(ref)
    if as_json:
        typer.echo(document.model_dump_json(indent=2))
        return
    console.print(_profile_panel(document))


def _profile_panel(p: ProfileOut) -> Panel:
    head = Text.assemble(
        ("created ", "dim"),
        p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ("  updated ", "dim"),
        p.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
    )
    if p.merged_from:
        head.append("  merged from ", "dim").append(", ".join(f"#{i}" for i in p.merged_from))
    parts: list[Any] = [head]
    if p.redirected_from is not None:
        parts.append(Text(f"#{p.redirected_from} was merged into this profile", style="yellow"))

    ids = Table("identity", "value", box=None, title="Identities", title_justify="left")
    for identity in p.identities:
        ids.add_row(identity.kind, identity.value)
    parts += [Text(), ids]

    traits = Table("trait", "value", box=None, title="Traits", title_justify="left")
    for name in sorted(p.traits):
        traits.add_row(name, Text(_short(p.traits[name], 80)))
    parts += [Text(), traits if p.traits else Text("No traits.", style="dim")]

    consent = Table("channel", "state", "since", "source", box=None, title="Consent", title_justify="left")
    for channel, entry in sorted(p.consent.items()):
        style = {"subscribed": "green", "unsubscribed": "red"}.get(entry.state, "")
        consent.add_row(
            channel,
            Text(entry.state, style=style),
            entry.at.strftime("%Y-%m-%d %H:%M:%S") if entry.at else "",
            entry.source or "",
        )
    parts += [Text(), consent if p.consent else Text("No consent recorded (unknown).", style="dim")]
    title = next((i.value for i in p.identities if i.kind == "email"), None)
    return Panel(Group(*parts), title=f"Profile #{p.id}" + (f" · {title}" if title else ""), expand=False)


# ------------------------------------------------------------------ profile timeline


@profile_app.command("timeline")
def profile_timeline(
    ref: RefArgument,
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many entries, newest first.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many newest entries.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """What happened to a customer, newest first: events, trait and consent changes, merges."""
    from tidings.api.profiles import timeline_document

    page = _read(config, lambda conn: timeline_document(conn, ref, limit=lines, offset=offset))
    if page is None:
        raise _not_found(ref)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    console.print(_timeline_table(page))


def _timeline_table(page: TimelinePage) -> Table:
    table = Table("at", "what", "detail", "event", box=None, title=f"Profile #{page.profile_id}")
    for e in page.entries:
        if e.kind == "event":
            what, detail = Text(e.name or "?", style="bold"), Text(f"from {e.source}", style="dim")
        elif e.kind == "merge":
            what = Text("merge", style="magenta")
            detail = Text(f"#{e.merged_profile} merged in: {', '.join(e.identities or [])}")
        else:
            label = "consent " if e.kind == "consent" else ""
            what = Text(f"{label}{e.field}", style="cyan")
            detail = Text(f"{_short(e.old, 30)} → {_short(e.new, 50)}")
        cause = (
            f"#{e.event_id} {e.name or ''}".strip() if e.event_id is not None and e.kind != "event" else ""
        )
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), what, detail, Text(cause, style="dim"))
    if not page.entries:
        table.caption = "nothing (yet)"
    elif page.next_offset is not None:
        table.caption = f"older entries: --offset {page.next_offset}"
    return table


# ------------------------------------------------------------------ replay


@app.command("replay")
def replay_command(
    since: Annotated[
        str, typer.Option(help="Received at or after: ISO 8601 (UTC unless given), or ago: 2h, 7d.")
    ],
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    until: Annotated[str | None, typer.Option(help="Received before: same forms as --since.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Re-apply stored events (e.g. after fixing a mapping): processed, unmapped and failed ones
    are mapped and applied again with the current config. Idempotent."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tidings.app import Tidings
    from tidings.replay import Summary, count_replayable, replay

    settings = settings_from(config)
    selection = _selection(settings, since, until, source)

    async def run() -> Summary | None:
        async with Tidings(settings, process=False) as tidings:
            counts = await tidings.store.read(lambda conn: count_replayable(conn, selection))
            total = sum(counts.values())
            if total == 0:
                return Summary()
            if not yes:
                shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                question = f"Replay {total} stored event(s) ({shown})?"
                if not await asyncio.to_thread(typer.confirm, question):
                    return None
            with Progress(
                TextColumn("replaying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("replay", total=total)

                def show(done: int, of: int) -> None:
                    bar.update(task, completed=done, total=of)

                return await replay(tidings, selection, progress=show)

    summary = asyncio.run(run())
    if summary is None:
        err_console.print("Nothing replayed.")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
        return
    if summary.replayed == 0:
        console.print("Nothing to replay in that window.")
        return
    console.print(
        f"Replayed {summary.replayed}: [green]{summary.processed} processed[/], "
        f"{summary.unmapped} unmapped, [red]{summary.failed} failed[/]"
        + (f", {summary.pending} still pending" if summary.pending else "")
    )
    for status, error, n in summary.reasons:
        console.print(f"  {n} x {status}: {error}", highlight=False, markup=False, soft_wrap=True)


def _selection(settings: Settings, since: str, until: str | None, source: str | None) -> Selection:
    from tidings.clock import SystemClock
    from tidings.replay import Selection, parse_when

    now = SystemClock().now()
    try:
        start = parse_when(since, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    try:
        end = parse_when(until, now) if until is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--until") from None
    if end is not None and end <= start:
        raise typer.BadParameter("must be later than --since", param_hint="--until")
    if source is not None and source not in settings.sources:
        known = ", ".join(sorted(settings.sources)) or "none"
        raise typer.BadParameter(
            f"no source {source!r} in the config (sources: {known})", param_hint="--source"
        )
    return Selection(since=start, until=end, source=source)
