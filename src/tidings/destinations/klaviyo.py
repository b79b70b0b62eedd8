"""Klaviyo: profile import (upsert), events with Klaviyo's own dedupe, data-privacy deletion.

Every call carries the credentials, the `revision` header Klaviyo requires, and the JSON:API
media type. The three actions are idempotent: profile import is an upsert, deletion of what is
already deleted is harmless, and an event carries the effect's idempotency key as `unique_id`, so
Klaviyo records a repeated event (same profile and metric) once.

Credentials, one of:
- `api_key` (a private key, `Authorization: Klaviyo-API-Key ...`), with `next_api_key` for a
  rotation without pause (`KeyRing` in base.py: on 401/403 the other key is tried at once).
- `oauth` (an installed OAuth app: client id and secret, refresh token): access tokens come from
  `https://a.klaviyo.com/oauth/token` (refresh_token grant, client authenticated with HTTP Basic),
  last an hour, and go as `Authorization: Bearer`; they are renewed a minute before they expire
  and once on a 401 (`tidings.destinations.oauth`).
Keys and tokens are never logged; log lines name keys only as `api_key` / `next_api_key`.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any, Literal

import httpx
from pydantic import SecretStr, model_validator

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
from tidings.destinations.oauth import OAuthSession, OAuthSettings
from tidings.exceptions import PermanentDeliveryError

TOKEN_URL = "https://a.klaviyo.com/oauth/token"
REVISION = "2026-07-15"
MEDIA_TYPE = "application/vnd.api+json"

# Klaviyo's standard profile attributes; any other synced field is a custom property.
PROFILE_ATTRIBUTES = frozenset(
    {"first_name", "last_name", "organization", "locale", "title", "image", "location", "external_id"}
)
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

# Per endpoint, from the spec's `x-klaviyo-ratelimit` (burst per second, steady per minute).
ENDPOINT_LIMITS = {
    "/api/events": (350, 3500),
    "/api/profile-import": (75, 750),
    "/api/data-privacy-deletion-jobs": (3, 60),
}


def _windows(per_second: int, per_minute: int) -> list[RateWindow]:
    return [
        RateWindow(requests=per_second, per=timedelta(seconds=1)),
        RateWindow(requests=per_minute, per=timedelta(minutes=1)),
    ]


class KlaviyoSettings(DestinationSettings):
    kind: Literal["klaviyo"]
    api_key: SecretStr | None = None  # a private key (pk_...), scopes events/profiles/data-privacy:write
    next_api_key: SecretStr | None = None  # the key being rotated in
    oauth: OAuthSettings | None = None  # instead of api_key: an installed OAuth app
    revision: str = REVISION

    @model_validator(mode="after")
    def _one_credential(self) -> KlaviyoSettings:
        if (self.api_key is None) == (self.oauth is None):
            raise ValueError("give either api_key or oauth (client_id, client_secret, refresh_token)")
        if self.next_api_key is not None and self.api_key is None:
            raise ValueError("next_api_key rotates an api_key; with oauth there is no key to rotate")
        return self


class KlaviyoDestination(Destination[KlaviyoSettings]):
    kind = "klaviyo"
    settings_model = KlaviyoSettings
    idempotent_actions = frozenset({UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT})
    default_base_url = "https://a.klaviyo.com"
    # One budget per destination: profile import's 75/s and 750/min, the action profile sync
    # uses most, and within the events endpoint's 350/s and 3500/min. Deletions (3/s, 60/min)
    # are paced below on top of it. See docs/destinations/klaviyo.md.
    default_limits = Limits(windows=_windows(*ENDPOINT_LIMITS["/api/profile-import"]))

    def __init__(
        self, name: str, settings: KlaviyoSettings, http: httpx.AsyncClient, *, clock: Clock | None = None
    ) -> None:
        super().__init__(name, settings, http, clock=clock)
        self.keys: KeyRing | None = None
        self.oauth: OAuthSession | None = None
        if settings.oauth is not None:
            token_url = settings.oauth.token_url or (
                f"{settings.base_url.rstrip('/')}/oauth/token" if settings.base_url else TOKEN_URL
            )
            self.oauth = OAuthSession(self, settings.oauth, token_url)
        else:
            self.keys = KeyRing(
                name, self.kind, [("api_key", settings.api_key), ("next_api_key", settings.next_api_key)]
            )
        # Deletions have their own, much smaller budget; paced in this process on top of the
        # destination's (a 429 with Retry-After covers other processes sharing the account).
        self._deletions = Limiter(
            Limits(windows=_windows(*ENDPOINT_LIMITS["/api/data-privacy-deletion-jobs"]))
        )

    # ------------------------------------------------------------------ actions

    @handles(UPSERT_CONTACT)
    async def _upsert(self, effect: Effect) -> Receipt:
        payload = effect.payload
        attributes: dict[str, Any] = _identifiers(payload)
        properties: dict[str, Any] = {}
        for field, value in (payload.get("fields") or {}).items():
            if field in PROFILE_ATTRIBUTES:
                attributes[field] = value
            else:
                properties[field] = value
        if not any(attributes.get(k) for k in ("email", "phone_number", "external_id")):
            raise PermanentDeliveryError("klaviyo: the profile has no email, E.164 phone or external_id")
        if properties:
            attributes["properties"] = properties
        body = {"data": {"type": "profile", "attributes": attributes}}
        response = await self._post("/api/profile-import", body)
        data = _json(response).get("data") or {}
        return Receipt(
            remote_id=data.get("id") if isinstance(data, dict) else None,
            status_code=response.status_code,
            detail={"created": response.status_code == 201},
        )

    @handles(TRACK_EVENT)
    async def _track(self, effect: Effect) -> Receipt:
        payload, unique_id = effect.payload, effect.idempotency_key
        metric = payload.get("event") or payload.get("metric") or payload.get("name")
        if not isinstance(metric, str) or not metric:
            raise PermanentDeliveryError("klaviyo: the event has no name (payload 'event')")
        profile = _identifiers(payload)
        if not profile:
            raise PermanentDeliveryError(
                "klaviyo: the event's profile has no email, E.164 phone or external_id"
            )
        attributes: dict[str, Any] = {
            "properties": dict(payload.get("properties") or {}),
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "profile": {"data": {"type": "profile", "attributes": profile}},
            "unique_id": unique_id,  # Klaviyo records a repeat (same profile + metric) once
        }
        when = payload.get("occurred_at") or payload.get("time")
        if when is not None:
            attributes["time"] = when
        for key in ("value", "value_currency"):
            if payload.get(key) is not None:
                attributes[key] = payload[key]
        if payload.get("backfill"):
            attributes["backfill"] = True  # recorded, but starts no flow (history replays)
        response = await self._post("/api/events", {"data": {"type": "event", "attributes": attributes}})
        return Receipt(status_code=response.status_code, detail={"unique_id": unique_id})

    @handles(DELETE_CONTACT)
    async def _delete(self, effect: Effect) -> Receipt:
        payload = effect.payload
        # Exactly one identifier (Klaviyo refuses several); every profile matching it is deleted.
        profile: dict[str, Any] = {"type": "profile", "attributes": {}}
        found = _identifiers(payload)
        if found.get("email"):
            profile["attributes"] = {"email": found["email"]}
        elif found.get("phone_number"):
            profile["attributes"] = {"phone_number": found["phone_number"]}
        elif payload.get("klaviyo_id"):
            profile["id"] = str(payload["klaviyo_id"])
        else:
            raise PermanentDeliveryError(
                "klaviyo: nothing to delete by (no email, E.164 phone or klaviyo_id)"
            )
        body = {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": profile}}}}
        async with self._deletions.slot():
            response = await self._post("/api/data-privacy-deletion-jobs", body)
        return Receipt(status_code=response.status_code)

    # ------------------------------------------------------------------ HTTP

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        content = json.dumps(body, separators=(",", ":"), default=str).encode()

        async def call(authorization: str) -> httpx.Response:
            return await self.request(
                "POST",
                f"{self.base_url}{path}",
                content=content,
                headers={
                    "authorization": authorization,
                    "revision": self.settings.revision,
                    "content-type": MEDIA_TYPE,
                    "accept": MEDIA_TYPE,
                },
            )

        if self.oauth is not None:
            response = await self.oauth.send(lambda token: call(f"Bearer {token}"))
        else:
            assert self.keys is not None
            response = await self.keys.send(lambda key: call(f"Klaviyo-API-Key {key}"), refused_credentials)
        self.check(response, error_text=_error_text(response))
        return response


def _identifiers(payload: dict[str, Any]) -> dict[str, Any]:
    """email / phone_number (E.164 only: Klaviyo refuses others) / external_id from a payload."""
    found: dict[str, Any] = {}
    if payload.get("email"):
        found["email"] = payload["email"]
    phone = payload.get("phone") or payload.get("phone_number")
    if isinstance(phone, str) and E164.match(phone):
        found["phone_number"] = phone
    if payload.get("external_id"):
        found["external_id"] = str(payload["external_id"])
    return found


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        parsed = response.json()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error_text(response: httpx.Response) -> str | None:
    """Klaviyo's `{"errors": [{"detail", "source": {"pointer"}}]}` as one line (None: not that shape)."""
    if response.status_code < 300:
        return None
    errors = _json(response).get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        text = str(error.get("detail") or error.get("title") or error.get("code") or "")
        source = error.get("source")
        pointer = source.get("pointer") or source.get("parameter") if isinstance(source, dict) else None
        parts.append(f"{text} (at {pointer})" if pointer else text)
    return "; ".join(p for p in parts if p) or None
