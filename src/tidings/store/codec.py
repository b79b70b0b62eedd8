"""How values are written into the store's columns, where the defaults cost too much.

JSON columns (contexts, payloads, journal details: several per flow firing) are encoded with
orjson, several times faster than the standard library's encoder; what orjson cannot encode
(integers beyond 64 bits) falls back to `json.dumps`. Reading stays with `json.loads`, which
keeps such integers exact (orjson would turn them into floats).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # {1: ...} becomes {"1": ...}, as json.dumps does


def json_dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def as_utc(value: datetime) -> datetime:
    """The store keeps aware UTC timestamps; a naive one is a bug in the caller."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return value.astimezone(UTC)


def sqlite_timestamp(value: datetime | None) -> str | None:
    """An aware datetime as SQLAlchemy's SQLite DATETIME text, naive UTC ("2026-11-29 12:00:00.000000"),
    in one C call rather than its formatting of each field."""
    if value is None:
        return None
    return as_utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")
