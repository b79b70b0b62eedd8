"""A local Klaviyo: profile import, events (deduplicated by `unique_id`), data-privacy deletion.

Requests are checked as Klaviyo checks them: the `Authorization` header (401): `Klaviyo-API-Key`
with one of `api_keys`, or `Bearer` with an access token this simulator issued and that has not
expired; the `revision` header (400), and the body against the request schemas of Klaviyo's official
OpenAPI description (400 in Klaviyo's JSON:API error shape, with a `source.pointer` to the
offending member). The schemas are extracted into `schemas/klaviyo.json` by
`tools/extract_schemas.py`.

Limits: Klaviyo counts fixed windows per endpoint (a 1 s burst and a 1 min steady window). The
simulator always counts them (`limit_violations`); with `enforce_limits=True` it also answers the
excess with 429 and `Retry-After`, as Klaviyo does.

OAuth: `POST /oauth/token` serves the refresh_token grant as Klaviyo's token endpoint does: the
client authenticated with HTTP Basic (`client_secret_post` is accepted too), a form body, an
answer `{access_token, token_type: Bearer, expires_in, refresh_token, scope}`; errors in RFC 6749's
shape (`invalid_client` 401, `invalid_grant` 400, ...). Access tokens live `token_lifetime`
seconds (Klaviyo's are an hour); with `rotate_refresh_tokens` each refresh answers a new refresh
token and retires the old one. `revoke(...)` withdraws a key or token, `expire_access_tokens()`
ends every issued access token. Error wording is the simulator's own where the
official text is not known; the shapes and status codes follow the spec.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.testing.simulator import Simulator

OAUTH_TOKEN = "/oauth/token"
MEDIA_TYPE = "application/vnd.api+json"
BASE_URI = "urn:tidings:schemas:klaviyo"
EVENTS = "/api/events"
PROFILE_IMPORT = "/api/profile-import"
DELETION = "/api/data-privacy-deletion-jobs"
IDENTIFIERS = ("email", "phone_number", "external_id")


@cache
def _document() -> dict[str, Any]:
    text = files("tidings.testing").joinpath("schemas", "klaviyo.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(operation: str) -> Draft202012Validator:
    document = _document()
    registry: Registry[Any] = Registry().with_resource(
        BASE_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    schema = {**document["operations"][operation]["schema"], "$id": f"{BASE_URI}/operation"}
    # the operation's schema refers to `#/components/...` of the extracted document
    schema = json.loads(json.dumps(schema).replace('"#/components/', f'"{BASE_URI}#/components/'))
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


def spec_limits() -> dict[str, tuple[int, int]]:
    """Per endpoint path: (burst per second, steady per minute), from `x-klaviyo-ratelimit`."""
    limits = {}
    for operation, entry in _document()["operations"].items():
        rate = entry.get("ratelimit") or {}
        burst = int(str(rate.get("burst", "0/s")).split("/")[0])
        steady = int(str(rate.get("steady", "0/m")).split("/")[0])
        limits[operation.split(" ", 1)[1]] = (burst, steady)
    return limits


def error(status: int, code: str, title: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
        "source": {"pointer": pointer} if pointer is not None else {},
    }
    return entry


def errors_response(status: int, errors: Iterable[dict[str, Any]], **headers: str) -> JSONResponse:
    return JSONResponse({"errors": list(errors)}, status, headers=headers or None, media_type=MEDIA_TYPE)


class KlaviyoSimulator(Simulator):
    def __init__(
        self,
        api_keys: str | Iterable[str] = ("pk_test_simulator",),
        *,
        revision: str = "2026-07-15",
        enforce_limits: bool = False,
        limits: dict[str, tuple[int, int]] | None = None,
        oauth_clients: Mapping[str, str] | None = None,
        refresh_tokens: Iterable[str] = (),
        token_lifetime: float = 3600.0,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        super().__init__()
        self.api_keys = {api_keys} if isinstance(api_keys, str) else set(api_keys)
        self.oauth_clients = dict(oauth_clients or {})  # client_id -> client_secret
        self.refresh_tokens = set(refresh_tokens)
        self.token_lifetime = token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.access_tokens: dict[str, float] = {}  # issued token -> time.monotonic() it expires
        self.token_answers: list[tuple[int, str]] = []  # (status, error or "issued") per token request
        self.revision = revision
        self.enforce_limits = enforce_limits
        self.limits = {**spec_limits(), **(limits or {})}
        self.profiles: dict[str, dict[str, Any]] = {}  # Klaviyo id -> {"id", "attributes"}
        self.accepted_events: list[dict[str, Any]] = []  # the events Klaviyo would record
        self.duplicate_events = 0  # dropped by the unique_id (or same-second) dedupe
        self.deletion_jobs: list[dict[str, Any]] = []  # the `profile` data of each job
        self.invalid: list[dict[str, Any]] = []  # every 400 body this simulator answered
        self.limit_violations = 0  # requests over an endpoint's window (answered 429 if enforced)
        self._seen_events: set[tuple[str, str, str]] = set()
        self._windows: dict[tuple[str, int], tuple[int, int]] = {}  # (path, seconds) -> (window, n)
        self._state = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            Route(EVENTS, self.create_event, methods=["POST"]),
            Route(PROFILE_IMPORT, self.profile_import, methods=["POST"]),
            Route(DELETION, self.deletion_job, methods=["POST"]),
            Route(OAUTH_TOKEN, self.oauth_token, methods=["POST"]),
        ]

    def revoke(self, credential: str) -> None:
        """Withdraw an API key, access token or refresh token: it is refused from now on."""
        with self._state:
            self.api_keys.discard(credential)
            self.access_tokens.pop(credential, None)
            self.refresh_tokens.discard(credential)

    def expire_access_tokens(self) -> None:
        with self._state:
            self.access_tokens.clear()

    def _accepts(self, scheme: str, credential: str) -> bool:
        with self._state:
            if scheme == "Klaviyo-API-Key":
                return credential in self.api_keys
            expires = self.access_tokens.get(credential)
            return expires is not None and time.monotonic() < expires

    # ------------------------------------------------------------------ the checks

    async def _admit(self, request: Request, operation: str) -> dict[str, Any] | Response:
        """The parsed body of a request Klaviyo would process, or Klaviyo's refusal."""
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme not in ("Klaviyo-API-Key", "Bearer") or not key:
            return errors_response(
                401,
                [
                    error(
                        401,
                        "not_authenticated",
                        "Authentication credentials were not provided.",
                        "Missing or invalid authorization scheme. Please use Klaviyo-API-Key or Bearer.",
                    )
                ],
            )
        if not self._accepts(scheme, key):
            return errors_response(
                401,
                [
                    error(
                        401,
                        "authentication_failed",
                        "Incorrect authentication credentials.",
                        "Incorrect authentication credentials.",
                    )
                ],
            )
        path = operation.split(" ", 1)[1]
        throttled = self._count(path)
        if throttled is not None and self.enforce_limits:
            return errors_response(
                429,
                [
                    error(
                        429,
                        "throttled",
                        "Request was throttled.",
                        f"Request was throttled. Expected available in {throttled} second"
                        + ("s." if throttled != 1 else "."),
                    )
                ],
                **{"Retry-After": str(throttled)},
            )
        revision = request.headers.get("revision")
        if not revision:
            return self._invalid(
                [
                    error(
                        400,
                        "invalid",
                        "Invalid input.",
                        "The 'revision' header is required (format: YYYY-MM-DD[.suffix]).",
                    )
                ]
            )
        if revision.split(".")[0] != self.revision:
            return self._invalid(
                [
                    error(
                        400,
                        "invalid",
                        "Invalid input.",
                        f"Revision {revision!r} is not served here (this simulator serves {self.revision}).",
                    )
                ]
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._invalid(
                [error(400, "parse_error", "Malformed request.", "The body is not valid JSON.")]
            )
        problems = [_explain(e) for e in _validator(operation).iter_errors(body)]
        if problems:
            problems.sort(key=lambda p: str(p["source"].get("pointer", "")))
            return self._invalid(problems)
        if not isinstance(body, dict):  # pragma: no cover - the schema requires an object
            return self._invalid([error(400, "invalid", "Invalid input.", "The body must be an object.")])
        return body

    def _invalid(self, errors: list[dict[str, Any]]) -> Response:
        with self._state:
            self.invalid.append({"errors": errors})
        return errors_response(400, errors)

    def _count(self, path: str) -> int | None:
        """Count a request in the endpoint's fixed windows; seconds until it fits, if it does not."""
        burst, steady = self.limits.get(path, (0, 0))
        now = time.time()
        wait: int | None = None
        with self._state:
            for seconds, allowed in ((1, burst), (60, steady)):
                if allowed <= 0:
                    continue
                window = int(now // seconds)
                current, count = self._windows.get((path, seconds), (window, 0))
                if current != window:
                    count = 0
                if count >= allowed:
                    until = max(1, math.ceil((window + 1) * seconds - now))
                    wait = max(wait or 0, until)
                self._windows[(path, seconds)] = (window, count + 1)
            if wait is not None:
                self.limit_violations += 1
                if self.enforce_limits:  # a refused request is not counted against the window
                    for seconds in (1, 60):
                        key = (path, seconds)
                        if key in self._windows:
                            window, count = self._windows[key]
                            self._windows[key] = (window, count - 1)
        return wait

    # ------------------------------------------------------------------ endpoints

    async def create_event(self, request: Request) -> Response:
        body = await self._admit(request, f"POST {EVENTS}")
        if isinstance(body, Response):
            return body
        attributes = body["data"]["attributes"]
        profile = attributes["profile"]["data"]
        identity = _identity(profile)
        if identity is None:
            return self._invalid(
                [
                    error(
                        400,
                        "invalid",
                        "Invalid input.",
                        "A profile identifier (id, email, phone_number or external_id) is required.",
                        "/data/attributes/profile/data/attributes",
                    )
                ]
            )
        metric = attributes["metric"]["data"]["attributes"]["name"]
        if len(metric) >= 128:
            return self._invalid(
                [
                    error(
                        400,
                        "invalid",
                        "Invalid input.",
                        "The metric name must be less than 128 characters.",
                        "/data/attributes/metric/data/attributes/name",
                    )
                ]
            )
        # Without unique_id Klaviyo dedupes on the time to the second.
        dedupe = attributes.get("unique_id") or f"time:{str(attributes.get('time') or int(time.time()))[:19]}"
        with self._state:
            key = (identity, metric, dedupe)
            if key in self._seen_events:
                self.duplicate_events += 1
            else:
                self._seen_events.add(key)
                self.accepted_events.append({"profile": identity, "metric": metric, **attributes})
        return Response(status_code=202)

    async def profile_import(self, request: Request) -> Response:
        body = await self._admit(request, f"POST {PROFILE_IMPORT}")
        if isinstance(body, Response):
            return body
        data = body["data"]
        attributes = dict(data["attributes"])
        if not data.get("id") and not any(attributes.get(k) for k in IDENTIFIERS):
            return self._invalid(
                [
                    error(
                        400,
                        "invalid",
                        "Invalid input.",
                        "One of email, phone_number, external_id or id is required to identify the profile.",
                        "/data/attributes",
                    )
                ]
            )
        with self._state:
            found = self._find(data.get("id"), attributes)
            created = found is None
            if found is None:
                found = {"id": _klaviyo_id(), "attributes": {"properties": {}}}
                self.profiles[found["id"]] = found
            stored = found["attributes"]
            for name, value in attributes.items():
                if name == "properties":
                    properties = stored.setdefault("properties", {})
                    if value is None:
                        properties.clear()
                    else:
                        properties.update(value)
                elif value is None:
                    stored.pop(name, None)  # null clears a field; an omitted one is unchanged
                else:
                    stored[name] = value
            answer = {
                "data": {
                    "type": "profile",
                    "id": found["id"],
                    "attributes": json.loads(json.dumps(stored)),
                    "links": {"self": f"{self.url}/api/profiles/{found['id']}/"},
                }
            }
        return JSONResponse(answer, 201 if created else 200, media_type=MEDIA_TYPE)

    async def deletion_job(self, request: Request) -> Response:
        body = await self._admit(request, f"POST {DELETION}")
        if isinstance(body, Response):
            return body
        profile = body["data"]["attributes"]["profile"]["data"]
        attributes = profile.get("attributes") or {}
        given = [k for k in ("email", "phone_number") if attributes.get(k)] + (
            ["id"] if profile.get("id") else []
        )
        if len(given) != 1:
            return self._invalid(
                [
                    error(
                        400,
                        "invalid",
                        "Invalid input.",
                        "Exactly one of id, email or phone_number must be given"
                        + (f" (got {', '.join(given)})." if given else "."),
                        "/data/attributes/profile/data",
                    )
                ]
            )
        with self._state:
            self.deletion_jobs.append(profile)
            # Klaviyo deletes asynchronously; here every matching profile goes at once.
            for pid, stored in list(self.profiles.items()):
                if (given[0] == "id" and pid == profile["id"]) or (
                    given[0] != "id" and stored["attributes"].get(given[0]) == attributes[given[0]]
                ):
                    del self.profiles[pid]
        return Response(status_code=202)

    async def oauth_token(self, request: Request) -> Response:
        """The refresh_token grant (the only one a server-side integration uses after install)."""
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._oauth_error(400, "invalid_request", "The body must be form-encoded.")
        form = {
            k: v[-1] for k, v in parse_qs((await request.body()).decode(), keep_blank_values=True).items()
        }
        client = _basic(request.headers.get("authorization", "")) or (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        if not client[0] or self.oauth_clients.get(client[0]) != client[1]:
            return self._oauth_error(401, "invalid_client", "Client authentication failed.")
        if form.get("grant_type") != "refresh_token":
            return self._oauth_error(400, "unsupported_grant_type", "Only refresh_token is served here.")
        old = form.get("refresh_token", "")
        access = fresh = ""
        with self._state:
            if old in self.refresh_tokens:
                access = "kat_" + secrets.token_urlsafe(24)
                self.access_tokens[access] = time.monotonic() + self.token_lifetime
                fresh = old
                if self.rotate_refresh_tokens:
                    fresh = "krt_" + secrets.token_urlsafe(24)
                    self.refresh_tokens.discard(old)
                    self.refresh_tokens.add(fresh)
                self.token_answers.append((200, "issued"))
        if not access:
            return self._oauth_error(400, "invalid_grant", "The refresh token is invalid or revoked.")
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": int(self.token_lifetime),
                "refresh_token": fresh,
                "scope": "events:write profiles:write data-privacy:write",
            },
            headers={"cache-control": "no-store"},
        )

    def _oauth_error(self, status: int, code: str, description: str) -> Response:
        with self._state:
            self.token_answers.append((status, code))
        return JSONResponse({"error": code, "error_description": description}, status)

    # ------------------------------------------------------------------ helpers

    def profile_by_email(self, email: str) -> dict[str, Any] | None:
        with self._state:
            return next((p for p in self.profiles.values() if p["attributes"].get("email") == email), None)

    def _find(self, pid: str | None, attributes: dict[str, Any]) -> dict[str, Any] | None:
        if pid:
            return self.profiles.get(pid)
        for name in IDENTIFIERS:  # keyed by email first, as Klaviyo matches
            value = attributes.get(name)
            if value:
                for stored in self.profiles.values():
                    if stored["attributes"].get(name) == value:
                        return stored
        return None


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def _identity(profile: dict[str, Any]) -> str | None:
    if profile.get("id"):
        return f"id:{profile['id']}"
    attributes = profile.get("attributes") or {}
    for name in IDENTIFIERS:
        if attributes.get(name):
            return f"{name}:{attributes[name]}"
    return None


def _klaviyo_id() -> str:
    return uuid.uuid4().hex[:26].upper()


def _explain(problem: ValidationError) -> dict[str, Any]:
    path = [str(p) for p in problem.absolute_path]
    if problem.validator == "required" and isinstance(problem.instance, dict):
        missing = next((r for r in problem.validator_value if r not in problem.instance), None)
        if missing is not None:
            path.append(str(missing))
            pointer = "/" + "/".join(path)
            return error(400, "invalid", "Invalid input.", f"'{missing}' is a required field.", pointer)
    pointer = "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)
    return error(400, "invalid", "Invalid input.", f"{problem.message} (at {pointer}).", pointer)
