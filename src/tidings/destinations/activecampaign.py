"""ActiveCampaign (API v3): contact sync with custom field values, event tracking, contact delete.

The account's API URL (Settings -> Developer, e.g. https://acct.api-us1.com) is the `base_url`;
it is not built from the account name, since ActiveCampaign says to copy it. Every API call
carries the `Api-Token` header with `api_key` (`api_token` is its older name); `next_api_key`
beside it rotates the key without a pause (`KeyRing` in base.py). ActiveCampaign allows 5
requests per second per account (all keys share it) and answers 429 with `Retry-After` beyond
that.

Event tracking is another service (`https://trackcmp.net/event`, form-encoded, authenticated by
the account id `actid` and the Event Key), not counted against the API's budget.

`contact/sync` is an upsert keyed on the email and a delete of a contact that is gone is done,
so `upsert_contact` and `delete_contact` are idempotent; an event sent twice is counted twice.
Event tracking takes no flag to record an event without starting automations, and no time: so a
history replay's event (`backfill: true`) is not sent at all (the receipt says so), and
`occurred_at` is not sent.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Literal

import httpx
from pydantic import SecretStr, field_validator, model_validator

from tidings.clock import Clock
from tidings.delivery.effects import DELETE_CONTACT, TRACK_EVENT, UPSERT_CONTACT, Effect, Receipt
from tidings.delivery.limits import Limiter
from tidings.destinations.base import (
    Destination,
    DestinationSettings,
    KeyRing,
    Limits,
    RateWindow,
    handles,
    refused_credentials,
)
from tidings.exceptions import PermanentDeliveryError

EVENTS_URL = "https://trackcmp.net/event"
STANDARD_FIELDS = ("firstName", "lastName", "phone")  # contact properties; others are custom fields
MAX_EVENT_NAME = 32


class ActiveCampaignSettings(DestinationSettings):
    kind: Literal["activecampaign"]
    base_url: str  # the account's API URL; required: there is no global host
    api_key: SecretStr  # `api_token` is accepted as its older name
    next_api_key: SecretStr | None = None  # the key being rotated in
    field_ids: dict[str, str] = {}  # vendor field (as named in profile_sync) -> custom field id
    actid: str | None = None  # event tracking: the account id (Website -> Site Tracking)
    event_key: SecretStr | None = None  # event tracking: the Event Key
    events_url: str = EVENTS_URL

    @model_validator(mode="before")
    @classmethod
    def _older_name(cls, value: object) -> object:
        if isinstance(value, dict) and "api_token" in value:
            if "api_key" in value:
                raise ValueError("api_token is the older name of api_key: give one of them")
            value = {("api_key" if k == "api_token" else k): v for k, v in value.items()}
        return value

    @field_validator("base_url")
    @classmethod
    def _api_root(cls, url: str) -> str:
        # Accept the URL as shown in the settings, or with the /api/3 the docs print after it.
        return url.rstrip("/").removesuffix("/api/3")

    @field_validator("field_ids", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {
                k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()
            }
        return value

    @field_validator("actid", mode="before")
    @classmethod
    def _actid_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> ActiveCampaignSettings:
        if (self.actid is None) != (self.event_key is None):
            raise ValueError("event tracking needs both actid and event_key")
        if self.profile_sync is not None:
            unknown = sorted(set(self.profile_sync.fields) - set(STANDARD_FIELDS) - set(self.field_ids))
            if unknown:
                raise ValueError(
                    f"profile_sync fields {unknown} are neither contact properties "
                    f"({', '.join(STANDARD_FIELDS)}) nor listed in field_ids"
                )
        return self


class ActiveCampaignDestination(Destination[ActiveCampaignSettings]):
    kind = "activecampaign"
    settings_model = ActiveCampaignSettings
    idempotent_actions = frozenset({UPSERT_CONTACT, DELETE_CONTACT})
    default_limits = Limits(windows=[RateWindow(requests=5, per=timedelta(seconds=1))])

    def __init__(
        self,
        name: str,
        settings: ActiveCampaignSettings,
        http: httpx.AsyncClient,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name, settings, http, clock=clock)
        self.keys = KeyRing(
            name, self.kind, [("api_key", settings.api_key), ("next_api_key", settings.next_api_key)]
        )
        # The dispatcher takes one slot per effect; a delete makes two API calls (look up, then
        # delete), so every API call also takes a slot here, keeping the account under its limit.
        self._calls = Limiter(self.limits)

    # actions ------------------------------------------------------------------------------

    @handles(UPSERT_CONTACT)
    async def _upsert(self, effect: Effect) -> Receipt:
        payload = effect.payload
        email = _email(payload)
        contact: dict[str, Any] = {"email": email}
        if payload.get("phone"):
            contact["phone"] = str(payload["phone"])
        values = []
        for field, value in (payload.get("fields") or {}).items():
            if value is None:
                continue
            if field in STANDARD_FIELDS:
                contact[field] = _text(value)
            elif field in self.settings.field_ids:
                values.append({"field": self.settings.field_ids[field], "value": _text(value)})
            else:
                raise PermanentDeliveryError(f"activecampaign: no custom field id for {field!r} in field_ids")
        if values:
            contact["fieldValues"] = values
        response = await self._api("POST", "/api/3/contact/sync", json={"contact": contact})
        self.check(response, error_text=_error_text(response))
        remote = _json(response).get("contact", {})
        return Receipt(
            remote_id=str(remote["id"]) if isinstance(remote, dict) and "id" in remote else None,
            status_code=response.status_code,
        )

    @handles(TRACK_EVENT)
    async def _track(self, effect: Effect) -> Receipt:
        payload = effect.payload
        if payload.get("backfill"):
            # a replay of history would start automations today: not sent (see the docstring)
            return Receipt(detail={"skipped": "backfill: event tracking would start automations"})
        if self.settings.actid is None or self.settings.event_key is None:
            raise PermanentDeliveryError(
                "activecampaign: event tracking is not configured (set actid and event_key)"
            )
        name = str(payload.get("event") or payload.get("name") or "")
        if not name or len(name) > MAX_EVENT_NAME:
            raise PermanentDeliveryError(
                f"activecampaign: an event name must be 1 to {MAX_EVENT_NAME} characters, got {name!r}"
            )
        form = {
            "actid": self.settings.actid,
            "key": self.settings.event_key.get_secret_value(),
            "event": name,
            "visit": json.dumps({"email": _email(payload)}, separators=(",", ":")),
        }
        data = payload.get("eventdata", payload.get("properties"))
        if data is not None:
            form["eventdata"] = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        response = await self.request("POST", self.settings.events_url, data=form)
        self.check(response)
        answer = _json(response)
        # The tracking service says in the body whether it took the event (a 200 either way).
        if str(answer.get("success", "1")) == "0":
            raise PermanentDeliveryError(
                f"activecampaign event tracking refused the event: {answer.get('message') or answer}",
                status=response.status_code,
            )
        return Receipt(status_code=response.status_code)

    @handles(DELETE_CONTACT)
    async def _delete(self, effect: Effect) -> Receipt:
        email = _email(effect.payload)
        found = await self._api("GET", "/api/3/contacts", params={"email": email})
        self.check(found, error_text=_error_text(found))
        contacts = [
            c for c in _json(found).get("contacts", []) if str(c.get("email", "")).lower() == email.lower()
        ]
        if not contacts:
            return Receipt(status_code=found.status_code, detail={"absent": True})
        for contact in contacts:
            response = await self._api("DELETE", f"/api/3/contacts/{contact['id']}")
            if response.status_code == 404:
                continue  # deleted meanwhile: what we wanted
            self.check(response, error_text=_error_text(response))
        return Receipt(remote_id=str(contacts[0]["id"]), status_code=200)

    # helpers ------------------------------------------------------------------------------

    async def _api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base_url + path

        async def call(key: str) -> httpx.Response:
            async with self._calls.slot():
                return await self.request(
                    method, url, headers={"Api-Token": key, "Accept": "application/json"}, **kwargs
                )

        return await self.keys.send(call, refused_credentials)


def _email(payload: dict[str, Any]) -> str:
    email = payload.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise PermanentDeliveryError("activecampaign needs the contact's email address, and there is none")
    return email


def _text(value: Any) -> str:
    """ActiveCampaign field values are text; lists in its multi-select form `||a||b||`."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return "||" + "||".join(_text(v) for v in value) + "||"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(response: httpx.Response) -> str | None:
    """ActiveCampaign's words: `{"errors": [{"title": ...}]}` or `{"message": ...}`."""
    if response.status_code < 300:
        return None
    body = _json(response)
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors:
            if isinstance(error, dict):
                title = str(error.get("title") or error.get("code") or error)
                pointer = (
                    (error.get("source") or {}).get("pointer")
                    if isinstance(error.get("source"), dict)
                    else None
                )
                parts.append(f"{title} ({pointer})" if pointer else title)
        if parts:
            return "; ".join(parts)
    if isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])
    return None
