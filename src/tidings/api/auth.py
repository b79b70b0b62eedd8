"""Bearer tokens for the admin API, from `server.admin_tokens`, with read and write scopes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="An admin token from server.admin_tokens")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def require(scope: str) -> Callable[..., Coroutine[Any, Any, str]]:
    """A dependency that admits a request whose token has `scope`; returns the token's name."""

    async def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        if creds is None:
            raise HTTPException(401, "an admin bearer token is required", {"WWW-Authenticate": "Bearer"})
        given = _digest(creds.credentials)
        match = None
        for token in request.app.state.tidings.settings.server.admin_tokens:
            if hmac.compare_digest(given, _digest(token.token.get_secret_value())):
                match = token
        if match is None:
            raise HTTPException(401, "the bearer token is not valid", {"WWW-Authenticate": "Bearer"})
        if scope not in match.scopes:
            raise HTTPException(403, f"the token {match.name!r} lacks the {scope!r} scope")
        return str(match.name)

    return check
