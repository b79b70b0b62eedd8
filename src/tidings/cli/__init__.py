"""The `tidings` command: every operator action is a verb here.

Errors are turned into exit codes in one place (`main`): 1 for a failed operation, 2 for a
configuration that does not validate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidings import __version__
from tidings.config import DEFAULT_CONFIG_FILE, Settings, load_settings
from tidings.exceptions import ConfigurationError, TidingsError
from tidings.store import Store
from tidings.store.engine import normalise_url

app = typer.Typer(
    name="tidings",
    help="A self-hosted, real-time bridge from CRMs and shops to Email Service Providers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
events_app = typer.Typer(help="What arrived.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(events_app, name="events")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="TIDINGS_CONFIG", help="The config file.", show_default=True),
]


def settings_from(config: Path) -> Settings:
    """The settings in `config`; with no file there, the built-in defaults (embedded SQLite)."""
    if not config.exists() and str(config) == DEFAULT_CONFIG_FILE:
        return Settings()
    return load_settings(config)


def existing_store(settings: Settings) -> Store:
    """The configured store, for commands that only read: a mistyped SQLite path is an error,
    not a new empty database."""
    url = normalise_url(settings.storage.url)
    database = url.database
    missing = database not in (None, "", ":memory:") and not Path(str(database)).exists()
    if url.get_backend_name() == "sqlite" and missing:
        raise TidingsError(f"no store at {database} (is storage.url right? `tidings db upgrade` creates it)")
    return Store(settings.storage.url, sqlite_synchronous=settings.storage.sqlite_synchronous)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"tidings {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


from tidings.cli import commands as _commands  # noqa: E402  (registers the verbs)
from tidings.cli import deliveries as _deliveries  # noqa: E402  (deliveries list|show|retry)
from tidings.cli import demo as _demo  # noqa: E402, F401  (demo)
from tidings.cli import destinations as _destinations  # noqa: E402  (destinations list|backfill)
from tidings.cli import flows as _flows  # noqa: E402  (simulate, flows list|runs)
from tidings.cli import profiles as _profiles  # noqa: E402  (profile show|timeline, replay)
from tidings.cli import tokens as _tokens  # noqa: E402  (token new)

__all__ = ["app", "main"]
_ = (_commands, _deliveries, _destinations, _flows, _profiles, _tokens)


def main() -> None:
    try:
        app()
    except ConfigurationError as exc:
        err_console.print(f"[bold red]Configuration error[/]: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            # One line each, never wrapped: editors and CI annotate from `file:line:`.
            err_console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except TidingsError as exc:
        err_console.print(f"[bold red]Error[/]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if os.environ.get("TIDINGS_CLI_DEBUG"):  # pragma: no cover
    app.pretty_exceptions_enable = True
