"""A SendGrid v3 stand-in: Marketing Campaigns contacts and Mail Send, as SendGrid documents them.

Request bodies are validated against the request schemas of SendGrid's official OpenAPI files
(twilio/sendgrid-oai, extracted into `schemas/sendgrid.json` by tools/extract_schemas.py); a body
they refuse is answered 400 in SendGrid's error shape `{"errors": [{"field", "message"}]}`.

- `PUT /v3/marketing/contacts`: contacts stored by email (lower-cased) with an id; omitted fields
  are left as they were; `custom_fields` keys must be field ids the simulator knows
  (`custom_fields={name: id}`). 202 `{"job_id"}`; the job is done at once (SendGrid runs it later).
- `POST /v3/marketing/contacts/search/emails`: 200 `{"result": {email: {"contact"}|{"error"}}}`,
  404 when none matches.
- `DELETE /v3/marketing/contacts?ids=...` (or `delete_all_contacts=true`): 202 `{"job_id"}`.
- `GET /v3/marketing/contacts/imports/{id}`, `GET /v3/marketing/field_definitions`.
- `POST /v3/mail/send`: 202 with `X-Message-Id`, the mail kept in `sent`; in sandbox mode
  (`mail_settings.sandbox_mode.enable`) 200, kept in `sandboxed`, nothing "sent".

Every answer carries `X-RateLimit-Limit/-Remaining/-Reset` (reset in epoch seconds). With
`rate_limit=N`, each endpoint takes N requests per `rate_window` seconds and answers the rest 429
`{"errors": [{"field": null, "message": "too many requests"}]}` without `Retry-After`, as SendGrid
does. Authentication is `Authorization: Bearer <one of api_keys>`; anything else is 401, as is a
key withdrawn with `revoke(key)`.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.testing.simulator import Simulator

SCHEMA_URI = "urn:tidings:testing:sendgrid"
NOMINAL_LIMIT = 600  # what X-RateLimit-Limit says when no budget is set (SendGrid's are per endpoint)


@dataclass(frozen=True, slots=True)
class Handled:
    """One request the simulator answered itself (faults from `fail_next` are not here)."""

    operation: str  # "PUT /v3/marketing/contacts"
    status: int
    body: Any  # the parsed JSON body, or None
    errors: list[str] = field(default_factory=list)  # why it was refused (validation, auth, budget)


Answer = tuple[int, Any, dict[str, str]]  # status, JSON body (None: empty), extra headers


class SendGridSimulator(Simulator):
    def __init__(
        self,
        api_keys: str | Iterable[str] = "SG.simulated-key",
        *,
        custom_fields: Mapping[str, str] | None = None,
        rate_limit: int | None = None,
        rate_window: float = 1.0,
    ) -> None:
        super().__init__()
        self.api_keys = {api_keys} if isinstance(api_keys, str) else set(api_keys)
        self.custom_fields = dict(custom_fields or {})  # name -> id, as field_definitions lists them
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.contacts: dict[str, dict[str, Any]] = {}  # lower-cased email (or identifier) -> contact
        self.jobs: dict[str, dict[str, Any]] = {}
        self.sent: list[dict[str, Any]] = []  # mail send bodies, each with "message_id" added
        self.sandboxed: list[dict[str, Any]] = []
        self.handled: list[Handled] = []
        self.rate_limited = 0  # 429s answered because the budget was spent
        self._windows: dict[str, tuple[float, int]] = {}

    def routes(self) -> list[Route]:
        return [
            self._route("PUT", "/v3/marketing/contacts", self.upsert),
            self._route("DELETE", "/v3/marketing/contacts", self.delete),
            self._route("POST", "/v3/marketing/contacts/search/emails", self.search),
            self._route("GET", "/v3/marketing/contacts/imports/{id}", self.job),
            self._route("GET", "/v3/marketing/field_definitions", self.fields),
            self._route("POST", "/v3/mail/send", self.send),
        ]

    def revoke(self, key: str) -> None:
        """Withdraw an API key (deleted at SendGrid): it is answered 401 from now on."""
        self.api_keys.discard(key)

    # ------------------------------------------------------------------ endpoints

    def upsert(self, request: Request, body: Any) -> Answer:
        known = set(self.custom_fields.values())
        problems = []
        for n, contact in enumerate(body["contacts"]):
            if not any(
                contact.get(key) for key in ("email", "phone_number_id", "external_id", "anonymous_id")
            ):
                problems.append(
                    (f"contacts[{n}]", "a contact needs email, phone_number_id, external_id or anonymous_id")
                )
            for field_id in contact.get("custom_fields") or {}:
                if field_id not in known:
                    problems.append(
                        (f"contacts[{n}].custom_fields.{field_id}", "custom field ID does not exist")
                    )
        if problems:
            return _errors(400, problems)
        created = updated = 0
        now = _now()
        for given in body["contacts"]:
            key = _contact_key(given)
            contact = self.contacts.get(key)
            if contact is None:
                created += 1
                contact = {"id": str(uuid.uuid4()), "created_at": now, "custom_fields": {}, "list_ids": []}
                self.contacts[key] = contact
            else:
                updated += 1
            for name, value in given.items():
                if name == "custom_fields":
                    contact["custom_fields"].update(value)
                else:
                    contact[name] = value.lower() if name == "email" else value
            contact["list_ids"] = sorted(set(contact["list_ids"]) | set(body.get("list_ids") or []))
            contact["updated_at"] = now
        job_id = self._job(
            "upsert", requested_count=len(body["contacts"]), created_count=created, updated_count=updated
        )
        return 202, {"job_id": job_id}, {}

    def search(self, request: Request, body: Any) -> Answer:
        result: dict[str, Any] = {}
        for asked in body["emails"]:
            email = asked.strip().lower()
            if not email:
                continue
            contact = next(
                (
                    c
                    for c in self.contacts.values()
                    if c.get("email") == email or email in [a.lower() for a in c.get("alternate_emails", [])]
                ),
                None,
            )
            result[email] = {"contact": _view(contact)} if contact else {"error": "contact not found"}
        if not any("contact" in entry for entry in result.values()):
            return _errors(404, [(None, "No contacts found")])
        return 200, {"result": result}, {}

    def delete(self, request: Request, body: Any) -> Answer:
        ids = request.query_params.get("ids")
        everything = request.query_params.get("delete_all_contacts") == "true"
        if bool(ids) == everything:
            return _errors(400, [("ids", "set either ids or delete_all_contacts=true")])
        wanted = set((ids or "").split(","))
        gone = [key for key, c in self.contacts.items() if everything or c["id"] in wanted]
        for key in gone:
            del self.contacts[key]
        job_id = self._job("delete", requested_count=len(gone), deleted_count=len(gone))
        return 202, {"job_id": job_id}, {}

    def job(self, request: Request, body: Any) -> Answer:
        job = self.jobs.get(request.path_params["id"])
        return (200, job, {}) if job else _errors(404, [("id", "job not found")])

    def fields(self, request: Request, body: Any) -> Answer:
        custom = [{"id": fid, "name": name, "field_type": "Text"} for name, fid in self.custom_fields.items()]
        return 200, {"custom_fields": custom, "reserved_fields": []}, {}

    def send(self, request: Request, body: Any) -> Answer:
        problems = []
        for n, personalization in enumerate(body["personalizations"]):
            for name, value in (personalization.get("custom_args") or {}).items():
                if not isinstance(value, str):
                    problems.append(
                        (f"personalizations.{n}.custom_args.{name}", "custom_args values must be strings")
                    )
        if "template_id" not in body and not body.get("content"):
            problems.append(("content", "without a template_id, at least one content block is required"))
        if problems:
            return _errors(400, problems)
        if ((body.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable") is True:
            self.sandboxed.append(body)
            return 200, None, {}
        message_id = secrets.token_urlsafe(16)[:22]
        self.sent.append({**body, "message_id": message_id})
        return 202, None, {"x-message-id": message_id}

    # ------------------------------------------------------------------ plumbing

    def _job(self, job_type: str, **counts: int) -> str:
        job_id = str(uuid.uuid4())
        now = _now()
        results = {"requested_count": 0, "created_count": 0, "updated_count": 0, "deleted_count": 0}
        self.jobs[job_id] = {
            "id": job_id,
            "status": "completed",
            "job_type": job_type,
            "results": {**results, **counts, "errored_count": 0},
            "started_at": now,
            "finished_at": now,
        }
        return job_id

    def _route(self, method: str, path: str, handler: Callable[[Request, Any], Answer]) -> Route:
        operation = f"{method} {path}"

        async def endpoint(request: Request) -> Response:
            status, body, headers, parsed, errors = await self._answer(request, operation, handler)
            self.handled.append(Handled(operation, status, parsed, errors))
            headers = {**headers, **self._rate_headers(operation, status)}
            if body is None:
                return Response(status_code=status, headers=headers)
            return JSONResponse(body, status, headers=headers)

        return Route(path, endpoint, methods=[method])

    async def _answer(
        self, request: Request, operation: str, handler: Callable[[Request, Any], Answer]
    ) -> tuple[int, Any, dict[str, str], Any, list[str]]:
        if not self._take(operation):
            self.rate_limited += 1
            return (*_errors(429, [(None, "too many requests")]), None, ["rate limited"])
        auth = request.headers.get("authorization", "")
        if not auth:
            return (*_errors(401, [(None, "authorization required")]), None, ["no credentials"])
        if not (auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in self.api_keys):
            message = "The provided authorization grant is invalid, expired, or revoked"
            return (*_errors(401, [(None, message)]), None, ["bad credentials"])
        parsed: Any = None
        validator = _validators().get(operation)
        if validator is not None:
            raw = await request.body()
            try:
                parsed = json.loads(raw)
            except ValueError:
                return (*_errors(400, [(None, "Bad Request")]), None, ["not JSON"])
            problems = _problems(validator, parsed)
            if problems:
                return (*_errors(400, problems), parsed, [f"{f}: {m}" for f, m in problems])
        status, body, headers = handler(request, parsed)
        errors = [] if status < 300 else [json.dumps(body)]
        return status, body, headers, parsed, errors

    def _take(self, operation: str) -> bool:
        """Count the request in its endpoint's window; False when the budget is spent."""
        now = time.time()
        start = math.floor(now / self.rate_window) * self.rate_window
        began, count = self._windows.get(operation, (start, 0))
        if began != start:
            count = 0
        self._windows[operation] = (start, count + 1)
        return self.rate_limit is None or count < self.rate_limit

    def _rate_headers(self, operation: str, status: int) -> dict[str, str]:
        start, used = self._windows.get(operation, (time.time(), 0))
        limit = self.rate_limit if self.rate_limit is not None else NOMINAL_LIMIT
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)),
            "x-ratelimit-reset": str(math.ceil(start + self.rate_window)),
        }


