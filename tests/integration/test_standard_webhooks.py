"""The standard-webhooks kind, end to end through HTTP into the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import fixture, inbox_rows, request_count

VECTOR = fixture("standard-webhooks/sign_test_vector.json")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_" + base64.b64encode(b"an-older-secret-of-24-bytes!").decode()
CONFIG = f"""
sources:
  app:
    kind: standard-webhooks
    secrets: ["{SECRET}", "{OLD_SECRET}"]
"""


def signed(body: bytes, msg_id: str, when: datetime, secret: str = SECRET) -> dict[str, str]:
    """Headers as the official standardwebhooks library signs them."""
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def test_official_vector_is_accepted_and_stored(running, clock) -> None:
    clock.set(datetime.fromtimestamp(int(VECTOR["headers"]["webhook-timestamp"]), UTC))
    headers = {
        **VECTOR["headers"],
        "webhook-signature": VECTOR["expected_webhook_signature"],
        "content-type": "application/json",
    }
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/app", content=VECTOR["raw_body"].encode(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        [row] = inbox_rows(tidings)
        assert row.dedupe_key == "msg_p5jXN8AQM9LWM0D4loKWxJek"
        assert row.status == "pending"
        assert row.payload is None  # the request body is the item


async def test_redelivery_is_acknowledged_but_not_stored_twice(running, clock) -> None:
    body = json.dumps({"type": "user.created", "data": {"email": "ann@example.com"}}).encode()
    async with running(CONFIG) as (tidings, client):
        first = await client.post("/hooks/app", content=body, headers=signed(body, "msg_1", clock.now()))
        clock.advance(60)  # a retry a minute later is signed anew, with the same webhook-id
        again = await client.post("/hooks/app", content=body, headers=signed(body, "msg_1", clock.now()))
        assert first.status_code == again.status_code == 200
        assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
        rows = inbox_rows(tidings)
        assert [r.topic for r in rows] == ["user.created"]
        assert request_count(tidings) == 1


async def test_any_configured_secret_verifies_during_rotation(running, clock) -> None:
    body = b'{"type":"ping"}'
    async with running(CONFIG) as (tidings, client):
        response = await client.post(
            "/hooks/app", content=body, headers=signed(body, "msg_old", clock.now(), OLD_SECRET)
        )
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.pop("webhook-signature"), "missing_signature"),
        (
            lambda h: h.update({"webhook-signature": "v1,AAAA" + h["webhook-signature"][7:]}),
            "invalid_signature",
        ),
        (lambda h: h.update({"webhook-id": "msg_other"}), "invalid_signature"),
        (
            lambda h: h.update({"webhook-timestamp": str(int(h["webhook-timestamp"]) - 301)}),
            "timestamp_out_of_tolerance",
        ),
    ],
    ids=["missing", "wrong", "id-swapped", "stale"],
)
async def test_bad_signatures_get_401_and_store_nothing(running, clock, mutate, code) -> None:
    body = b'{"type":"x"}'
    headers = signed(body, "msg_2", clock.now())
    mutate(headers)
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/app", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert inbox_rows(tidings) == []


async def test_authentic_but_malformed_body_is_stored_flagged(running, clock) -> None:
    body = b'{"type": "order.created", "data": '
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/app", content=body, headers=signed(body, "msg_3", clock.now()))
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"
        assert "invalid JSON" in row.error
