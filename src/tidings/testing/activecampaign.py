"""An ActiveCampaign account: contact sync, contact lookup and delete, event tracking, its rate limit.

ActiveCampaign publishes no OpenAPI description, so bodies are checked by hand against the shapes
its reference documents (contracts README 2.5). The checks are stricter than ActiveCampaign in one
way: an unknown key in `contact` is refused (ActiveCampaign ignores it), so a misspelt field fails
a test instead of vanishing. What is not documented (marked in the code) is an assumption.

The event tracking endpoint is served at `/event` of the same server: point `events_url` at it.
Several API keys may be valid at once (`api_keys`, a rotation); `revoke(key)` withdraws one, and
a key that is not valid is answered 403 (assumed: ActiveCampaign does not document the answer).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.testing.simulator import Simulator

CONTACT_KEYS = {"email", "firstName", "lastName", "phone", "fieldValues", "orgid", "deleted"}


class ActiveCampaignSimulator(Simulator):
    def __init__(
        self,
        api_keys: str | Iterable[str] = "ac-test-token",
        *,
        actid: str = "1000001",
        event_key: str = "ac-event-key",
        rate: int = 5,
        per: float = 1.0,
        grace: float = 0.05,
    ) -> None:
        super().__init__()
        self.api_keys = {api_keys} if isinstance(api_keys, str) else set(api_keys)
        self.actid = actid
        self.event_key = event_key
        # 5 requests per second per account; `grace` forgives arrival jitter between a client
        # that paced its starts exactly and this server (the window is `per - grace` long).
        self.rate, self.window = rate, per - grace
        self.per = per
        self._starts: deque[float] = deque()
        self.rate_limited = 0  # requests answered 429 by the limit (not by fail_next)
        self.contacts: dict[str, dict[str, Any]] = {}  # lower-cased email -> contact
        self.events: list[dict[str, Any]] = []
        self.accepted: list[tuple[str, Any]] = []  # (path, body) of every body that passed the checks
        self.rejected: list[tuple[str, list[str]]] = []  # (path, problems)
        self._next_id = 1

    def routes(self) -> list[Route]:
        return [
            Route("/api/3/contact/sync", self.sync, methods=["POST"]),
            Route("/api/3/contacts", self.list_contacts, methods=["GET"]),
            Route("/api/3/contacts/{id}", self.get_contact, methods=["GET"]),
            Route("/api/3/contacts/{id}", self.delete_contact, methods=["DELETE"]),
            Route("/event", self.track, methods=["POST"]),
        ]

    def contact(self, email: str) -> dict[str, Any] | None:
        return self.contacts.get(email.lower())

    def revoke(self, key: str) -> None:
        """Withdraw an API key: it is refused from now on."""
        with self._lock:
            self.api_keys.discard(key)

    # ------------------------------------------------------------------ the API

    def _gate(self, request: Request) -> Response | None:
        """The Api-Token, then the account's rate limit."""
        if request.headers.get("api-token") not in self.api_keys:
            # The body of ActiveCampaign's answer to a bad token is not documented (assumption).
            return JSONResponse({"message": "Forbidden"}, 403)
        now = time.monotonic()
        with self._lock:
            while self._starts and self._starts[0] <= now - self.window:
                self._starts.popleft()
            if len(self._starts) >= self.rate:
                self.rate_limited += 1
                wait = max(1, math.ceil(self._starts[0] + self.per - now))
                return JSONResponse(
                    {"message": "Too Many Requests"},
                    429,
                    headers={
                        "Retry-After": str(wait),
                        "RateLimit-Limit": str(self.rate),
                        "RateLimit-Remaining": "0",
                    },
                )
            self._starts.append(now)
        return None

    async def sync(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._invalid("/api/3/contact/sync", ["the body is not JSON"], status=400)
        problems = _check_sync(body)
        if problems:
            return self._invalid("/api/3/contact/sync", problems)
        self.accepted.append(("/api/3/contact/sync", body))
        given = body["contact"]
        with self._lock:
            existing = self.contacts.get(given["email"].lower())
            created = existing is None
            if existing is None:
                existing = {"id": str(self._next_id), "email": given["email"], "fieldValues": {}}
                self._next_id += 1
                self.contacts[given["email"].lower()] = existing
            for key in ("firstName", "lastName", "phone"):
                if key in given:
                    existing[key] = given[key]
            for value in given.get("fieldValues", []):
                existing["fieldValues"][str(value["field"])] = value["value"]
        field_values = [
            {"contact": existing["id"], "field": field, "value": value, "owner": existing["id"]}
            for field, value in existing["fieldValues"].items()
        ]
        # 201 for a new contact; whether an update answers 200 or 201 is not documented (assumption).
        return JSONResponse(
            {"fieldValues": field_values, "contact": _public(existing)}, 201 if created else 200
        )

    async def list_contacts(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        email = request.query_params.get("email")
        found = list(self.contacts.values())
        if email is not None:
            found = [c for c in found if c["email"].lower() == email.lower()]
        return JSONResponse(
            {"scoreValues": [], "contacts": [_public(c) for c in found], "meta": {"total": str(len(found))}}
        )

    async def get_contact(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        contact = self._by_id(request.path_params["id"])
        if contact is None:
            return _not_found(request.path_params["id"])
        return JSONResponse({"contact": _public(contact)})

    async def delete_contact(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        contact_id = request.path_params["id"]
        with self._lock:
            contact = self._by_id(contact_id)
            if contact is None:
                return _not_found(contact_id)
            del self.contacts[contact["email"].lower()]
        return JSONResponse({}, 200)

    # ------------------------------------------------------------------ event tracking

    async def track(self, request: Request) -> Response:
        problems = []
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            problems.append("the body must be application/x-www-form-urlencoded")
        form = {
            k: v[-1] for k, v in parse_qs((await request.body()).decode(), keep_blank_values=True).items()
        }
        if form.get("actid") != self.actid or form.get("key") != self.event_key:
            # The tracking service's answers are not documented; this shape is an assumption.
            return JSONResponse({"success": 0, "message": "Invalid actid or key"})
        event = form.get("event", "")
        if not event or len(event) > 32:
            problems.append("event: required, at most 32 characters")
        try:
            visit = json.loads(form.get("visit", ""))
            if not isinstance(visit, dict) or not isinstance(visit.get("email"), str):
                raise ValueError
        except ValueError:
            problems.append('visit: a JSON object {"email": ...}')
            visit = {}
        unknown = set(form) - {"actid", "key", "event", "eventdata", "visit"}
        if unknown:
            problems.append(f"unknown fields {sorted(unknown)}")
        if problems:
            self.rejected.append(("/event", problems))
            return JSONResponse({"success": 0, "message": "; ".join(problems)})
        self.accepted.append(("/event", form))
        self.events.append({"event": event, "email": visit["email"], "eventdata": form.get("eventdata")})
        return JSONResponse({"success": 1, "message": "Event spawned"})

    # ------------------------------------------------------------------ helpers

    def _by_id(self, contact_id: str) -> dict[str, Any] | None:
        return next((c for c in self.contacts.values() if c["id"] == contact_id), None)

    def _invalid(self, path: str, problems: list[str], status: int = 422) -> Response:
        self.rejected.append((path, problems))
        errors = [
            {"title": problem, "detail": "", "code": "invalid", "source": {"pointer": "/data/attributes"}}
            for problem in problems
        ]
        return JSONResponse({"errors": errors}, status)


def _check_sync(body: Any) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("contact"), dict):
        return ['the body must be {"contact": {...}}']
    contact = body["contact"]
    problems = []
    unknown = set(body) - {"contact"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    email = contact.get("email")
    if not isinstance(email, str) or "@" not in email.strip("@"):
        problems.append("Contact Email Address is not valid.")
    for key in ("firstName", "lastName", "phone"):
        if key in contact and not isinstance(contact[key], str):
            problems.append(f"contact.{key} must be a string")
    unknown = set(contact) - CONTACT_KEYS
    if unknown:
        problems.append(f"contact has unknown keys {sorted(unknown)}")
    values = contact.get("fieldValues", [])
    if not isinstance(values, list):
        problems.append("contact.fieldValues must be an array")
        values = []
    for n, value in enumerate(values):
        if not isinstance(value, dict) or set(value) - {"field", "value"}:
            problems.append(f"contact.fieldValues[{n}] must be {{field, value}}")
            continue
        if not isinstance(value.get("field"), str | int) or isinstance(value.get("field"), bool):
            problems.append(f"contact.fieldValues[{n}].field must be a custom field id")
        if not isinstance(value.get("value"), str):
            problems.append(f"contact.fieldValues[{n}].value must be a string")
    return problems


def _public(contact: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": contact["id"],
        "email": contact["email"],
        "firstName": contact.get("firstName", ""),
        "lastName": contact.get("lastName", ""),
        "phone": contact.get("phone", ""),
    }


def _not_found(contact_id: str) -> Response:
    return JSONResponse({"message": f"No result found for contact with id {contact_id}"}, 404)
