"""An effect: one thing tidings intends a destination to do, as the destination sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The actions, vendor-neutral; each destination declares which it supports.
UPSERT_CONTACT = "upsert_contact"  # push profile fields (payload rendered at send time: the freshest)
TRACK_EVENT = "track_event"  # a custom event that can start an ESP-side automation
SEND_TEMPLATE = "send_template"  # a templated email to one recipient
TRIGGER_JOURNEY = "trigger_journey"  # a step of an ESP journey
DELETE_CONTACT = "delete_contact"  # erasure

ACTIONS = (UPSERT_CONTACT, TRACK_EVENT, SEND_TEMPLATE, TRIGGER_JOURNEY, DELETE_CONTACT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Effect:
    id: int
    destination: str
    action: str
    idempotency_key: str  # stable across retries: forwarded where the vendor deduplicates on one
    payload: dict[str, Any]
    attempt: int  # 1 for the first try


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """What a destination says it did."""

    remote_id: str | None = None
    status_code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """The summary of one request, recorded for every attempt (no credentials, no bodies)."""

    method: str
    url: str
    size: int
    started_at: datetime
