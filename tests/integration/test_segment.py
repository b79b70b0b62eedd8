"""The Segment-compatible tracking API, end to end through HTTP into the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from tests.conftest import fixture, inbox_rows, request_count
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError

KEY = "wk_3f9a1c2e7b"
OLD_KEY = "wk_rotated_out_soon"
CONFIG = f"""
sources:
  web:
    kind: segment
    write_keys: ["{KEY}", "{OLD_KEY}"]
"""
TWO_SOURCES = f"""
sources:
  web:
    kind: segment
    write_keys: ["{KEY}"]
  mobile:
    kind: segment
    write_keys: ["wk_mobile_app"]
"""
JSON = {"content-type": "application/json"}


def basic(key: str, colon: bool = True) -> dict[str, str]:
    credentials = base64.b64encode(f"{key}{':' if colon else ''}".encode()).decode()
    return {**JSON, "authorization": f"Basic {credentials}"}


def with_key(doc: dict[str, Any], key: str = KEY) -> bytes:
    """A documentation example with our write key in place of YOUR_WRITE_KEY."""
    return json.dumps({**doc, "writeKey": key}).encode()


def stored(row: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(row.payload)
    return result


@pytest.mark.parametrize(
    ("call", "topic"),
    [("identify", "identify"), ("track", "track:Item Purchased"), ("page", "page")],
)
async def test_documented_calls_with_write_key_in_body_are_stored(running, call, topic) -> None:
    doc = fixture(f"segment/{call}.json")
    async with running(CONFIG) as (tidings, client):
        response = await client.post(f"/v1/{call}", content=with_key(doc), headers=JSON)
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "status": "accepted", "accepted": 1, "duplicates": 0}
        [row] = inbox_rows(tidings)
        assert (row.source, row.topic, row.status) == ("web", topic, "pending")
        payload = stored(row)
        assert payload["type"] == call  # filled in from the path: later stages see one shape
        assert "writeKey" not in payload  # a secret is not part of the event
        assert payload["userId"] == doc["userId"] and payload["timestamp"] == doc["timestamp"]
        assert row.dedupe_key.startswith("sha256:")  # the doc examples carry no messageId


async def test_documented_batch_splits_into_calls_with_the_batch_context(running) -> None:
    doc = fixture("segment/batch.json")
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/batch", content=with_key(doc), headers=JSON)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 4
        rows = inbox_rows(tidings)
        assert [r.topic for r in rows] == ["identify", "track:Song Played", "identify", "track:Song Played"]
        payloads = [stored(r) for r in rows]
        assert all(p["context"] == {"device": {"type": "phone", "name": "Apple iPhone 6"}} for p in payloads)
        # the doc's malformed timestamps are the sender's data: kept as sent, not refused
        assert [p["timestamp"] for p in payloads][2:] == [
            "2015-2-02T00:30:08.276Z",
            "2015-2-02T00:30:12.984Z",
        ]
        assert payloads[1]["properties"] == {"name": "Fallin for You", "artist": "Dierks Bentley"}
        assert request_count(tidings) == 1


async def test_a_calls_own_context_wins_over_the_batch_context(running) -> None:
    body = {
        "writeKey": KEY,
        "sentAt": "2026-01-01T00:00:01Z",
        "context": {"ip": "10.0.0.1", "locale": "en-GB"},
        "integrations": {"All": False},
        "batch": [{"type": "page", "userId": "u1", "messageId": "m1", "context": {"ip": "10.9.9.9"}}],
    }
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/batch", json=body)
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert stored(row) == {
            "type": "page",
            "userId": "u1",
            "messageId": "m1",
            "context": {"ip": "10.9.9.9", "locale": "en-GB"},
            "integrations": {"All": False},
            "sentAt": "2026-01-01T00:00:01Z",
        }


@pytest.mark.parametrize("colon", [True, False], ids=["key-colon", "no-colon"])
async def test_basic_auth_write_key(running, colon) -> None:
    body = json.dumps({"userId": "u1", "event": "Signed Up", "messageId": "m-basic"}).encode()
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/track", content=body, headers=basic(KEY, colon))
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert (row.dedupe_key, row.topic) == ("m-basic", "track:Signed Up")
        assert "authorization" not in row_headers(tidings)


def row_headers(tidings: Any) -> dict[str, str]:
    from sqlalchemy import select

    from tidings.store.schema import requests

    return dict(tidings.store.read_sync(lambda conn: conn.execute(select(requests.c.headers)).scalar_one()))


async def test_any_configured_write_key_is_accepted_during_rotation(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.post("/v1/identify", json={"userId": "u1", "writeKey": OLD_KEY})
        assert response.status_code == 200, response.text


async def test_the_write_key_picks_the_source(running) -> None:
    async with running(TWO_SOURCES) as (tidings, client):
        first = await client.post("/v1/identify", json={"userId": "u1", "writeKey": "wk_mobile_app"})
        second = await client.post("/v1/identify", content=b'{"userId":"u2"}', headers=basic(KEY))
        assert first.status_code == second.status_code == 200
        assert [(r.source, stored(r)["userId"]) for r in inbox_rows(tidings)] == [
            ("mobile", "u1"),
            ("web", "u2"),
        ]


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        (basic("wk_wrong"), {"userId": "u1"}, "invalid_write_key"),
        (JSON, {"userId": "u1", "writeKey": "wk_wrong"}, "invalid_write_key"),
        # a Basic header decides, even when the body names a right key
        (basic("wk_wrong"), {"userId": "u1", "writeKey": KEY}, "invalid_write_key"),
        (JSON, {"userId": "u1"}, "missing_write_key"),
        ({**JSON, "authorization": "Basic %%%"}, {"userId": "u1"}, "invalid_write_key"),
    ],
    ids=["basic-wrong", "body-wrong", "basic-decides", "none", "garbled"],
)
async def test_wrong_or_missing_write_key_is_401_and_stores_nothing(running, headers, body, code) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/identify", content=json.dumps(body).encode(), headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []


async def test_no_segment_source_is_404(running) -> None:
    config = """