# ---------------------------------------------------------------------- helpers


def _errors(status: int, problems: Sequence[tuple[str | None, str]]) -> Answer:
    return status, {"errors": [{"field": f, "message": m} for f, m in problems]}, {}


def _problems(validator: Draft202012Validator, body: Any) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for error in sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])[:20]:
        path = [str(p) for p in error.absolute_path]
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [name for name in error.validator_value if name not in error.instance]
            path += missing[:1]
        out.append((".".join(path) or None, error.message))
    return out


@cache
def _validators() -> dict[str, Draft202012Validator]:
    """One validator per operation, over a registry holding the extracted schemas document."""
    text = resources.files("tidings.testing").joinpath("schemas/sendgrid.json").read_text()
    document = json.loads(text)
    registry: Registry[Any] = Registry().with_resource(
        SCHEMA_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    validators = {}
    for operation in document["operations"]:
        pointer = "/operations/" + operation.replace("~", "~0").replace("/", "~1") + "/schema"
        validators[operation] = Draft202012Validator(
            {"$ref": f"{SCHEMA_URI}#{pointer}"},
            registry=registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,  # "email", "uuid" as declared
        )
    return validators


def _contact_key(contact: Mapping[str, Any]) -> str:
    if contact.get("email"):
        return str(contact["email"]).lower()
    for key in ("phone_number_id", "external_id", "anonymous_id"):
        if contact.get(key):
            return f"{key}:{contact[key]}"
    raise ValueError("no identifier")


def _view(contact: Mapping[str, Any]) -> dict[str, Any]:
    return {"alternate_emails": [], "list_ids": [], "custom_fields": {}, **contact}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
