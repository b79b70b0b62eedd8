"""How values go into the store's columns and come back, where the defaults cost too much.

JSON columns (contexts, payloads, journal details: several per flow firing) are encoded and
decoded with orjson, several times faster than the standard library. What orjson cannot encode
(integers beyond 64 bits) falls back to `json.dumps`. Decoding falls back to `json.loads` for
what orjson refuses (NaN, a UTF-16 body) and for any text with a run of 19 digits: orjson would
read an integer beyond 64 bits as a float, silently, and `json.loads` keeps it exact.
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


# Every digit as "0", so that a run of 19 digits is one substring search: a regular expression
# scanning the text cost more than the decoding it guards (10 us against 2 for a run's context).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def json_loads(text: str | bytes) -> Any:
    """JSON as `json.loads` reads it (same values, same errors), through orjson where that is safe."""
    if isinstance(text, str):
        raw = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, bytes | bytearray):
        raw = text
    else:  # json's TypeError: SQLAlchemy's SQLite JSON type counts on it for numbers SQLite returns
        return json.loads(text)
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json.loads accepts what orjson does not (NaN), or raises its own error
    return json.loads(text)


def as_utc(value: datetime) -> datetime:
    """The store keeps aware UTC timestamps; a naive one is a bug in the caller."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return value.astimezone(UTC)


def stored_utc(value: datetime) -> datetime:
    """A timestamp read back: naive ones are UTC (how SQLite keeps them), aware ones made UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The last timestamp written and its text: a flow round or an event batch stamps every row it
# writes with the same `now`, ~9 times per fired run (a tuple, so threads swap it atomically).
_last_stamp: tuple[datetime | None, str | None] = (None, None)


def sqlite_timestamp(value: datetime | None) -> str | None:
    """An aware datetime as SQLAlchemy's SQLite DATETIME text, naive UTC ("2026-11-29 12:00:00.000000"),
    in one C call rather than its formatting of each field."""
    global _last_stamp
    if value is None:
        return None
    last, text = _last_stamp
    if value is last:
        return text
    if value.tzinfo is UTC:  # nearly always (the clock's): drop the "+00:00" rather than convert
        text = value.isoformat(" ", "microseconds")[:-6]
    else:
        text = as_utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")
    _last_stamp = (value, text)
    return text


def sqlite_datetime(text: str | None) -> datetime | None:
    """SQLite DATETIME text as an aware UTC datetime: one C call (`fromisoformat`) rather than
    SQLAlchemy's regular expression. Text is naive UTC as written above (or by SQLite's own
    CURRENT_TIMESTAMP, without fractions); an offset, if one was stored, is honoured."""
    return None if text is None else stored_utc(datetime.fromisoformat(text))
