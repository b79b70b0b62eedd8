"""Mailchimp Marketing (v3) and Mailchimp Transactional (Mandrill), as local servers.

`MailchimpSimulator` keeps audience members by list and subscriber hash, checks HTTP Basic auth
(any user, one of `api_keys` as password) or `Authorization: Bearer` with one of `access_tokens`
(OAuth tokens, which do not expire), answering 401 "API Key Invalid" otherwise; answers errors
as `application/problem+json`, and enforces the account's 10 simultaneous connections: a request
beyond them gets a 429, as Mailchimp does.

`MandrillSimulator` serves `messages/send-template`, validating each body against the official
OpenAPI description (the schemas extracted into `schemas/mailchimp_transactional.json`), and
answers one result per recipient: `sent`, or `rejected` with a reason for the addresses on its
reject list, or `invalid` for malformed ones. A key not among `api_keys` gets `Invalid_Key`.

Both take several valid keys at once (a rotation) and `revoke(key)` withdraws one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
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

_ERRORS_DOC = "https://mailchimp.com/developer/marketing/docs/errors/"
_STATUSES = {"subscribed", "unsubscribed", "cleaned", "pending", "transactional"}


def _hash(email: str) -> str:
    return hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class MemberEvent:
    list_id: str
    subscriber_hash: str
    body: dict[str, Any]


class MailchimpSimulator(Simulator):
    """The Marketing API's members, events, tags, journey triggers and permanent deletes."""

    def __init__(
        self,
        api_keys: str | Iterable[str] = "0123456789abcdef0123456789abcdef-us14",
        *,
        access_tokens: Iterable[str] = (),
        lists: set[str] | None = None,
        concurrency: int = 10,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.api_keys = {api_keys} if isinstance(api_keys, str) else set(api_keys)
        self.access_tokens = set(access_tokens)
        self.lists = lists  # None: any list id exists
        self.concurrency = concurrency
        self.latency = latency  # seconds each valid request takes
        self.members: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[MemberEvent] = []
        self.tags: list[MemberEvent] = []
        self.triggers: list[tuple[int, int, str]] = []  # journey, step, email
        self.forgotten: set[tuple[str, str]] = set()  # permanently deleted: never re-imported
        self.throttled = 0  # requests refused with 429 for exceeding the connections
        self._guard = threading.Lock()

    def routes(self) -> list[Route]:
        member = "/3.0/lists/{list_id}/members/{subscriber_hash}"
        return [
            Route(member, self._wrap(self._upsert), methods=["PUT"]),
            Route(member, self._wrap(self._get), methods=["GET"]),
            Route(member + "/events", self._wrap(self._event), methods=["POST"]),
            Route(member + "/tags", self._wrap(self._tags), methods=["POST"]),
            Route(member + "/actions/delete-permanent", self._wrap(self._delete), methods=["POST"]),
            Route(
                "/3.0/customer-journeys/journeys/{journey_id:int}/steps/{step_id:int}/actions/trigger",
                self._wrap(self._trigger),
                methods=["POST"],
            ),
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/3.0"

    def member(self, list_id: str, email: str) -> dict[str, Any] | None:
        return self.members.get((list_id, _hash(email)))

    def revoke(self, credential: str) -> None:
        """Withdraw an API key or OAuth token: it is answered 401 from now on."""
        with self._guard:
            self.api_keys.discard(credential)
            self.access_tokens.discard(credential)

    # ------------------------------------------------------------------ plumbing

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if self.in_flight > self.concurrency:
                with self._guard:
                    self.throttled += 1
                return problem(
                    429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."
                )
            if not self._authorised(request):
                return problem(
                    401,
                    "API Key Invalid",
                    "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
                )
            list_id = request.path_params.get("list_id")
            if list_id is not None and self.lists is not None and list_id not in self.lists:
                return problem(404, "Resource Not Found", "The requested resource could not be found.")
            body: Any = None
            raw = await request.body()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    return problem(
                        400, "JSON Parse Error", "We encountered an unspecified JSON parsing error."
                    )
            if self.latency:
                await asyncio.sleep(self.latency)
            response: Response = await handler(request, body)
            return response

        return endpoint

    def _authorised(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return value in self.access_tokens
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return password in self.api_keys

    # ------------------------------------------------------------------ endpoints

    async def _upsert(self, request: Request, body: Any) -> Response:
        list_id, key = request.path_params["list_id"], request.path_params["subscriber_hash"]
        if not isinstance(body, dict):
            return invalid("The request body must be a JSON object.")
        email = body.get("email_address")
        if not isinstance(email, str) or "@" not in email.strip("@"):
            return invalid(
                f"{email!r} looks fake or invalid, please enter a real email address.", "email_address"
            )
        if _hash(email) != key:
            return invalid("The subscriber hash does not match the email address.", "email_address")
        for field in ("status", "status_if_new"):
            if field in body and body[field] not in _STATUSES:
                return invalid(f"{field} must be one of {', '.join(sorted(_STATUSES))}.", field)
        merge = body.get("merge_fields", {})
        if not isinstance(merge, dict) or not all(
            isinstance(v, str | int | float | dict) and not isinstance(v, bool) for v in merge.values()
        ):
            return invalid("merge_fields must map tags to text, numbers or addresses.", "merge_fields")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return invalid("tags must be a list of strings.", "tags")
        with self._guard:
            if (list_id, key) in self.forgotten:
                return problem(
                    400,
                    "Forgotten Email Not Subscribed",
                    f"{email} was permanently deleted and cannot be re-imported. "
                    "The contact must re-subscribe to get back on the list.",
                )
            current = self.members.get((list_id, key))
            if current is None:
                status = body.get("status") or body.get("status_if_new")
                if status is None:
                    return invalid("status_if_new is required to add a new member.", "status_if_new")
                current = {
                    "id": key,
                    "email_address": email,
                    "unique_email_id": uuid.uuid4().hex[:10],
                    "list_id": list_id,
                    "status": status,
                    "merge_fields": {},
                    "tags": [{"name": t} for t in tags],
                }
            elif body.get("status"):
                current = {**current, "status": body["status"]}
            current = {
                **current,
                "email_address": email,
                "merge_fields": {**current["merge_fields"], **merge},
            }
            self.members[(list_id, key)] = current
        return JSONResponse(current)

    async def _get(self, request: Request, body: Any) -> Response:
        found = self.members.get((request.path_params["list_id"], request.path_params["subscriber_hash"]))
        if found is None:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        return JSONResponse(found)

    async def _event(self, request: Request, body: Any) -> Response:
        list_id, key = request.path_params["list_id"], request.path_params["subscriber_hash"]
        if (list_id, key) not in self.members:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        if not isinstance(body, dict):
            return invalid("The request body must be a JSON object.")
        name = body.get("name")
        if not isinstance(name, str) or not 2 <= len(name) <= 30:
            return invalid("Event name must be between 2 and 30 characters.", "name")
        properties = body.get("properties", {})
        if not isinstance(properties, dict) or not all(isinstance(v, str) for v in properties.values()):
            return invalid("Event properties must be strings.", "properties")
        if "is_syncing" in body and not isinstance(body["is_syncing"], bool):
            return invalid("is_syncing must be a boolean.", "is_syncing")
        if "occurred_at" in body and not isinstance(body["occurred_at"], str):
            return invalid("occurred_at must be an ISO 8601 time.", "occurred_at")
        with self._guard:
            self.events.append(MemberEvent(list_id, key, body))
        return Response(status_code=204)

    async def _tags(self, request: Request, body: Any) -> Response:
        list_id, key = request.path_params["list_id"], request.path_params["subscriber_hash"]
        if (list_id, key) not in self.members:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list) or not all(
            isinstance(t, dict)
            and isinstance(t.get("name"), str)
            and t.get("status") in ("active", "inactive")
            for t in tags
        ):
            return invalid("tags must be a list of {name, status: active|inactive}.", "tags")
        with self._guard:
            self.tags.append(MemberEvent(list_id, key, body))
            member = self.members[(list_id, key)]
            names = [t["name"] for t in member["tags"]]
            for tag in tags:
                if tag["status"] == "active" and tag["name"] not in names:
                    names.append(tag["name"])
                elif tag["status"] == "inactive" and tag["name"] in names:
                    names.remove(tag["name"])
            self.members[(list_id, key)] = {**member, "tags": [{"name": n} for n in names]}
        return Response(status_code=204)

    async def _trigger(self, request: Request, body: Any) -> Response:
        email = body.get("email_address") if isinstance(body, dict) else None
        if not isinstance(email, str) or "@" not in email:
            return invalid("email_address is required.", "email_address")
        with self._guard:
            self.triggers.append((request.path_params["journey_id"], request.path_params["step_id"], email))
        return Response(status_code=204)

    async def _delete(self, request: Request, body: Any) -> Response:
        list_id, key = request.path_params["list_id"], request.path_params["subscriber_hash"]
        with self._guard:
            if self.members.pop((list_id, key), None) is None:
                return problem(404, "Resource Not Found", "The requested resource could not be found.")
            self.forgotten.add((list_id, key))
        return Response(status_code=204)


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    """Mailchimp's error body, `application/problem+json`."""
    body: dict[str, Any] = {
        "type": _ERRORS_DOC,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(uuid.uuid4()),
    }
    if errors:
        body["errors"] = errors
    return Response(json.dumps(body), status, media_type="application/problem+json")


def invalid(message: str, field: str = "") -> Response:
    return problem(
        400,
        "Invalid Resource",
        f"The resource submitted could not be validated. {message}",
        [{"field": field, "message": message}],
    )


# ---------------------------------------------------------------------------- Transactional


@cache
def _send_template_validator() -> Draft202012Validator:
    text = resources.files("tidings.testing").joinpath("schemas/mailchimp_transactional.json").read_text()
    document = json.loads(text)
    uri = "urn:tidings:schemas:mailchimp_transactional"
    registry: Registry[Any] = Registry().with_resource(uri, Resource.from_contents(document, DRAFT202012))
    return Draft202012Validator(
        {"$ref": f"{uri}#/components/schemas/MessagesSendTemplateRequest"}, registry=registry
    )


@dataclass(frozen=True, slots=True)
class Sent:
    body: dict[str, Any]
    results: list[dict[str, Any]]


class MandrillSimulator(Simulator):
    """`POST /messages/send-template`, spec-validated, with per-recipient outcomes."""

    def __init__(
        self,
        api_keys: str | Iterable[str] = "md-test-key",
        *,
        rejects: dict[str, str] | None = None,
        templates: set[str] | None = None,
        version: str = "1.3",
    ) -> None:
        super().__init__()
        self.api_keys = {api_keys} if isinstance(api_keys, str) else set(api_keys)
        self.rejects = {k.lower(): v for k, v in (rejects or {}).items()}  # email -> reject_reason
        self.templates = templates  # None: every template exists
        self.version = version
        self.sent: list[Sent] = []
        self.invalid = 0  # bodies refused by the schema

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/{self.version}"

    def routes(self) -> list[Route]:
        return [Route(f"/api/{self.version}/messages/send-template", self._send_template, methods=["POST"])]

    def revoke(self, key: str) -> None:
        """Withdraw an API key: it is answered `Invalid_Key` from now on."""
        self.api_keys.discard(key)

    async def _send_template(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return mandrill_error(400, -2, "ValidationError", "You must specify a key value")
        if not isinstance(body, dict) or body.get("key") not in self.api_keys:
            return mandrill_error(401, -1, "Invalid_Key", "Invalid API key")
        errors = list(_send_template_validator().iter_errors(body))
        if errors:
            self.invalid += 1
            # a failing allOf branch makes its properties "unevaluated" too: name the real cause
            first = next((e for e in errors if e.validator != "unevaluatedProperties"), errors[0])
            where = "/".join(str(p) for p in first.absolute_path) or "(body)"
            return mandrill_error(400, -2, "ValidationError", f"Validation error: {where}: {first.message}")
        template = body["template_name"]
        if self.templates is not None and template not in self.templates:
            return mandrill_error(404, 5, "Unknown_Template", f'No such template "{template}"')
        results = [self._outcome(r, body) for r in body["message"].get("to", [])]
        self.sent.append(Sent(body, results))
        return JSONResponse(results)

    def _outcome(self, recipient: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        email = str(recipient.get("email", ""))
        result: dict[str, Any] = {"email": email, "_id": uuid.uuid4().hex, "reject_reason": None}
        local, at, domain = email.partition("@")
        if not (local and at and "." in domain):
            result["status"] = "invalid"
        elif email.lower() in self.rejects:
            result.update(status="rejected", reject_reason=self.rejects[email.lower()])
        elif body.get("send_at"):
            result["status"] = "scheduled"
        elif body.get("async"):
            result["status"] = "queued"
        else:
            result["status"] = "sent"
        return result


def mandrill_error(status: int, code: int, name: str, message: str) -> Response:
    return JSONResponse({"status": "error", "code": code, "name": name, "message": message}, status)
