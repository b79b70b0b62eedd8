"""`tidings simulate` and `tidings flows list|runs`: what flows would do, and what they did."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tidings.cli import ConfigOption, app, console, existing_store, settings_from
from tidings.config import DEFAULT_CONFIG_FILE, load_settings
from tidings.flows.catalog import FlowCatalog
from tidings.flows.read import list_runs, summaries
from tidings.flows.simulate import Change, Decision, Simulation, compare, read_events, simulate

flows_app = typer.Typer(help="Flows and their runs.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")

EventsOption = Annotated[
    Path, typer.Option("--events", "-e", help="Events to replay, one JSON object a line.")
]


@app.command("simulate")
def simulate_command(
    events: EventsOption,
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    compare_with: Annotated[
        tuple[Path, Path] | None,
        typer.Option("--compare", help="Two configs (OLD NEW): what would the change alter, send by send."),
    ] = None,
    as_json: Annotated[
        Path | None,
        typer.Option("--json", help="Also write every decision as JSON to this file ('-': stdout)."),
    ] = None,
) -> None:
    """Replay recorded events through the flows on a virtual clock; nothing is sent anywhere."""
    stream = read_events(events)
    if compare_with is not None:
        old_file, new_file = compare_with
        old = asyncio.run(simulate(load_settings(old_file), stream))
        new = asyncio.run(simulate(load_settings(new_file), read_events(events)))
        changes = compare(old, new)
        if as_json is not None:
            _write(as_json, {"changes": [_change_json(c) for c in changes]})
        if as_json is None or str(as_json) != "-":
            _print_changes(changes, old, new)
        return
    result = asyncio.run(simulate(settings_from(config), stream))
    if as_json is not None:
        _write(
            as_json,
            {
                "events": result.events,
                "runs": result.runs,
                "decisions": [d.as_json() for d in result.decisions],
            },
        )
    if as_json is None or str(as_json) != "-":
        _print_decisions(result)


def _write(target: Path, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2, default=str)
    if str(target) == "-":
        typer.echo(text)
    else:
        target.write_text(text + "\n")


def _print_decisions(result: Simulation) -> None:
    colours = {"sent": "green", "skipped": "yellow", "delayed": "cyan"}
    for d in result.decisions:
        colour = colours.get(d.outcome, "white")
        head = f"{d.at:%Y-%m-%d %H:%M}  {d.flow}  {d.run_key}  {d.customer or '-'}  {d.step}"
        to = f" -> {d.destination} {d.action}" if d.destination else ""
        console.print(f"{head}  [{colour}]{d.outcome}[/]{to}", highlight=False)
        if d.outcome == "sent" and d.payload is not None:
            console.print(
                f"    {json.dumps(_brief(d.payload), default=str)}", highlight=False, soft_wrap=True
            )
        if d.reason:
            console.print(f"    [dim]{d.reason}[/]", highlight=False)
    sent = len(result.sends)
    skipped = sum(1 for d in result.decisions if d.outcome == "skipped")
    console.print(f"{result.events} events, runs {result.runs or {}}: {sent} sends, {skipped} skipped")


def _brief(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in ("profile_id", "occurred_at")}


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "flow": change.key[0],
        "run_key": change.key[1],
        "step": change.key[2],
        "occurrence": change.key[3],
        "kind": change.kind,
        "differences": change.differences,
        "old": change.old.as_json() if change.old else None,
        "new": change.new.as_json() if change.new else None,
    }


def _print_changes(changes: list[Change], old: Simulation, new: Simulation) -> None:
    for c in changes:
        flow, key, step, nth = c.key
        which = f" (#{nth})" if nth > 1 else ""
        what = ", ".join(c.differences) if c.differences else c.kind
        console.print(f"[bold]{flow}  {key}  {step}{which}[/]  {c.kind}: {what}", highlight=False)
        console.print(f"    old: {_side(c.old, c.differences)}", highlight=False, soft_wrap=True)
        console.print(f"    new: {_side(c.new, c.differences)}", highlight=False, soft_wrap=True)
    console.print(f"sends: {len(old.sends)} before, {len(new.sends)} after; {len(changes)} decisions differ")


def _side(d: Decision | None, differences: list[str]) -> str:
    if d is None:
        return "-"
    parts = [f"{d.outcome} at {d.at:%Y-%m-%d %H:%M}"]
    if d.destination:
        parts.append(f"{d.destination} {d.action}")
    if ("payload" in differences or not differences) and d.payload is not None:
        parts.append(json.dumps(_brief(d.payload), default=str))
    if d.reason and d.outcome != "sent":
        parts.append(d.reason)
    return "; ".join(parts)


@flows_app.command("list")
def flows_list(
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
) -> None:
    """Every flow: its runs by status, where active runs stand, sends and skips by reason."""
    settings = settings_from(config)
    store = existing_store(settings)
    try:
        found = store.read_sync(lambda c: summaries(c, FlowCatalog(settings.flows)))
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([_summary(s) for s in found], default=str))
        return
    table = Table("flow", "version", "runs", "active by step", "sends", "skipped because", box=None)
    for s in found:
        table.add_row(
            s.name,
            s.version,
            _counts(s.runs),
            _counts(s.active_by_step),
            _counts(s.sends),
            _counts(s.skip_reasons),
        )
    console.print(table)


def _summary(s: Any) -> dict[str, Any]:
    return {name: getattr(s, name) for name in s.__slots__}


def _counts(found: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(found.items())) or "-"


@flows_app.command("runs")
def flows_runs(
    flow: Annotated[str, typer.Argument(help="The flow's name.")],
    config: ConfigOption = Path(DEFAULT_CONFIG_FILE),
    status: Annotated[str | None, typer.Option(help="active, completed, exited or failed.")] = None,
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """A flow's runs, newest first, with every step taken and why."""
    store = existing_store(settings_from(config))
    try:
        found = store.read_sync(lambda c: list_runs(c, flow, status=status, limit=limit))
    finally:
        store.close()
    for run in found:
        if as_json:
            typer.echo(json.dumps(_summary(run) | {"steps": [_summary(s) for s in run.steps]}, default=str))
            continue
        state = f"{run.status} at {run.step}" if run.status == "active" else f"{run.status}: {run.end_reason}"
        console.print(f"[bold]run {run.id}[/] key {run.key} profile {run.profile_id} ({state})")
        for s in run.steps:
            console.print(
                f"  {s.at:%Y-%m-%d %H:%M:%S}  {s.step:<12} {s.kind:<10} {s.outcome:<9} {s.reason or ''}"
            )
