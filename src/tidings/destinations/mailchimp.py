"""Mailchimp Marketing API v3: audience members, their events, customer-journey triggers, erasure.

The data centre is the suffix of the API key (`...-us14` -> https://us14.api.mailchimp.com/3.0);
`base_url` overrides it. Members are addressed by their subscriber hash, the MD5 of the
lower-cased email. Mailchimp limits each account to 10 simultaneous connections (no per-minute
quota, no rate-limit headers); beyond that it answers 429. Errors are `application/problem+json`
`{type, title, status, detail}`; the `detail` is what goes to the dead letters.

An upsert (`PUT` of the member) and the permanent delete are idempotent; an event or a journey
trigger sent twice happens twice, so those are not retried after a crash left them unknown.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import httpx
from pydantic import SecretStr, model_validator

from tidings.delivery.effects import (
    DELETE_CONTACT,
    TRACK_EVENT,
    TRIGGER_JOURNEY,
    UPSERT_CONTACT,
    Effect,
    Receipt,
)
from tidings.destinations.base import Destination, DestinationSettings, Limits
from tidings.exceptions import PermanentDeliveryError


class MailchimpSettings(DestinationSettings):
    kind: Literal["mailchimp"]
    api_key: SecretStr  # ends in -<data centre>, e.g. -us14
    list_id: str  # the audience
    status_if_new: Literal["subscribed", "pending"] = "subscribed"  # pending: double opt-in email
    tags: list[str] = []  # added to every contact tidings pushes

    @model_validator(mode="after")
    def _data_centre(self) -> MailchimpSettings:
        if self.base_url is None and not data_centre(self.api_key.get_secret_value()):
            raise ValueError("the api_key must end in -<data centre> (e.g. -us14), or set base_url")
        return self


def data_centre(api_key: str) -> str:
    """`us14` for a key `...-us14`; empty when the key names none."""
    _, dash, dc = api_key.rpartition("-")
    return dc.strip() if dash and dc.strip().isalnum() else ""


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id in paths: MD5 of the lower-cased address."""
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


class MailchimpDestination(Destination[MailchimpSettings]):
    kind = "mailchimp"
    settings_model = MailchimpSettings
    actions = frozenset({UPSERT_CONTACT, TRACK_EVENT, TRIGGER_JOURNEY, DELETE_CONTACT})
    idempotent_actions = frozenset({UPSERT_CONTACT, DELETE_CONTACT})
    default_limits = Limits(concurrency=10)

    @property
    def base_url(self) -> str:
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/")
        return f"https://{data_centre(self.settings.api_key.get_secret_value())}.api.mailchimp.com/3.0"

    async def deliver(self, effect: Effect) -> Receipt:
        if effect.action == UPSERT_CONTACT:
            return await self._upsert(effect.payload)
        if effect.action == TRACK_EVENT:
            return await self._event(effect.payload)
        if effect.action == TRIGGER_JOURNEY:
            return await self._trigger(effect.payload)
        if effect.action == DELETE_CONTACT:
            return await self._delete(effect.payload)
        raise PermanentDeliveryError(f"mailchimp: no action {effect.action!r}")

    # ------------------------------------------------------------------ actions

    async def _upsert(self, payload: dict[str, Any]) -> Receipt:
        email = _email(payload)
        body: dict[str, Any] = {"email_address": email, "status_if_new": self.settings.status_if_new}
        if payload.get("consent", {}).get("email") == "unsubscribed":
            # an opt-out is never undone by a push: a new member arrives unsubscribed, and an
            # existing one is unsubscribed
            body["status_if_new"] = body["status"] = "unsubscribed"
        merge_fields = {
            tag: _merge_value(v) for tag, v in (payload.get("fields") or {}).items() if v is not None
        }
        if merge_fields:
            body["merge_fields"] = merge_fields
        response = await self._call("PUT", self._member(email), body=body)
        tags = list(dict.fromkeys([*self.settings.tags, *(payload.get("tags") or [])]))
        if tags:  # a PUT sets tags only on a new member: the tags endpoint adds them to anyone
            await self._call(
                "POST",
                self._member(email) + "/tags",
                body={
                    "tags": [{"name": str(t), "status": "active"} for t in tags],
                    "is_syncing": bool(payload.get("backfill")),
                },
            )
        member = _json(response)
        return Receipt(
            remote_id=str(member.get("id") or subscriber_hash(email)),
            status_code=response.status_code,
            detail={"status": member.get("status")} if member.get("status") else {},
        )

    async def _event(self, payload: dict[str, Any]) -> Receipt:
        email = _email(payload)
        name = str(payload.get("name") or payload.get("event") or "")
        if not 2 <= len(name) <= 30:
            raise PermanentDeliveryError(f"mailchimp: an event name must be 2 to 30 characters, not {name!r}")
        body: dict[str, Any] = {
            "name": name,
            "properties": {
                str(k): _text(v) for k, v in (payload.get("properties") or {}).items() if v is not None
            },
            "is_syncing": bool(payload.get("backfill")),  # a replay of history starts no automation
        }
        if payload.get("occurred_at"):
            body["occurred_at"] = str(payload["occurred_at"])
        response = await self._call("POST", self._member(email) + "/events", body=body)
        return Receipt(status_code=response.status_code)

    async def _trigger(self, payload: dict[str, Any]) -> Receipt:
        email = _email(payload)
        try:
            journey, step = int(payload["journey_id"]), int(payload["step_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentDeliveryError(
                "mailchimp: a journey trigger needs integer journey_id and step_id"
            ) from exc
        path = f"/customer-journeys/journeys/{journey}/steps/{step}/actions/trigger"
        response = await self._call("POST", path, body={"email_address": email})
        return Receipt(status_code=response.status_code)

    async def _delete(self, payload: dict[str, Any]) -> Receipt:
        email = _email(payload)
        response = await self._call(
            "POST", self._member(email) + "/actions/delete-permanent", allow_missing=True
        )
        return Receipt(status_code=response.status_code)

    # ------------------------------------------------------------------ HTTP

    def _member(self, email: str) -> str:
        return f"/lists/{self.settings.list_id}/members/{subscriber_hash(email)}"

    async def _call(
        self, method: str, path: str, *, body: Any = None, allow_missing: bool = False
    ) -> httpx.Response:
        response = await self.request(
            method,
            self.base_url + path,
            json=body,
            auth=httpx.BasicAuth("tidings", self.settings.api_key.get_secret_value()),
        )
        if allow_missing and response.status_code == 404:
            return response  # erasing someone Mailchimp never had (or already erased) is done
        self.check(response, error_text=_problem(response))
        return response


def _email(payload: dict[str, Any]) -> str:
    email = payload.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise PermanentDeliveryError("mailchimp: the contact has no email address")
    return email.strip()


def _merge_value(value: Any) -> Any:
    """Merge fields take text, numbers, or an address object."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | dict):
        return value
    return _text(value)


def _text(value: Any) -> str:
    """Event properties are strings only."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return (
        json.dumps(value, separators=(",", ":"), default=str)
        if isinstance(value, list | dict)
        else str(value)
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _problem(response: httpx.Response) -> str | None:
    """`detail` of a problem+json answer (with its title), else None for the raw excerpt."""
    body = _json(response)
    detail, title = body.get("detail"), body.get("title")
    if isinstance(detail, str) and detail:
        return f"{title}: {detail}" if isinstance(title, str) and title else detail
    return title if isinstance(title, str) and title else None
