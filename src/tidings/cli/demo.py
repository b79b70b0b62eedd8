"""`tidings demo`: see tidings work, with no account, no config and nothing sent anywhere."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

from tidings.cli import app, console


@app.command()
def demo(
    speed: Annotated[
        float,
        typer.Option(help="How many times faster than real time the demo's clock runs (1 to 300)."),
    ] = 60.0,
    port: Annotated[
        int,
        typer.Option(help="Port on 127.0.0.1 for tidings (0: any free one). Nothing listens elsewhere."),
    ] = 0,
    keep_running: Annotated[
        bool,
        typer.Option("--keep-running", help="Leave tidings up after the story, to explore the dashboard."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the summary as one JSON object on stdout (the rest on stderr)."),
    ] = False,
) -> None:
    """Play a scripted half hour of a Shopify store through the abandoned-cart flow, in about a minute.

    tidings runs on a temporary SQLite store in sandbox mode; a simulated shop sends signed webhooks
    to it, Klaviyo is a local simulator, and the clock runs fast. Shows each event, run, wait, send
    and skip as it happens, then what was sent to whom and what was not, and why.
    """
    from tidings.demo import DemoOptions, run_demo

    out = Console(stderr=True) if as_json else console
    result = asyncio.run(run_demo(DemoOptions(speed=speed, port=port, keep_running=keep_running), out))
    if as_json:
        typer.echo(json.dumps(result.as_json(), default=str))