sources:
  app:
    kind: standard-webhooks
    secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"""
    async with running(config) as (_, client):
        response = await client.post("/v1/track", json={"userId": "u1", "event": "x", "writeKey": KEY})
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_source"


async def test_unknown_call_is_404(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/foo", json={"userId": "u1", "writeKey": KEY})
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_call"
        assert inbox_rows(tidings) == []


async def test_segment_source_is_not_reachable_as_a_webhook(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/web", json={"userId": "u1", "writeKey": KEY})
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_call"


def padded(size: int, separators: tuple[str, str] = (", ", ": "), **fields: Any) -> bytes:
    """A call body of exactly `size` bytes."""
    body = {**fields, "properties": {"pad": ""}}
    room = size - len(json.dumps(body, separators=separators).encode())
    body["properties"]["pad"] = "x" * room
    raw = json.dumps(body, separators=separators).encode()
    assert len(raw) == size
    return raw


async def test_a_call_of_32_kb_is_accepted_and_one_byte_more_is_413(running) -> None:
    async with running(CONFIG) as (tidings, client):
        fits = padded(32 * 1024, userId="u1", event="Big", writeKey=KEY, messageId="m-fits")
        over = padded(32 * 1024 + 1, userId="u1", event="Big", writeKey=KEY, messageId="m-over")
        assert (await client.post("/v1/track", content=fits, headers=JSON)).status_code == 200
        response = await client.post("/v1/track", content=over, headers=JSON)
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        assert [r.dedupe_key for r in inbox_rows(tidings)] == ["m-fits"]


async def test_a_call_over_32_kb_inside_a_batch_refuses_the_batch(running) -> None:
    # measured as compact JSON, the most lenient reading of "32 KB per event"
    big = json.loads(
        padded(32 * 1024 + 1, (",", ":"), type="track", userId="u1", event="Big", messageId="m-big")
    )
    body = {"writeKey": KEY, "batch": [{"type": "identify", "userId": "u1", "messageId": "m-small"}, big]}
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/batch", json=body)
        assert response.status_code == 413
        assert "#1" in response.json()["detail"]
        assert inbox_rows(tidings) == []


async def test_a_batch_over_500_kb_is_413(running) -> None:
    calls = [{"type": "identify", "userId": f"u{i}", "traits": {"bio": "y" * 1000}} for i in range(520)]
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/batch", json={"writeKey": KEY, "batch": calls})
        assert response.status_code == 413
        assert inbox_rows(tidings) == []


async def test_a_batch_of_2500_calls_is_accepted_and_2501_refused(running) -> None:
    def batch(n: int, prefix: str) -> dict[str, Any]:
        return {
            "writeKey": KEY,
            "batch": [{"type": "identify", "userId": "u", "messageId": f"{prefix}{i}"} for i in range(n)],
        }

    async with running(CONFIG) as (tidings, client):
        over = await client.post("/v1/batch", json=batch(2501, "a"))
        assert over.status_code == 413
        assert "2501" in over.json()["detail"]
        assert request_count(tidings) == 0
        fits = await client.post("/v1/batch", json=batch(2500, "b"))
        assert fits.status_code == 200, fits.text
        assert fits.json()["accepted"] == 2500


async def test_a_messageid_seen_in_an_earlier_request_is_a_duplicate(running) -> None:
    call = {"userId": "u1", "event": "Order Completed", "messageId": "ajs-next-1", "writeKey": KEY}
    async with running(CONFIG) as (tidings, client):
        first = await client.post("/v1/track", json=call)
        # the same call later arrives inside a batch, as a library retry might send it
        again = await client.post("/v1/batch", json={"writeKey": KEY, "batch": [{**call, "type": "track"}]})
        assert first.json()["accepted"] == 1
        assert again.status_code == 200
        assert again.json() == {"success": True, "status": "accepted", "accepted": 0, "duplicates": 1}
        assert len(inbox_rows(tidings)) == 1


async def test_a_messageid_repeated_within_one_batch_is_stored_once(running) -> None:
    calls = [
        {"type": "identify", "userId": "u1", "messageId": "dup"},
        {"type": "identify", "userId": "u1", "messageId": "dup"},
        {"type": "identify", "userId": "u2", "messageId": "other"},
    ]
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/batch", json={"writeKey": KEY, "batch": calls})
        assert response.json() == {"success": True, "status": "accepted", "accepted": 2, "duplicates": 1}
        assert [r.dedupe_key for r in inbox_rows(tidings)] == ["dup", "other"]


async def test_a_retry_without_messageids_is_recognised_despite_a_new_sentat(running) -> None:
    calls = [{"type": "track", "userId": "u1", "event": "Viewed", "timestamp": "2026-03-01T10:00:00Z"}]
    async with running(CONFIG) as (tidings, client):
        first = await client.post(
            "/v1/batch", json={"writeKey": KEY, "sentAt": "2026-03-01T10:00:01Z", "batch": calls}
        )
        retry = await client.post(
            "/v1/batch", json={"writeKey": KEY, "sentAt": "2026-03-01T10:00:09Z", "batch": calls}
        )
        assert (first.json()["accepted"], retry.json()["duplicates"]) == (1, 1)
        assert len(inbox_rows(tidings)) == 1


@pytest.mark.parametrize(
    ("call", "body", "reason"),
    [
        ("identify", {"traits": {"email": "a@example.com"}}, "neither userId nor anonymousId"),
        ("track", {"userId": "u1"}, "track call without event"),
        ("page", {"anonymousId": "a1", "messageId": "m" * 100}, "messageId"),
    ],
    ids=["no-user", "track-no-event", "long-messageid"],
)
async def test_an_invalid_call_with_a_valid_key_is_stored_flagged(running, call, body, reason) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=basic(KEY))
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"
        assert reason in row.error
        assert len(row.dedupe_key) < 100


async def test_one_invalid_call_holds_its_whole_batch_flagged(running) -> None:
    calls = [
        {"type": "identify", "userId": "u1", "messageId": "ok-1"},
        {"userId": "u1", "messageId": "no-type"},
        {"type": "track", "anonymousId": "a1", "messageId": "no-event"},
    ]
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/batch", json={"writeKey": KEY, "batch": calls})
        assert response.status_code == 200
        assert response.json() == {"success": True, "status": "flagged", "accepted": 3, "duplicates": 0}
        rows = inbox_rows(tidings)
        assert [(r.dedupe_key, r.status) for r in rows] == [
            ("ok-1", "flagged"),
            ("no-type", "flagged"),
            ("no-event", "flagged"),
        ]
        assert "2 of 3" in rows[0].error and "#1" in rows[0].error and "#2" in rows[0].error


async def test_malformed_json_is_flagged_when_basic_auth_proves_the_sender(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/track", content=b'{"userId": "u1", ', headers=basic(KEY))
        assert response.status_code == 200
        [row] = inbox_rows(tidings)
        assert row.status == "flagged" and "invalid JSON" in row.error


async def test_malformed_json_without_basic_auth_cannot_be_authenticated(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/track", content=b'{"writeKey": "' + KEY.encode(), headers=JSON)
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_json"
        assert request_count(tidings) == 0


async def test_only_json_is_accepted(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.post(
            "/v1/track", content=b"userId=u1", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert response.status_code == 415


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
async def test_what_the_official_python_library_sends_is_accepted(running, monkeypatch, use_gzip) -> None:
    """The real analytics-python client's wire bytes (Basic auth, writeKey in body, sentAt,
    messageId, context.library), captured and replayed through tidings."""
    request_module = pytest.importorskip("segment.analytics.request")
    from segment.analytics.client import Client

    sent: list[tuple[str, bytes, dict[str, str]]] = []

    class Captured:
        status_code = 200

    def capture(url: str, data: Any = None, headers: Any = None, **_: Any) -> Captured:
        sent.append((url, data if isinstance(data, bytes) else data.encode(), dict(headers)))
        return Captured()

    monkeypatch.setattr(request_module._session, "post", capture)
    library = Client(KEY, host="http://tidings.test", sync_mode=True, gzip=use_gzip)
    library.identify("user-42", {"email": "ann@example.com"})
    library.track("user-42", "Order Completed", {"revenue": 42.5})

    async with running(CONFIG) as (tidings, client):
        for url, data, headers in sent:
            assert url == "http://tidings.test/v1/batch"
            response = await client.post("/v1/batch", content=data, headers=headers)
            assert response.status_code == 200, response.text
        # a retry of the same call (re-stamped sentAt, X-Retry-Count) is a duplicate
        url, data, headers = sent[-1]
        retry = await client.post("/v1/batch", content=data, headers={**headers, "x-retry-count": "1"})
        assert retry.json()["duplicates"] == 1
        rows = inbox_rows(tidings)
        assert [r.topic for r in rows] == ["identify", "track:Order Completed"]
        payload = stored(rows[1])
        assert payload["context"]["library"]["name"] == "analytics-python"
        assert payload["properties"] == {"revenue": 42.5}
        assert rows[1].dedupe_key == payload["messageId"]


async def test_a_gzip_body_inflating_past_the_limit_is_413(running) -> None:
    body = gzip.compress(padded(32 * 1024 + 1, userId="u1", event="Big"))
    headers = {**basic(KEY), "content-encoding": "gzip"}
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/v1/track", content=body, headers=headers)
        assert response.status_code == 413
        assert request_count(tidings) == 0


@pytest.mark.parametrize(
    ("keys", "message"),
    [("[]", "at least one write key"), ('["a:b"]', "cannot contain ':'")],
)
def test_write_keys_are_checked_when_the_config_loads(keys, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_settings(f"sources:\n  web:\n    kind: segment\n    write_keys: {keys}\n", "t.yaml", {})


async def test_write_key_in_the_body_is_not_kept_in_the_store(running) -> None:
    """The raw body is kept for audit, but a credential in it is not."""
    from tests.conftest import inbox_rows

    call = {"userId": "u1", "event": "Signed Up", "messageId": "m-wk", "writeKey": "wk-secret-1"}
    async with running(_WK_CONFIG) as (tidings, client):
        response = await client.post(
            "/v1/track", content=json.dumps(call).encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 200
        from sqlalchemy import select

        from tidings.store.schema import requests

        [body] = tidings.store.read_sync(lambda c: list(c.execute(select(requests.c.body)).scalars()))
        assert b"wk-secret-1" not in body
        assert json.loads(body)["event"] == "Signed Up"
        [row] = inbox_rows(tidings)
        assert b"wk-secret-1" not in row.payload


_WK_CONFIG = """
sources:
  web:
    kind: segment
    write_keys: ["wk-secret-1"]
"""
