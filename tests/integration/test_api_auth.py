"""Every admin API route, found by walking the app's routes, refuses the wrong token the same way.

No token and a wrong token are 401; a token without the route's scope is 403 (a read-only token on
a write, a write-only token on a read). A route added without `require(...)` fails here.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from tidings.api.app import create_app
from tidings.api.auth import required_scope
from tidings.app import Tidings
from tidings.config import AdminToken, Settings, parse_settings

READ = "read-token-0123456789"
WRITE = "write-token-0123456789"
BOTH = "both-token-0123456789"
HASHED = "hashed-token-0123456789"
CONFIG = f"""
server:
  admin_tokens:
    - {{name: reader, token: "{READ}", scopes: [read]}}
    - {{name: writer, token: "{WRITE}", scopes: [write]}}
    - {{name: operator, token: "{BOTH}", scopes: [read, write]}}
    - {{name: hashed, token_sha256: "{hashlib.sha256(HASHED.encode()).hexdigest()}", scopes: [read, write]}}
"""


def admin_routes() -> list[tuple[str, str, str | None]]:
    """(method, path, scope) of every route under /api, from the app itself."""
    app = create_app(Tidings(Settings(), process=False), manage_lifecycle=False)
    found = []
    for context in iter_route_contexts(app.api.routes):  # included routers, flattened
        route, path = context.original_route, str(context.path)
        if isinstance(route, APIRoute) and path.startswith("/api/"):
            scopes = [required_scope(d.call) for d in route.dependant.dependencies if d.call is not None]
            scope = next((s for s in scopes if s is not None), None)
            for method in sorted(route.methods):
                found.append((method, path, scope))
    return found


ROUTES = admin_routes()


def call_args(method: str, path: str) -> dict[str, Any]:
    url = re.sub(r"\{[^}]+\}", "1", path)  # any value: the token is checked before anything else
    return {"method": method, "url": url, **({"json": {}} if method == "POST" else {})}


def test_every_admin_route_needs_a_scope_and_the_scope_fits_the_method() -> None:
    assert len(ROUTES) >= 11  # events, profiles x2, deliveries x4, destinations x2, flows x3
    assert [(m, p) for m, p, scope in ROUTES if scope is None] == []
    assert [(m, p, s) for m, p, s in ROUTES if s != ("read" if m == "GET" else "write")] == []


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"authorization": "Bearer not-a-token-at-all"}, 401, "unauthorized"),
        ({"authorization": f"Bearer {READ}x"}, 401, "unauthorized"),
        ({"authorization": f"Basic {READ}"}, 401, "unauthorized"),
        ({"authorization": "Bearer "}, 401, "unauthorized"),
    ],
    ids=["none", "wrong", "almost", "not-bearer", "empty"],
)
async def test_no_token_or_a_wrong_one_is_401_on_every_route(running, headers, status, code) -> None:
    async with running(CONFIG) as (_, client):
        for method, path, _scope in ROUTES:
            response = await client.request(**call_args(method, path), headers=headers)
            assert response.status_code == status, (method, path, response.text)
            assert response.json()["error"] == code, (method, path)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_a_token_without_the_routes_scope_is_403_on_every_route(running) -> None:
    async with running(CONFIG) as (_, client):
        for method, path, scope in ROUTES:
            token, name = (WRITE, "writer") if scope == "read" else (READ, "reader")
            response = await client.request(
                **call_args(method, path), headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == 403, (method, path, response.text)
            body = response.json()
            assert body == {"error": "forbidden", "detail": f"the token {name!r} lacks the {scope!r} scope"}


async def test_a_token_with_the_scope_gets_past_authentication_on_every_route(running) -> None:
    """Plain and hashed tokens alike: whatever the answer, it is not an authentication refusal."""
    async with running(CONFIG) as (_, client):
        for token in (BOTH, HASHED):
            for method, path, _scope in ROUTES:
                response = await client.request(
                    **call_args(method, path), headers={"authorization": f"Bearer {token}"}
                )
                assert response.status_code not in (401, 403), (method, path, response.text)


# ------------------------------------------------------------------ tokens in the config


def test_a_plain_token_is_hashed_on_load_and_a_hash_is_taken_as_given() -> None:
    settings = parse_settings(CONFIG, "t.yaml", {})
    by_name = {t.name: t for t in settings.server.admin_tokens}
    assert by_name["reader"].digest == hashlib.sha256(READ.encode()).digest()
    assert by_name["hashed"].digest == hashlib.sha256(HASHED.encode()).digest()
    assert by_name["hashed"].token is None
    upper = AdminToken(name="x", token_sha256=hashlib.sha256(b"y").hexdigest().upper())
    assert upper.digest == hashlib.sha256(b"y").digest()
    assert "token_sha256" not in repr(upper) and READ not in repr(by_name["reader"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: a}", "give either token or token_sha256 (exactly one)"),
        (
            '{name: a, token: "0123456789abcdef", token_sha256: "' + "a" * 64 + '"}',
            "give either token or token_sha256 (exactly one)",
        ),
        ('{name: a, token_sha256: "abc"}', "expected the token's SHA-256 as 64 hex digits"),
        ('{name: a, token_sha256: "' + "g" * 64 + '"}', "expected the token's SHA-256 as 64 hex digits"),
        ('{name: a, token: "short"}', "an admin token must be at least 16 characters"),
    ],
    ids=["neither", "both", "short-hash", "not-hex", "short-token"],
)
def test_a_bad_token_entry_is_a_config_error_at_its_line(entry: str, message: str) -> None:
    from tidings.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        parse_settings(f"server:\n  admin_tokens:\n    - {entry}\n", "t.yaml", {})
    [problem] = caught.value.problems
    assert problem.line == 3
    assert problem.path.startswith("server.admin_tokens[0]")
    assert message in problem.message
