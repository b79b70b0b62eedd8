"""The Klaviyo destination against the Klaviyo simulator (which validates against the official spec)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings.delivery.effects import DELETE_CONTACT, SEND_TEMPLATE, TRACK_EVENT, UPSERT_CONTACT, Effect
from tidings.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError
from tidings.testing.klaviyo import KlaviyoSimulator

KEY = "pk_live_0123456789abcdef"
NEW_KEY = "pk_live_fedcba9876543210"
ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT.parent / "shared" / "contracts" / "specs"


@pytest.fixture
def sim():
    with KlaviyoSimulator(api_keys=[KEY]).running() as server:
        yield server


def destination(sim: KlaviyoSimulator, http: httpx.AsyncClient, **settings: Any) -> KlaviyoDestination:
    values: dict[str, Any] = {"kind": "klaviyo", "base_url": sim.url, "api_key": KEY, **settings}
    return KlaviyoDestination("klaviyo", KlaviyoSettings(**values), http)


def effect(action: str, payload: dict[str, Any], key: str = "eff-1", n: int = 1) -> Effect:
    return Effect(id=n, destination="klaviyo", action=action, idempotency_key=key, payload=payload, attempt=1)


def body(sim: KlaviyoSimulator, index: int = -1) -> dict[str, Any]:
    return json.loads(sim.requests[index].body)


UPSERT = {
    "profile_id": 7,
    "email": "ann@example.com",
    "phone": "+15005550006",
    "fields": {"first_name": "Ann", "cart_value": 30, "tier": "gold"},
    "consent": {"email": "granted"},
}

ORDER = {
    "event": "Placed Order",
    "email": "ann@example.com",
    "properties": {"order_id": "o-1", "items": 2},
    "time": "2026-03-01T10:00:00+00:00",
    "value": 42.5,
    "value_currency": "EUR",
}


async def test_upsert_creates_then_updates_the_profile_with_the_documented_request(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http)
        first = await dest.deliver(effect(UPSERT_CONTACT, UPSERT))
        changed = {**UPSERT, "fields": {"first_name": "Anne", "cart_value": 45}}
        second = await dest.deliver(effect(UPSERT_CONTACT, changed, key="eff-2"))

    assert first.status_code == 201 and first.detail == {"created": True}
    assert second.status_code == 200 and second.detail == {"created": False}
    assert first.remote_id and first.remote_id == second.remote_id
    assert sim.invalid == []
    request = sim.requests[0]
    assert request.path == "/api/profile-import"
    assert request.headers["authorization"] == f"Klaviyo-API-Key {KEY}"
    assert request.headers["revision"] == "2026-07-15"
    assert request.headers["content-type"] == "application/vnd.api+json"
    assert body(sim, 0) == {
        "data": {
            "type": "profile",
            "attributes": {
                "email": "ann@example.com",
                "phone_number": "+15005550006",
                "first_name": "Ann",  # a standard attribute
                "properties": {"cart_value": 30, "tier": "gold"},  # custom properties
            },
        }
    }
    stored = sim.profile_by_email("ann@example.com")
    assert stored is not None
    assert stored["attributes"]["first_name"] == "Anne"
    assert stored["attributes"]["properties"] == {"cart_value": 45, "tier": "gold"}  # omitted: unchanged


async def test_a_phone_that_is_not_e164_is_left_out_and_no_identifier_is_refused_locally(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http)
        await dest.deliver(effect(UPSERT_CONTACT, {**UPSERT, "phone": "0612 34 56 78"}))
        with pytest.raises(PermanentDeliveryError, match="no email"):
            await dest.deliver(effect(UPSERT_CONTACT, {"profile_id": 8, "fields": {"tier": "x"}}))
    assert "phone_number" not in body(sim)["data"]["attributes"]
    assert len(sim.requests) == 1


async def test_track_event_carries_unique_id_and_klaviyo_dedupes_a_repeat(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http)
        receipt = await dest.deliver(effect(TRACK_EVENT, ORDER, key="order-o-1"))
        again = await dest.deliver(effect(TRACK_EVENT, ORDER, key="order-o-1"))  # a retry after a crash
        other = await dest.deliver(effect(TRACK_EVENT, {**ORDER, "properties": {}}, key="order-o-2"))

    assert receipt.status_code == again.status_code == other.status_code == 202
    assert sim.invalid == []
    assert len(sim.requests) == 3
    assert [e["unique_id"] for e in sim.accepted_events] == ["order-o-1", "order-o-2"]
    assert sim.duplicate_events == 1
    sent = body(sim, 0)["data"]
    assert sent["type"] == "event"
    assert sent["attributes"] == {
        "properties": {"order_id": "o-1", "items": 2},
        "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": "ann@example.com"}}},
        "unique_id": "order-o-1",
        "time": "2026-03-01T10:00:00+00:00",
        "value": 42.5,
        "value_currency": "EUR",
    }


async def test_backfill_is_sent_for_history_replays_only(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http)
        await dest.deliver(effect(TRACK_EVENT, {**ORDER, "backfill": True}, key="old"))
        await dest.deliver(effect(TRACK_EVENT, ORDER, key="live"))
    assert [e.get("backfill") for e in sim.accepted_events] == [True, None]


async def test_an_event_without_a_name_or_profile_is_refused_before_sending(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http)
        with pytest.raises(PermanentDeliveryError, match="no name"):
            await dest.deliver(effect(TRACK_EVENT, {"email": "a@example.com"}))
        with pytest.raises(PermanentDeliveryError, match="profile"):
            await dest.deliver(effect(TRACK_EVENT, {"event": "Viewed"}))
        with pytest.raises(PermanentDeliveryError, match="does not support"):
            await dest.deliver(effect(SEND_TEMPLATE, {"email": "a@example.com"}))
    assert sim.requests == []


async def test_delete_sends_exactly_one_identifier_and_the_profile_goes(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http)
        await dest.deliver(effect(UPSERT_CONTACT, UPSERT))
        receipt = await dest.deliver(
            effect(DELETE_CONTACT, {"email": "ann@example.com", "phone": "+15005550006"})
        )
        by_phone = await dest.deliver(effect(DELETE_CONTACT, {"phone": "+15005550007"}))
        with pytest.raises(PermanentDeliveryError, match="nothing to delete"):
            await dest.deliver(effect(DELETE_CONTACT, {"profile_id": 3}))
    assert receipt.status_code == by_phone.status_code == 202
    assert sim.invalid == []
    assert body(sim, 1) == {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": "ann@example.com"}}}
            },
        }
    }
    assert sim.deletion_jobs[1] == {"type": "profile", "attributes": {"phone_number": "+15005550007"}}
    assert sim.profile_by_email("ann@example.com") is None
    assert len(sim.requests) == 3


async def test_429_with_retry_after_is_retryable_with_klaviyos_wait(sim) -> None:
    sim.fail_next(status=429, headers={"Retry-After": "7"}, body={"errors": [{"detail": "throttled"}]})
    async with httpx.AsyncClient() as http:
        with pytest.raises(RetryableDeliveryError) as caught:
            await destination(sim, http).deliver(effect(TRACK_EVENT, ORDER))
    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0


async def test_5xx_and_timeouts_are_retryable(sim) -> None:
    sim.fail_next(status=503)
    sim.fail_next(delay=1.0, status=200)
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http, timeout="0.2s")
        with pytest.raises(RetryableDeliveryError) as caught:
            await dest.deliver(effect(UPSERT_CONTACT, UPSERT))
        assert caught.value.status == 503
        with pytest.raises(RetryableDeliveryError, match="timed out"):
            await dest.deliver(effect(UPSERT_CONTACT, UPSERT))


async def test_a_400_is_permanent_with_klaviyos_own_detail(sim) -> None:
    refusal = {
        "errors": [
            {
                "id": "e1",
                "code": "invalid",
                "title": "Invalid input.",
                "detail": "Invalid phone number format (Example of a valid format: +12345678901)",
                "source": {"pointer": "/data/attributes/phone_number"},
            }
        ]
    }
    sim.fail_next(status=400, body=refusal)
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentDeliveryError) as caught:
            await destination(sim, http).deliver(effect(UPSERT_CONTACT, UPSERT))
    assert not isinstance(caught.value, DestinationAuthError)
    assert caught.value.status == 400
    assert str(caught.value) == (
        "klaviyo answered 400: Invalid phone number format (Example of a valid format: +12345678901)"
        " (at /data/attributes/phone_number)"
    )


async def test_a_wrong_key_is_an_auth_error_and_the_key_is_never_in_it(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = destination(sim, http, api_key="pk_wrong_secret_value")
        with pytest.raises(DestinationAuthError) as caught:
            await dest.deliver(effect(TRACK_EVENT, ORDER))
    assert caught.value.status == 401
    assert "Incorrect authentication credentials." in str(caught.value)
    assert "pk_wrong_secret_value" not in str(caught.value)
    assert "pk_wrong_secret_value" not in repr(dest.settings)
    assert sim.accepted_events == []


async def test_rotation_the_next_key_takes_over_when_the_old_one_is_revoked(caplog) -> None:
    with KlaviyoSimulator(api_keys=[KEY, NEW_KEY]).running() as sim:
        async with httpx.AsyncClient() as http:
            dest = destination(sim, http, next_api_key=NEW_KEY)
            await dest.deliver(effect(TRACK_EVENT, ORDER, key="a"))
            sim.api_keys.discard(KEY)  # the old key is revoked at Klaviyo
            with caplog.at_level("WARNING"):
                await dest.deliver(effect(TRACK_EVENT, ORDER, key="b"))
            await dest.deliver(effect(TRACK_EVENT, ORDER, key="c"))
    used = [r.headers["authorization"].removeprefix("Klaviyo-API-Key ") for r in sim.requests]
    assert used == [KEY, KEY, NEW_KEY, NEW_KEY]  # one refusal, then the new key from then on
    assert [e["unique_id"] for e in sim.accepted_events] == ["a", "b", "c"]
    assert "refused api_key; trying next_api_key" in caplog.text
    everything = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert KEY not in everything and NEW_KEY not in everything


async def test_the_simulator_refuses_what_klaviyo_refuses(sim) -> None:
    good = {
        "authorization": f"Klaviyo-API-Key {KEY}",
        "revision": "2026-07-15",
        "content-type": "application/vnd.api+json",
    }
    event = {
        "data": {
            "type": "evnt",
            "attributes": {
                "metric": {"data": {"type": "metric", "attributes": {"name": "X"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}},
            },
        }
    }
    async with httpx.AsyncClient(base_url=sim.url) as http:
        invalid = await http.post("/api/events", json=event, headers=good)
        no_auth = await http.post("/api/events", json=event, headers={**good, "authorization": ""})
        no_revision = await http.post(
            "/api/events", json=event, headers={k: v for k, v in good.items() if k != "revision"}
        )
        two_ids = await http.post(
            "/api/data-privacy-deletion-jobs",
            json={
                "data": {
                    "type": "data-privacy-deletion-job",
                    "attributes": {
                        "profile": {
                            "data": {
                                "type": "profile",
                                "attributes": {"email": "a@example.com", "phone_number": "+15005550006"},
                            }
                        }
                    },
                }
            },
            headers=good,
        )
    assert invalid.status_code == 400
    pointers = {e["source"]["pointer"] for e in invalid.json()["errors"]}
    assert pointers == {"/data/type", "/data/attributes/properties"}
    for e in invalid.json()["errors"]:
        assert {"id", "code", "title", "detail"} <= set(e)
    assert no_auth.status_code == 401 and no_auth.json()["errors"][0]["code"] == "not_authenticated"
    assert no_revision.status_code == 400 and "revision" in no_revision.json()["errors"][0]["detail"]
    assert two_ids.status_code == 400 and "Exactly one" in two_ids.json()["errors"][0]["detail"]
    assert sim.accepted_events == [] and sim.deletion_jobs == []


async def test_the_simulator_throttles_for_real_when_enforcing() -> None:
    # deterministic: fixed windows of 1 s; send 3 well inside one window
    with KlaviyoSimulator(
        api_keys=[KEY], enforce_limits=True, limits={"/api/events": (2, 100)}
    ).running() as sim:
        while time.time() % 1 > 0.5:  # start early in a second
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient() as http:
            dest = destination(sim, http)
            await dest.deliver(effect(TRACK_EVENT, ORDER, key="a"))
            await dest.deliver(effect(TRACK_EVENT, ORDER, key="b"))
            with pytest.raises(RetryableDeliveryError) as caught:
                await dest.deliver(effect(TRACK_EVENT, ORDER, key="c"))
    assert caught.value.retry_after == 1.0
    assert [e["unique_id"] for e in sim.accepted_events] == ["a", "b"]
    assert sim.limit_violations == 1


async def test_deletions_are_paced_to_klaviyos_3_per_second() -> None:
    with KlaviyoSimulator(api_keys=[KEY], enforce_limits=True).running() as sim:
        async with httpx.AsyncClient() as http:
            dest = destination(sim, http)
            started = time.monotonic()
            await asyncio.gather(
                *(
                    dest.deliver(effect(DELETE_CONTACT, {"email": f"u{n}@example.com"}, key=f"d{n}"))
                    for n in range(4)
                )
            )
            elapsed = time.monotonic() - started
    assert len(sim.deletion_jobs) == 4
    assert sim.limit_violations == 0
    assert elapsed >= 0.9  # the fourth waited for the sliding second


def test_default_limits_fit_every_endpoint_but_deletion_which_is_paced_apart() -> None:
    windows = {(w.requests, w.per.total_seconds()) for w in KlaviyoDestination.default_limits.windows}
    assert windows == {(75, 1.0), (750, 60.0)}
    assert KlaviyoDestination.idempotent_actions == {UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT}


@pytest.mark.skipif(not SPECS.is_dir(), reason="the vendor specs are not checked out beside the repo")
def test_the_packaged_schemas_are_what_the_extractor_makes_from_the_official_spec() -> None:
    spec = importlib.util.spec_from_file_location("extract_schemas", ROOT / "tools" / "extract_schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    packaged = json.loads((ROOT / "src/tidings/testing/schemas/klaviyo.json").read_text())
    assert module.klaviyo(SPECS) == packaged
    assert packaged["revision"] == "2026-07-15"
