"""Profile sync: a pending push names only the profile; its fields are rendered when it is sent.

So a push that waited (coalescing a burst, or retrying) always carries the profile as it is now.
Fields are JMESPath over `{profile: {traits, consent, identities}}`; `consent` maps each channel to
its state, `identities` each kind to its value.

What the stored payload says about *how* to push rather than *what* (`backfill: true`: the
vendor's no-trigger mode, for a backfill of existing profiles) is kept through rendering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from tidings.delivery.effects import UPSERT_CONTACT, Effect
from tidings.destinations.base import Destination
from tidings.mapping.rules import evaluate
from tidings.profiles.read import ProfileView, load, resolve
from tidings.store import Store

# Keys of a stored push that rendering keeps as they are (see docs/destinations/README.md).
CARRIED = ("backfill",)


class ProfileRenderer:
    def __init__(self, store: Store, destinations: Mapping[str, Destination[Any]]) -> None:
        self.store = store
        self.destinations = destinations

    async def __call__(self, effect: Effect) -> Effect | None:
        if effect.action != UPSERT_CONTACT or "profile_id" not in effect.payload:
            return effect
        view = await self.store.read(lambda conn: _current(conn, int(effect.payload["profile_id"])))
        destination = self.destinations.get(effect.destination)
        if view is None or destination is None:
            return None  # erased, or no longer configured: nothing to push
        payload = render(view, destination.settings.profile_sync)
        for key in CARRIED:
            if key in effect.payload:
                payload[key] = effect.payload[key]
        return replace(effect, payload=payload)


def _current(conn: Connection, pid: int) -> ProfileView | None:
    current = resolve(conn, str(pid))  # a merged profile's push goes to the one it became
    return load(conn, current) if current is not None else None


def render(view: ProfileView, sync: Any) -> dict[str, Any]:
    identities: dict[str, str] = {}
    for identity in view.identities:
        kind, _, value = identity.rpartition(":")
        identities.setdefault(kind, value)
    consent = {channel: entry.get("state", "unknown") for channel, entry in view.consent.items()}
    doc = {"profile": {"traits": view.traits, "consent": consent, "identities": identities}}
    fields = {}
    for field, expression in (sync.fields if sync is not None else {}).items():
        value = evaluate(expression, doc)
        if value is not None:
            fields[field] = value
    return {
        "profile_id": view.id,
        "email": identities.get("email"),
        "phone": identities.get("phone"),
        "fields": fields,
        "consent": consent,
    }
