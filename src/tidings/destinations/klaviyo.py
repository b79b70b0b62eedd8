"""Klaviyo: profile import (upsert), events with Klaviyo's own dedupe, data-privacy deletion.

Every call carries `Authorization: Klaviyo-API-Key <private key>`, the `revision` header Klaviyo
requires, and the JSON:API media type. The three actions are idempotent: profile import is an
upsert, deletion of what is already deleted is harmless, and an event carries the effect's
idempotency key as `unique_id`, so Klaviyo records a repeated event (same profile and metric) once.

Key rotation: `next_api_key` may be set beside `api_key`. When Klaviyo refuses the key in use
(401/403), the other one is tried at once and, if it works, used from then on; so a new key can
be added, the old one revoked at Klaviyo, and `api_key` replaced later, without a paused
destination. Keys are never logged; log lines name them only as `api_key` / `next_api_key`.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from tidings.delivery.effects import DELETE_CONTACT, TRACK_EVENT, UPSERT_CONTACT, Effect, Receipt
from tidings.delivery.limits import Limiter
from tidings.destinations.base import Destination, DestinationSettings, Limits, RateWindow
from tidings.exceptions import PermanentDeliveryError

log = logging.getLogger(__name__)

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
    api_key: SecretStr  # a private key (pk_...), with scopes events/profiles/data-privacy:write
    next_api_key: SecretStr | None = None  # the key being rotated in
    revision: str = REVISION


class KlaviyoDestination(Destination[KlaviyoSettings]):
    kind = "klaviyo"
    settings_model = KlaviyoSettings
    actions = frozenset({UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT})
    idempotent_actions = frozenset({UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT})
    default_base_url = "https://a.klaviyo.com"
    # One budget per destination: profile import's 75/s and 750/min, the action profile sync
    # uses most, and within the events endpoint's 350/s and 3500/min. Deletions (3/s, 60/min)
    # are paced below on top of it. See docs/destinations/klaviyo.md.
    default_limits = Limits(windows=_windows(*ENDPOINT_LIMITS["/api/profile-import"]))

    def __init__(self, name: str, settings: KlaviyoSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._keys: list[tuple[str, SecretStr]] = [("api_key", settings.api_key)]
        if settings.next_api_key is not None:
            self._keys.append(("next_api_key", settings.next_api_key))
        self._key = 0  # index of the key in use
        # Deletions have their own, much smaller budget; paced in this process on top of the
        # destination's (a 429 with Retry-After covers other processes sharing the account).
        self._deletions = Limiter(
            Limits(windows=_windows(*ENDPOINT_LIMITS["/api/data-privacy-deletion-jobs"]))
        )

    async def deliver(self, effect: Effect) -> Receipt:
        if effect.action == UPSERT_CONTACT:
            return await self._upsert(effect.payload)
        if effect.action == TRACK_EVENT:
            return await self._track(effect.payload, effect.idempotency_key)
        if effect.action == DELETE_CONTACT:
            return await self._delete(effect.payload)
        raise PermanentDeliveryError(f"klaviyo does not support {effect.action}")

    # ------------------------------------------------------------------ actions

    async def _upsert(self, payload: dict[str, Any]) -> Receipt:
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

    async def _track(self, payload: dict[str, Any], unique_id: str) -> Receipt:
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
        for key in ("time", "value", "value_currency"):
            if payload.get(key) is not None:
                attributes[key] = payload[key]
        if payload.get("backfill"):
            attributes["backfill"] = True  # recorded, but starts no flow (history replays)
        response = await self._post("/api/events", {"data": {"type": "event", "attributes": attributes}})
        return Receipt(status_code=response.status_code, detail={"unique_id": unique_id})

    async def _delete(self, payload: dict[str, Any]) -> Receipt:
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
        tried = 0
        while True:
            name, key = self._keys[self._key]
            response = await self.request(
                "POST",
                f"{self.base_url}{path}",
                content=content,
                headers={
                    "authorization": f"Klaviyo-API-Key {key.get_secret_value()}",
                    "revision": self.settings.revision,
                    "content-type": MEDIA_TYPE,
                    "accept": MEDIA_TYPE,
                },
            )
            tried += 1
            if response.status_code in (401, 403) and tried < len(self._keys):
                following = (self._key + 1) % len(self._keys)
                log.warning(
                    "klaviyo refused %s; trying %s",
                    name,
                    self._keys[following][0],
                    extra={
                        "action": "key_rotation",
                        "destination": self.name,
                        "refused": name,
                        "trying": self._keys[following][0],
                    },
                )
                self._key = following
                continue
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
