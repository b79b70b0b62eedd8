"""The stripe kind, end to end through HTTP into the store, on SQLite and PostgreSQL.

Requests are signed with the official `stripe` SDK (`WebhookSignature.generate_signature_header`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from stripe import WebhookSignature

from tests.conftest import FIXTURES, fixture, inbox_rows, request_count
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError

VECTOR = fixture("stripe/signature_vector_COMPUTED.json")
SECRET = VECTOR["secret"]
OLD_SECRET = "whsec_the_secret_before_the_roll"
CONFIG = """
sources:
  payments:
    kind: stripe
    secrets: ["${STRIPE_SECRET}", "${STRIPE_OLD_SECRET}"]
"""
ENV = {"STRIPE_SECRET": SECRET, "STRIPE_OLD_SECRET": OLD_SECRET}


def signature(body: bytes, when: datetime | int, secret: str = SECRET) -> str:
    """A Stripe-Signature header as the official SDK builds it."""
    stamp = when if isinstance(when, int) else int(when.timestamp())
    header: str = WebhookSignature.generate_signature_header(body.decode(), secret, stamp)
    return header


def signed(body: bytes, when: datetime | int, secret: str = SECRET) -> dict[str, str]:
    return {
        "stripe-signature": signature(body, when, secret),
        "content-type": "application/json; charset=utf-8",  # what Stripe sends
    }


def v1_of(header: str) -> str:
    return header.split("v1=", 1)[1]


async def test_computed_vector_is_accepted_and_stored(running, clock) -> None:
    clock.set(datetime.fromtimestamp(VECTOR["t"], UTC))
    headers = {"stripe-signature": VECTOR["expected_Stripe-Signature"], "content-type": "application/json"}
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=VECTOR["raw_body"].encode(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        [row] = inbox_rows(tidings)
        assert row.dedupe_key == "evt_test_webhook"
        assert row.status == "pending"
        assert row.payload is None  # the request body is the event


@pytest.mark.parametrize(
    "name",
    [
        "checkout.session.completed_DERIVED.json",
        "checkout.session.expired_DERIVED.json",
        "customer.updated_DERIVED.json",
        "invoice.paid_DERIVED.json",
        "event_envelope_fixtures3.json",
    ],
)
async def test_events_signed_by_the_sdk_are_stored_by_id_and_type(running, clock, name) -> None:
    body = (FIXTURES / "stripe" / name).read_bytes()  # byte for byte, as Stripe would send it
    event = json.loads(body)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=body, headers=signed(body, clock.now()))
        assert response.status_code == 200, response.text
        [row] = inbox_rows(tidings)
        assert (row.dedupe_key, row.topic) == (event["id"], event["type"])
        assert row.status == "pending"


async def test_redelivery_of_an_event_is_acknowledged_but_stored_once(running, clock) -> None:
    event = fixture("stripe/invoice.paid_DERIVED.json")
    first_body = json.dumps(event).encode()
    # A retry is signed anew with a later t, and fields such as pending_webhooks may have moved.
    retry_body = json.dumps({**event, "pending_webhooks": event["pending_webhooks"] + 1}).encode()
    async with running(CONFIG, ENV) as (tidings, client):
        first = await client.post(
            "/hooks/payments", content=first_body, headers=signed(first_body, clock.now())
        )
        clock.advance(3600)
        again = await client.post(
            "/hooks/payments", content=retry_body, headers=signed(retry_body, clock.now())
        )
        assert first.status_code == again.status_code == 200
        assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
        assert [r.topic for r in inbox_rows(tidings)] == ["invoice.paid"]
        assert request_count(tidings) == 1


async def test_a_different_event_id_is_a_new_event(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        for event_id in ("evt_1", "evt_2"):
            body = json.dumps({"id": event_id, "object": "event", "type": "customer.updated"}).encode()
            response = await client.post("/hooks/payments", content=body, headers=signed(body, clock.now()))
            assert response.json()["accepted"] == 1
        assert [r.dedupe_key for r in inbox_rows(tidings)] == ["evt_1", "evt_2"]


async def test_every_v1_signature_in_the_header_is_considered(running, clock) -> None:
    body = b'{"id":"evt_roll","object":"event","type":"customer.updated"}'
    good = signature(body, clock.now())
    stale_secret_sig = v1_of(signature(body, clock.now(), "whsec_a_secret_we_do_not_know"))
    header = f"t={int(clock.now().timestamp())},v1={stale_secret_sig},v1={v1_of(good)}"
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post(
            "/hooks/payments",
            content=body,
            headers={"stripe-signature": header, "content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert len(inbox_rows(tidings)) == 1


async def test_any_configured_secret_verifies(running, clock) -> None:
    body = b'{"id":"evt_old","object":"event","type":"invoice.paid"}'
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post(
            "/hooks/payments", content=body, headers=signed(body, clock.now(), OLD_SECRET)
        )
        assert response.status_code == 200, response.text


async def test_a_v0_signature_alone_is_not_accepted(running, clock) -> None:
    body = b'{"id":"evt_v0","object":"event","type":"invoice.paid"}'
    header = signature(body, clock.now()).replace("v1=", "v0=")
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post(
            "/hooks/payments",
            content=body,
            headers={"stripe-signature": header, "content-type": "application/json"},
        )
        assert response.status_code == 401
        assert inbox_rows(tidings) == []


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-301, 401), (-299, 200), (299, 200), (301, 401)],
    ids=["stale", "just-in-time", "slightly-ahead", "far-future"],
)
async def test_timestamps_outside_300_seconds_either_way_are_refused(running, clock, offset, status) -> None:
    body = b'{"id":"evt_time","object":"event","type":"invoice.paid"}'
    when = clock.now() + timedelta(seconds=offset)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=body, headers=signed(body, when))
        assert response.status_code == status, response.text
        if status == 401:
            assert response.json()["error"] == "timestamp_out_of_tolerance"
            assert inbox_rows(tidings) == []


async def test_tolerance_is_configurable(running, clock) -> None:
    config = CONFIG + "    tolerance: 10m\n"
    body = b'{"id":"evt_slow","object":"event","type":"invoice.paid"}'
    async with running(config, ENV) as (_, client):
        late = await client.post(
            "/hooks/payments", content=body, headers=signed(body, clock.now() - timedelta(seconds=590))
        )
        too_late = await client.post(
            "/hooks/payments", content=body, headers=signed(body, clock.now() - timedelta(seconds=610))
        )
        assert (late.status_code, too_late.status_code) == (200, 401)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.pop("stripe-signature"), "missing_signature"),
        (lambda h: h.update({"stripe-signature": h["stripe-signature"].split(",")[1]}), "invalid_signature"),
        (
            lambda h: h.update({"stripe-signature": "t=soon," + h["stripe-signature"].split(",", 1)[1]}),
            "invalid_timestamp",
        ),
        (lambda h: h.update({"stripe-signature": h["stripe-signature"][:-4] + "beef"}), "invalid_signature"),
        (
            lambda h: h.update({"stripe-signature": h["stripe-signature"].split(",")[0] + ",v1=zz"}),
            "invalid_signature",
        ),
    ],
    ids=["missing", "no-timestamp", "timestamp-not-a-number", "wrong", "not-hex"],
)
async def test_bad_signature_headers_get_401_and_store_nothing(running, clock, mutate, code) -> None:
    body = b'{"id":"evt_bad","object":"event","type":"invoice.paid"}'
    headers = signed(body, clock.now())
    mutate(headers)
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []


async def test_a_tampered_body_is_refused(running, clock) -> None:
    body = b'{"id":"evt_amount","object":"event","type":"invoice.paid","amount":100}'
    headers = signed(body, clock.now())
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=body.replace(b"100", b"900"), headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_signature"
        assert inbox_rows(tidings) == []


@pytest.mark.parametrize(
    ("body", "reason", "topic"),
    [
        (b'{"object":"event","type":"invoice.paid"}', "no id", "invoice.paid"),
        (b'{"id":"evt_cut","object":"event","type":', "invalid JSON", None),
        (b'["evt_1"]', "not a JSON object", None),
    ],
    ids=["no-id", "truncated", "array"],
)
async def test_authentic_but_uninterpretable_body_is_stored_flagged(
    running, clock, body, reason, topic
) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=body, headers=signed(body, clock.now()))
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"
        assert reason in row.error
        assert row.topic == topic
        # The same bytes resent (re-signed) are recognised, not stored twice.
        clock.advance(60)
        again = await client.post("/hooks/payments", content=body, headers=signed(body, clock.now()))
        assert again.json()["duplicates"] == 1
        assert len(inbox_rows(tidings)) == 1


async def test_thin_v2_event_notification_is_stored_with_its_id_and_type(running, clock) -> None:
    body = json.dumps(
        {
            "id": "evt_test_65R9Ijk8Uw4HuLzGkx416XnE8iSQ1ja9gwYPSdGg0eD",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "livemode": False,
            "created": "2024-09-17T06:20:52.246Z",
            "related_object": {
                "id": "mtr_test_61R9",
                "type": "billing.meter",
                "url": "/v1/billing/meters/mtr",
            },
        }
    ).encode()
    async with running(CONFIG, ENV) as (tidings, client):
        response = await client.post("/hooks/payments", content=body, headers=signed(body, clock.now()))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        [row] = inbox_rows(tidings)
        assert row.dedupe_key == "evt_test_65R9Ijk8Uw4HuLzGkx416XnE8iSQ1ja9gwYPSdGg0eD"
        assert row.topic == "v1.billing.meter.error_report_triggered"


@pytest.mark.parametrize(
    ("secrets", "message"),
    [("[]", "at least one secret"), ('["sk_live_123"]', "starts with whsec_")],
)
def test_configuration_refuses_missing_or_wrong_secrets(secrets, message) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_settings(f"sources:\n  payments:\n    kind: stripe\n    secrets: {secrets}\n", "t.yaml", {})
    assert message in str(info.value)
