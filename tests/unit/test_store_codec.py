"""The store's own encoders write what SQLAlchemy's defaults would, only faster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.sqlite.base import DATETIME

from tidings.store.codec import json_dumps, json_loads, sqlite_datetime, sqlite_timestamp

SQLALCHEMY_TEXT = DATETIME().bind_processor(sqlite.dialect())
SQLALCHEMY_VALUE = DATETIME().result_processor(sqlite.dialect(), None)
AWARE = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))])
)


@given(AWARE)
def test_a_timestamp_is_the_text_sqlalchemys_sqlite_datetime_writes(value: datetime) -> None:
    assert sqlite_timestamp(value) == SQLALCHEMY_TEXT(value.astimezone(UTC))


@given(st.lists(AWARE, min_size=1, max_size=6))
def test_repeated_timestamps_are_each_written_as_themselves(values: list[datetime]) -> None:
    for value in values + values[::-1] + values:  # the same objects again, in other orders
        assert sqlite_timestamp(value) == SQLALCHEMY_TEXT(value.astimezone(UTC))


@given(AWARE)
def test_a_stored_timestamp_reads_back_as_the_same_instant_in_utc(value: datetime) -> None:
    text = sqlite_timestamp(value)
    back = sqlite_datetime(text)
    assert back == value and back is not None and back.tzinfo is UTC
    assert back == SQLALCHEMY_VALUE(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29 12:00:00", datetime(2026, 11, 29, 12, tzinfo=UTC)),  # SQLite's CURRENT_TIMESTAMP
        ("2026-11-29 12:00:00.5", datetime(2026, 11, 29, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-29T13:00:00+01:00", datetime(2026, 11, 29, 12, tzinfo=UTC)),
        (None, None),
    ],
)
def test_timestamp_text_written_by_others_reads_as_utc(text: str | None, expected: datetime | None) -> None:
    assert sqlite_datetime(text) == expected


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        sqlite_timestamp(datetime(2026, 11, 29, 12, 0))


@pytest.mark.parametrize(
    "value",
    [
        {"cart": {"items": [{"sku": "A1", "price": 19.99, "qty": 2}]}, "email": "zoë@example.com"},
        {"order_id": 2**70, "nested": [2**64, -(2**65)]},  # beyond 64 bits: the fallback, exact
        ["line\u2028separator", None, True, 0.1, 1e-7],
    ],
)
def test_json_reads_back_as_the_standard_library_wrote_it(value: object) -> None:
    assert json.loads(json_dumps(value)) == json.loads(json.dumps(value))


def test_integer_keys_become_strings_as_with_json_dumps() -> None:
    assert json.loads(json_dumps({1: "a"})) == {"1": "a"}


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson would read those as floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 here)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and repr(a) == repr(b)


@given(JSON_VALUES)
def test_json_reads_back_as_the_standard_library_reads_it(value: object) -> None:
    text = json.dumps(value)
    assert same(json_loads(text), json.loads(text))
    assert same(json_loads(text.encode()), json.loads(text.encode()))


@pytest.mark.parametrize(
    "text",
    [
        "[9223372036854775807, -9223372036854775808, 18446744073709551615]",
        "[-9223372036854775809, 18446744073709551616, 123456789012345678901234567890]",
        '{"id": 12345678901234567890123}',
        "[NaN, Infinity, -Infinity, 1e400]",
        '"\\ud800"',
        '"\ud800"',  # the character itself, not escaped: a str only Python holds
        "[1.0, 1, 0.1, 1e-7]",
    ],
)
def test_the_numbers_orjson_would_change_or_refuse_read_exactly(text: str) -> None:
    assert same(json_loads(text), json.loads(text)) or "NaN" in text  # nan != nan
    assert repr(json_loads(text)) == repr(json.loads(text))


def test_bad_json_fails_as_the_standard_library_says() -> None:
    for text in (b'{"a": }', b"\xff\xfe{", '{"a": 1,}'):
        with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)) as ours:
            json_loads(text)
        with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)) as theirs:
            json.loads(text)
        assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)
    assert json_loads('{"a": 1}'.encode("utf-16")) == {"a": 1}  # json.loads detects UTF-16 too
    with pytest.raises(TypeError):  # SQLAlchemy's SQLite JSON type returns a number SQLite gave as is
        json_loads(3)  # type: ignore[arg-type]
