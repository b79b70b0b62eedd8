"""Mailchimp Marketing API v3: audience members, their events, customer-journey triggers, erasure.

Credentials, one of: `api_key` (HTTP Basic, any user name, the key as password), with
`next_api_key` for a rotation without pause (`KeyRing` in base.py); or `access_token`, an OAuth 2
token of an installed Mailchimp app (`Authorization: Bearer`; Mailchimp's OAuth tokens do not
expire, so there is nothing to refresh), with the account's data centre given as `dc`.

The data centre is the suffix of the API key (`...-us14` -> https://us14.api.mailchimp.com/3.0),
or `dc`; `base_url` overrides both. Members are addressed by their subscriber hash, the MD5 of the
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
from pydantic import Field, SecretStr, model_validator

from tidings.clock import Clock
from tidings.delivery.effects import (
    DELETE_CONTACT,
    TRACK_EVENT,
    TRIGGER_JOURNEY,
    UPSERT_CONTACT,
    Effect,
    Receipt,
)
from tidings.destinations.base import (
    Destination,
    DestinationSettings,
    KeyRing,
    Limits,
    handles,
    refused_credentials,
)
from tidings.exceptions import PermanentDeliveryError


class MailchimpSettings(DestinationSettings):
    kind: Literal["mailchimp"]
    api_key: SecretStr | None = None  # ends in -<data centre>, e.g. -us14
    next_api_key: SecretStr | None = None  # the key being rotated in
    access_token: SecretStr | None = None  # instead of api_key: an OAuth token (needs dc)
    dc: str | None = Field(default=None, pattern=r"^[a-z]+[0-9]+$")  # the data centre, e.g. us14
    list_id: str  # the audience
    status_if_new: Literal["subscribed", "pending"] = "subscribed"  # pending: double opt-in email
    tags: list[str] = []  # added to every contact tidings pushes

    @model_validator(mode="after")
    def _credentials(self) -> MailchimpSettings:
        if (self.api_key is None) == (self.access_token is None):
            raise ValueError("give either api_key or access_token (an OAuth token)")
        if self.next_api_key is not None and self.api_key is None:
            raise ValueError("next_api_key rotates an api_key; an access_token has no next one")
        if self.base_url is None and self.dc is None:
            if self.api_key is None:
                raise ValueError("with an access_token, give the data centre as dc (e.g. us14) or base_url")
            if not data_centre(self.api_key.get_secret_value()):
                raise ValueError("the api_key must end in -<data centre> (e.g. -us14), or set dc or base_url")
        if self.api_key is not None and self.next_api_key is not None:
            ours, theirs = (data_centre(k.get_secret_value()) for k in (self.api_key, self.next_api_key))
            if ours and theirs and ours != theirs:
                raise ValueError(f"api_key is for data centre {ours} but next_api_key for {theirs}")
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
    idempotent_actions = frozenset({UPSERT_CONTACT, DELETE_CONTACT})
    default_limits = Limits(concurrency=10)

    def __init__(
        self, name: str, settings: MailchimpSettings, http: httpx.AsyncClient, *, clock: Clock | None = None
    ) -> None:
        super().__init__(name, settings, http, clock=clock)
        self.keys = (
            KeyRing(name, self.kind, [("api_key", settings.api_key), ("next_api_key", settings.next_api_key)])
            if settings.api_key is not None
            else None
        )

    @property
    def base_url(self) -> str:
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/")
        dc = self.settings.dc
        if dc is None and self.settings.api_key is not None:
            dc = data_centre(self.settings.api_key.get_secret_value())
        return f"https://{dc}.api.mailchimp.com/3.0"

    # ------------------------------------------------------------------ actions

    @handles(UPSERT_CONTACT)
    async def _upsert(self, effect: Effect) -> Receipt:
        payload = effect.payload
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

    @handles(TRACK_EVENT)
    async def _event(self, effect: Effect) -> Receipt:
        payload = effect.payload
        email = _email(payload)
        name = str(payload.get("event") or payload.get("name") or "")
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

    @handles(TRIGGER_JOURNEY)
    async def _trigger(self, effect: Effect) -> Receipt:
        payload = effect.payload
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

    @handles(DELETE_CONTACT)
    async def _delete(self, effect: Effect) -> Receipt:
        email = _email(effect.payload)
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
        url = self.base_url + path
        if self.keys is None:
            assert self.settings.access_token is not None
            bearer = {"authorization": f"Bearer {self.settings.access_token.get_secret_value()}"}
            response = await self.request(method, url, json=body, headers=bearer)
        else:
            response = await self.keys.send(
                lambda key: self.request(method, url, json=body, auth=httpx.BasicAuth("tidings", key)),
                refused_credentials,
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
