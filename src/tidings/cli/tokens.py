"""`tidings token new`: a fresh admin API token, and its config entry holding only its hash.

The token is printed once and stored nowhere; `server.admin_tokens` gets `token_sha256`, so the
config file (and whoever reads it) never holds the secret.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer
from pydantic import ValidationError

from tidings.cli import app, console, err_console

token_app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def parse_scopes(text: str) -> list[str]:
    """`read,write` -> ["read", "write"]; an unknown or empty scope is a usage error."""
    from tidings.api.auth import SCOPES

    scopes = [s.strip() for s in text.split(",")]
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        shown = ", ".join(repr(s) for s in bad)
        raise typer.BadParameter(
            f"unknown scope {shown}; use read, write or read,write", param_hint="--scopes"
        )
    return list(dict.fromkeys(scopes))


def _yaml_scalar(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text) else json.dumps(text)


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Option(help="What the token is for; named in logs and refusals.")] = "admin",
    scopes: Annotated[str, typer.Option(help="read, write, or read,write (comma-separated).")] = "read",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {name, token, token_sha256, scopes} as JSON.")
    ] = False,
) -> None:
    """Make a random admin token; print it (once) and the server.admin_tokens entry with its hash."""
    from tidings.api.auth import new_token
    from tidings.config import AdminToken

    wanted = parse_scopes(scopes)
    token, sha256 = new_token()
    try:
        AdminToken(name=name, token_sha256=sha256, scopes=wanted)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc.errors()[0]["msg"]), param_hint="--name") from None
    if as_json:
        typer.echo(json.dumps({"name": name, "token": token, "token_sha256": sha256, "scopes": wanted}))
        return
    entry = (
        "server:\n"
        "  admin_tokens:\n"
        f"    - name: {_yaml_scalar(name)}\n"
        f"      token_sha256: {sha256}\n"
        f"      scopes: [{', '.join(wanted)}]\n"
    )
    err_console.print("The token (shown only now; give it to the client as `Authorization: Bearer ...`):")
    console.print(token, markup=False, highlight=False, soft_wrap=True)
    err_console.print("\nAdd to tidings.yaml, then restart tidings:")
    console.print(entry, markup=False, highlight=False, soft_wrap=True, end="")
