"""Who is looking at the dashboard: an admin token kept in a cookie, checked on every request.

The browser holds `nonce.token` in an HttpOnly, SameSite=Strict cookie scoped to /ui, so page
scripts cannot read it and other sites cannot send it. Forms that change something also carry a
CSRF field: an HMAC of the cookie's nonce keyed by the token's digest, so it is unique to the
login, proves nothing about the token, and is checked together with the Origin header when the
browser sends one. The token itself is never put in a page.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from starlette.requests import Request

from tidings.api.auth import require

COOKIE = "tidings_ui"
COOKIE_PATH = "/ui"
MAX_AGE = 12 * 3600  # seconds: a forgotten browser tab does not stay signed in for days


@dataclass(frozen=True, slots=True)
class Operator:
    """A signed-in token: its name and scopes, and the nonce of this login (for CSRF)."""

    name: str
    scopes: frozenset[str]
    nonce: str
    digest: bytes

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def csrf(self) -> str:
        return hmac.new(self.digest, b"tidings-ui-csrf:" + self.nonce.encode(), hashlib.sha256).hexdigest()


# The admin API's own checks decide, so a token means the same here as it does as a bearer.
_CHECKS = {scope: require(scope) for scope in ("read", "write")}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def authorise(request: Request, token: str) -> tuple[str, frozenset[str]] | None:
    """(the token's name, its scopes), or None when it is not an admin token."""
    creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    name, scopes = "", set()
    for scope, check in _CHECKS.items():
        try:
            name = await check(request, creds)
        except HTTPException as refused:
            if refused.status_code == 401:
                return None
            continue
        scopes.add(scope)
    return name or "this token", frozenset(scopes)


def new_cookie_value(token: str) -> str:
    return f"{secrets.token_urlsafe(16)}.{token}"


async def operator(request: Request) -> Operator | None:
    """The operator this request's cookie signs in, or None (no cookie, or a token no longer valid)."""
    nonce, dot, token = request.cookies.get(COOKIE, "").partition(".")
    if not dot or not nonce or not token:
        return None
    found = await authorise(request, token)
    if found is None:
        return None
    return Operator(name=found[0], scopes=found[1], nonce=nonce, digest=_digest(token))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (Origin or Referer)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return claimed is None
    netloc = urlsplit(claimed).netloc.lower()
    # behind a proxy that rewrites Host, the name the browser used is in X-Forwarded-Host
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    return netloc in {h.lower() for h in hosts if h}


def csrf_problem(request: Request, who: Operator, given: str) -> str | None:
    """Why a state-changing form must be refused, or None when it is genuine."""
    if not same_origin(request):
        return "the form was sent from another site"
    if not given or not hmac.compare_digest(given, who.csrf):
        return "the form's CSRF token is missing or stale; reload the page and try again"
    return None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def login_url(next_path: str) -> str:
    return f"{COOKIE_PATH}/login?next={quote(next_path, safe='/')}"


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path under /ui only (never another site)."""
    if not value or not value.startswith(COOKIE_PATH + "/") or value.startswith("//") or "\\" in value:
        return COOKIE_PATH + "/"
    if value.startswith(COOKIE_PATH + "/login") or value.startswith(COOKIE_PATH + "/logout"):
        return COOKIE_PATH + "/"
    return value
