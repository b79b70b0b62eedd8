"""SendGrid Event Webhook feedback: signed batches in, consent changes on profiles (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import inbox_rows
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError
from tidings.profiles.read import load, resolve

# SendGrid's own test vector (sendgrid-nodejs packages/eventwebhook tests).
VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnl"
    "vFYPAZFceEu/1FwCM/QmGUhA=="
)
VECTOR_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="
)
VECTOR_TIMESTAMP = "1588788367"
VECTOR_BODY = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'

KEY = ec.generate_private_key(ec.SECP256R1())
OLD_KEY = ec.generate_private_key(ec.SECP256R1())


def public(key: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid shows it: base64 DER SubjectPublicKeyInfo."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


CONFIG = f"""
sources:
  sg:
    kind: sendgrid-events
    public_keys: ["{public(KEY)}", "{public(OLD_KEY)}"]
"""


def signed(body: bytes, stamp: str, key: ec.EllipticCurvePrivateKey = KEY) -> dict[str, str]:
    """Headers as SendGrid signs: ECDSA P-256 / SHA-256 over timestamp + raw body, DER, base64."""
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": stamp,
        "content-type": "application/json",
    }


def event(n: int, name: str, at: int, email: str = "ann@example.com", **extra: Any) -> dict[str, Any]:
    return {
        "email": email,
        "timestamp": at,
        "event": name,
        "sg_event_id": f"evt-{n}",
        "sg_message_id": f"msg-{n}.filter0001",
        **extra,
    }


def consent_of(tidings, ref: str) -> dict[str, Any] | None:
    def read(conn):
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    profile = tidings.store.read_sync(read)
    return None if profile is None else profile.consent.get("email")


async def post(client, events: list[dict[str, Any]], key: ec.EllipticCurvePrivateKey = KEY):
    body = json.dumps(events).encode()
    return await client.post("/hooks/sg", content=body, headers=signed(body, "1772000000", key))


async def test_sendgrids_own_vector_verifies(running) -> None:
    config = f"""
sources:
  sg:
    kind: sendgrid-events
    public_keys: ["{VECTOR_KEY}"]
"""
    headers = {
        "x-twilio-email-event-webhook-signature": VECTOR_SIGNATURE,
        "x-twilio-email-event-webhook-timestamp": VECTOR_TIMESTAMP,
        "content-type": "application/json",
    }
    async with running(config) as (tidings, client):
        response = await client.post("/hooks/sg", content=VECTOR_BODY, headers=headers)
        # Authentic, but a single object rather than SendGrid's array: stored flagged, answered 200.
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "flagged"
        tampered = await client.post("/hooks/sg", content=VECTOR_BODY + b" ", headers=headers)
        assert tampered.status_code == 401
        assert len(inbox_rows(tidings)) == 1


async def test_unsubscribe_spam_report_and_hard_bounce_unsubscribe_the_profile(running) -> None:
    batch = [
        event(1, "delivered", 1772000000, "ann@example.com"),
        event(2, "unsubscribe", 1772000100, "Ann@Example.com"),
        event(3, "spamreport", 1772000100, "bob@example.com"),
        event(4, "bounce", 1772000100, "cat@example.com", type="bounce", reason="550 5.1.1 no such user"),
        event(5, "bounce", 1772000100, "dan@example.com", type="blocked", reason="421 try later"),
        event(6, "group_unsubscribe", 1772000100, "eve@example.com", asm_group_id=42),
    ]
    async with running(CONFIG) as (tidings, client):
        response = await post(client, batch)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "accepted": 6, "duplicates": 0}
        rows = inbox_rows(tidings)
        assert [r.dedupe_key for r in rows] == [f"sg_event_id:evt-{n}" for n in range(1, 7)]
        assert [r.topic for r in rows][:3] == ["delivered", "unsubscribe", "spamreport"]
        await tidings.processor.drain()
        for who in ("ann@example.com", "bob@example.com", "cat@example.com", "eve@example.com"):
            consent = consent_of(tidings, who)
            assert consent is not None and consent["state"] == "unsubscribed", who
            assert consent["source"] == "sg"
        assert consent_of(tidings, "ann@example.com")["at"].startswith("2026-02-25T06:15:00")
        # A blocked bounce is the receiving server refusing for now: no consent change.
        assert consent_of(tidings, "dan@example.com") is None


async def test_redelivered_batch_changes_nothing_twice(running) -> None:
    batch = [event(1, "unsubscribe", 1772000100), event(2, "open", 1772000200)]
    async with running(CONFIG) as (tidings, client):
        first = await post(client, batch)
        again = await post(client, [*batch, event(3, "click", 1772000300, url="https://x.io")])
        assert first.json()["accepted"] == 2
        assert again.json() == {"status": "accepted", "accepted": 1, "duplicates": 2}
        assert len(inbox_rows(tidings)) == 3


async def test_drop_for_a_suppressed_address_unsubscribes_other_drops_do_not(running) -> None:
    batch = [
        event(1, "dropped", 1772000100, "ann@example.com", reason="Unsubscribed Address"),
        event(2, "dropped", 1772000100, "bob@example.com", reason="Invalid SMTPAPI header"),
    ]
    async with running(CONFIG) as (tidings, client):
        assert (await post(client, batch)).status_code == 200
        await tidings.processor.drain()
        assert consent_of(tidings, "ann@example.com")["state"] == "unsubscribed"
        assert consent_of(tidings, "bob@example.com") is None


async def test_group_resubscribe_does_not_lift_an_unsubscribe(running) -> None:
    batch = [
        event(1, "spamreport", 1772000100),
        event(2, "group_resubscribe", 1772000500, asm_group_id=42),
    ]
    async with running(CONFIG) as (tidings, client):
        assert (await post(client, batch)).status_code == 200
        await tidings.processor.drain()
        assert consent_of(tidings, "ann@example.com")["state"] == "unsubscribed"


async def test_the_old_key_verifies_during_rotation_and_a_stranger_does_not(running) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    async with running(CONFIG) as (tidings, client):
        assert (await post(client, [event(1, "open", 1772000000)], OLD_KEY)).status_code == 200
        refused = await post(client, [event(2, "unsubscribe", 1772000000)], stranger)
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_signature"
        body = b"[]"
        missing = await client.post("/hooks/sg", content=body, headers={"content-type": "application/json"})
        assert missing.status_code == 401
        assert missing.json()["error"] == "missing_signature"
        assert [r.dedupe_key for r in inbox_rows(tidings)] == ["sg_event_id:evt-1"]


async def test_tolerance_when_set_refuses_an_old_signature(running, clock) -> None:
    config = CONFIG + "    tolerance: 5m\n"
    body = json.dumps([event(1, "unsubscribe", 1772000000)]).encode()
    stale = str(int(clock.now().timestamp()) - 3600)
    async with running(config) as (tidings, client):
        response = await client.post("/hooks/sg", content=body, headers=signed(body, stale))
        assert response.status_code == 401
        assert response.json()["error"] == "timestamp_out_of_tolerance"
        fresh = str(int(clock.now().timestamp()))
        assert (await client.post("/hooks/sg", content=body, headers=signed(body, fresh))).status_code == 200


def test_a_key_that_is_not_a_p256_key_is_refused_at_config_time() -> None:
    yaml_text = "sources:\n  sg:\n    kind: sendgrid-events\n    public_keys: ['bm90IGEga2V5']\n"
    with pytest.raises(ConfigurationError) as info:
        parse_settings(yaml_text, "test.yaml", {})
    assert "public key" in str(info.value)
