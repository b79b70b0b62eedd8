"""The hubspot kind, end to end through HTTP into the store, on SQLite and PostgreSQL.

Requests are signed with the official SDK's `hubspot.utils.signature.Signature` (v1, v2, v3);
the official v1/v2 vectors from HubSpot's docs are checked as well.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from hubspot.utils.signature import Signature

from tests.conftest import FIXTURES, fixture, inbox_rows, request_count
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError
from tidings.ingest.hubspot import legacy_signature

VECTORS = fixture("hubspot/signature_v1_v2_test_vectors.json")
SECRET = VECTORS["v1"]["client_secret"]
NEXT_SECRET = "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"
URL = "http://tidings.test/hooks/crm"  # what the test client calls, so what tidings sees
CONFIG = """
sources:
  crm:
    kind: hubspot
    secrets: ["${HUBSPOT_CLIENT_SECRET}", "${HUBSPOT_NEXT_SECRET}"]
"""
ENV = {"HUBSPOT_CLIENT_SECRET": SECRET, "HUBSPOT_NEXT_SECRET": NEXT_SECRET}
MIXED = fixture("hubspot/webhook_batch_mixed_CONSTRUCTED.json")["body"]


def v3(body: bytes, when: datetime, uri: str = URL, secret: str = SECRET) -> dict[str, str]:
    """v3 headers as the official SDK computes the signature (timestamp in milliseconds)."""
    stamp = str(int(when.timestamp() * 1000))
    sig = Signature.get_signature(
        secret, body.decode(), "v3", http_uri=uri, http_method="POST", timestamp=stamp
    )
    return {
        "x-hubspot-signature-v3": sig,
        "x-hubspot-request-timestamp": stamp,
        "content-type": "application/json",
    }


def legacy(body: bytes, version: str, uri: str = URL, secret: str = SECRET) -> dict[str, str]:
    sig = Signature.get_signature(secret, body.decode(), version, http_uri=uri, http_method="POST")
    return {
        "x-hubspot-signature": sig,
        "x-hubspot-signature-version": version,
        "content-type": "application/json",
    }


def batch(*events: dict[str, object]) -> bytes:
    return json.dumps(list(events)).encode()


# --------------------------------------------------------------------------- official vectors


def test_official_v1_and_v2_vectors() -> None:
    one, two = VECTORS["v1"], VECTORS["v2"]
    got_v1 = legacy_signature(one["client_secret"].encode(), "v1", "POST", URL, one["raw_body"].encode())
    got_v2 = legacy_signature(two["client_secret"].encode(), "v2", two["method"], two["uri"], b"")
    assert got_v1.hex() == one["expected_X-HubSpot-Signature"]
    assert got_v2.hex() == two["expected_X-HubSpot-Signature"]


async def test_official_v1_request_is_split_into_stored_events(running) -> None:
    vector = VECTORS["v1"]
    headers = {
        "x-hubspot-signature": vector["expected_X-HubSpot-Signature"],
        "x-hubspot-signature-version": "v1",
        "content-type": "application/json",
    }
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=vector["raw_body"].encode(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        [row] = inbox_rows(tidings)
        assert row.topic == "contact.creation"
        assert json.loads(row.payload) == json.loads(vector["raw_body"])[0]
        assert row.status == "pending"


# --------------------------------------------------------------------------- SDK-signed requests


async def test_v3_signed_batch_from_the_docs_is_accepted(running, clock) -> None:
    body = (FIXTURES / "hubspot" / "webhook_batch_contact_creation.json").read_bytes()
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert row.topic == "contact.creation"
        assert row.payload == json.dumps(json.loads(body)[0], separators=(",", ":")).encode()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_legacy_signatures_verify(running, version) -> None:
    body = batch(*MIXED)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=legacy(body, version))
        assert response.status_code == 200, response.text
        assert len(inbox_rows(tidings)) == 3


async def test_v2_signs_the_uri(running) -> None:
    body = batch(*MIXED)
    headers = legacy(body, "v2", uri="https://elsewhere.example/hooks/crm")
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=headers)
        assert response.status_code == 401
        assert inbox_rows(tidings) == []


async def test_mixed_batch_becomes_one_item_per_event(running, clock) -> None:
    body = batch(*MIXED)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
        assert response.json() == {"status": "accepted", "accepted": 3, "duplicates": 0}
        rows = inbox_rows(tidings)
        assert [r.topic for r in rows] == [
            "contact.propertyChange",
            "contact.creation",
            "deal.propertyChange",
        ]
        assert [json.loads(r.payload) for r in rows] == MIXED
        assert len({r.dedupe_key for r in rows}) == 3
        assert request_count(tidings) == 1


async def test_resent_batch_stores_only_its_new_events(running, clock) -> None:
    first = batch(MIXED[0], MIXED[1])
    # HubSpot's retry counts attemptNumber up; a re-sent event is still the same event.
    resent = batch(*({**e, "attemptNumber": e["attemptNumber"] + 1} for e in MIXED[:2]), MIXED[2])
    async with running(CONFIG, ENV) as (tidings, client):
        await client.post("/hooks/crm", content=first, headers=v3(first, clock.now()))
        clock.advance(120)
        response = await client.post("/hooks/crm", content=resent, headers=v3(resent, clock.now()))
        assert response.status_code == 200
        assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 2}
        rows = inbox_rows(tidings)
        assert [r.topic for r in rows] == [
            "contact.propertyChange",
            "contact.creation",
            "deal.propertyChange",
        ]
        assert json.loads(rows[2].payload)["eventId"] == 102


@pytest.mark.parametrize(
    "change",
    [{"objectId": 999}, {"propertyValue": "lead"}, {"occurredAt": 1564113609999}, {"subscriptionId": 1}],
    ids=["other-object", "other-value", "other-time", "other-subscription"],
)
async def test_a_reused_event_id_with_other_facts_is_a_new_event(running, clock, change) -> None:
    one = MIXED[0]
    body = batch(one, {**one, **change})  # eventId is "not guaranteed to be unique"
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
        assert response.json()["accepted"] == 2


async def test_any_configured_secret_verifies(running, clock) -> None:
    body = batch(MIXED[1])
    async with running(CONFIG, ENV) as (_, client):
        response = await client.post(
            "/hooks/crm", content=body, headers=v3(body, clock.now(), secret=NEXT_SECRET)
        )
        assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- the signed URI


async def test_public_url_is_what_hubspot_signed_behind_a_proxy(running, clock) -> None:
    config = CONFIG + "    public_url: https://hooks.example.com/hooks/crm\n"
    body = batch(MIXED[0])
    async with running(config, ENV) as (_, client):
        public = await client.post(
            "/hooks/crm", content=body, headers=v3(body, clock.now(), "https://hooks.example.com/hooks/crm")
        )
        internal = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
        assert (public.status_code, internal.status_code) == (200, 401)
        query = await client.post(
            "/hooks/crm?app=42",
            content=body,
            headers=v3(body, clock.now(), "https://hooks.example.com/hooks/crm?app=42"),
        )
        assert query.status_code == 200, query.text  # the request's query string is kept


@pytest.mark.parametrize(
    "signed_uri",
    [f"{URL}?email=ann@example.com&tag=(vip)", f"{URL}?email=ann%40example.com&tag=%28vip%29"],
    ids=["decoded-as-hubspot-docs", "verbatim-as-the-sdk"],
)
async def test_v3_uri_escapes_verify_decoded_or_verbatim(running, clock, signed_uri) -> None:
    body = batch(MIXED[0])
    async with running(CONFIG, ENV) as (_, client):
        response = await client.post(
            "/hooks/crm?email=ann%40example.com&tag=%28vip%29",
            content=body,
            headers=v3(body, clock.now(), signed_uri),
        )
        assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-301, 401), (-299, 200), (301, 401)],
    ids=["stale", "just-in-time", "far-future"],
)
async def test_v3_timestamp_window(running, clock, offset, status) -> None:
    body = batch(MIXED[0])
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post(
            "/hooks/crm", content=body, headers=v3(body, clock.now() + timedelta(seconds=offset))
        )
        assert response.status_code == status, response.text
        if status == 401:
            assert response.json()["error"] == "timestamp_out_of_tolerance"
            assert inbox_rows(tidings) == []


async def test_a_timestamp_in_seconds_is_read_as_milliseconds_and_refused(running, clock) -> None:
    body = batch(MIXED[0])
    stamp = str(int(clock.now().timestamp()))
    sig = Signature.get_signature(
        SECRET, body.decode(), "v3", http_uri=URL, http_method="POST", timestamp=stamp
    )
    headers = {
        "x-hubspot-signature-v3": sig,
        "x-hubspot-request-timestamp": stamp,
        "content-type": "application/json",
    }
    async with running(CONFIG, ENV) as (_, client):
        response = await client.post("/hooks/crm", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "timestamp_out_of_tolerance"


async def test_a_stale_v3_signature_does_not_fall_back_to_v1(running, clock) -> None:
    body = batch(MIXED[0])
    headers = {**legacy(body, "v1"), **v3(body, clock.now() - timedelta(hours=1))}
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=headers)
        assert response.status_code == 401
        assert inbox_rows(tidings) == []


async def test_signature_versions_restricts_what_is_accepted(running, clock) -> None:
    config = CONFIG + "    signature_versions: [v3]\n"
    body = batch(MIXED[0])
    async with running(config, ENV) as (tidings, client):
        old = await client.post("/hooks/crm", content=body, headers=legacy(body, "v1"))
        assert old.status_code == 401
        assert old.json()["error"] == "signature_version_not_accepted"
        new = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
        assert new.status_code == 200
        assert len(inbox_rows(tidings)) == 1


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.clear() or h.update({"content-type": "application/json"}), "missing_signature"),
        (lambda h: h.update({"x-hubspot-signature": "ab" * 32}), "invalid_signature"),
        (lambda h: h.update({"x-hubspot-signature": "not hex"}), "invalid_signature"),
        (lambda h: h.update({"x-hubspot-signature-version": "v9"}), "invalid_signature"),
        (lambda h: h.pop("x-hubspot-signature-version"), "invalid_signature"),
    ],
    ids=["missing", "wrong", "not-hex", "unknown-version", "no-version"],
)
async def test_bad_legacy_signatures_get_401(running, mutate, code) -> None:
    body = batch(MIXED[0])
    headers = legacy(body, "v1")
    mutate(headers)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.pop("x-hubspot-request-timestamp"), "missing_signature"),
        (lambda h: h.update({"x-hubspot-request-timestamp": "yesterday"}), "invalid_timestamp"),
        (lambda h: h.update({"x-hubspot-signature-v3": "A" * 44}), "invalid_signature"),
        (lambda h: h.update({"x-hubspot-signature-v3": "%%%"}), "invalid_signature"),
    ],
    ids=["no-timestamp", "timestamp-not-a-number", "wrong", "not-base64"],
)
async def test_bad_v3_signatures_get_401(running, clock, mutate, code) -> None:
    body = batch(MIXED[0])
    headers = v3(body, clock.now())
    mutate(headers)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"eventId":1,"subscriptionType":"contact.creation"}', "not a JSON array"),
        (b'[{"eventId":1,', "invalid JSON"),
        (b"[]", "no events"),
        (b'[{"eventId":1}, "two"]', "event 1 is not a JSON object"),
        (b'[{"subscriptionType":"contact.creation","objectId":5}]', "event 0 has no eventId"),
    ],
    ids=["object", "truncated", "empty", "not-an-object", "no-event-id"],
)
async def test_authentic_but_uninterpretable_body_is_stored_flagged(running, clock, body, reason) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"
        assert reason in row.error


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    secrets: []\n", "at least one secret"),
        ('    secrets: ["s"]\n    signature_versions: [v4]\n', "signature_versions"),
        ('    secrets: ["s"]\n    signature_versions: []\n', "at least one of v1, v2, v3"),
        ('    secrets: ["s"]\n    public_url: /hooks/crm\n', "absolute URL"),
        ('    secrets: ["s"]\n    public_url: https://h.example/hooks/crm?x=1\n', "query string"),
    ],
    ids=["no-secret", "unknown-version", "no-version", "relative-url", "url-with-query"],
)
def test_configuration_errors_are_explained(extra, message) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_settings("sources:\n  crm:\n    kind: hubspot\n" + extra, "t.yaml", {})
    assert message in str(info.value)
