"""Bearer tokens for the admin API, from `server.admin_tokens`, with read and write scopes.

A presented token is hashed (SHA-256) and compared with every configured token's digest in
constant time, so the config may hold only digests (`token_sha256`) and a wrong token takes as
long to refuse as a right one takes to admit. The scopes are independent: a token with only
`write` cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="An admin token from server.admin_tokens")

SCOPES = ("read", "write")
TOKEN_PREFIX = "tidings_"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """A fresh random token (256 bits) and the hex SHA-256 that goes in the config."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, digest(token).hex()


def require(scope: str) -> Callable[..., Coroutine[Any, Any, str]]:
    """A dependency that admits a request whose token has `scope`; returns the token's name."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        if creds is None:
            raise HTTPException(401, "an admin bearer token is required", {"WWW-Authenticate": "Bearer"})
        given = digest(creds.credentials)
        match = None
        for token in request.app.state.tidings.settings.server.admin_tokens:
            if hmac.compare_digest(given, token.digest):  # no early exit: the time is the same
                match = token
        if match is None:
            raise HTTPException(401, "the bearer token is not valid", {"WWW-Authenticate": "Bearer"})
        if scope not in match.scopes:
            raise HTTPException(403, f"the token {match.name!r} lacks the {scope!r} scope")
        return str(match.name)

    check.scope = scope  # type: ignore[attr-defined]  # what the route needs, for tests and docs
    return check


def required_scope(dependency: Callable[..., Any]) -> str | None:
    """The scope a `require(...)` dependency asks for (None for any other callable)."""
    return getattr(dependency, "scope", None)
