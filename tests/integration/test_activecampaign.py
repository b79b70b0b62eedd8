"""The ActiveCampaign destination against its simulator: contact sync, events, delete, errors, limit."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import ValidationError

from tidings.delivery.effects import Effect
from tidings.delivery.limits import Limiter
from tidings.destinations.activecampaign import ActiveCampaignDestination, ActiveCampaignSettings
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError
from tidings.testing.activecampaign import ActiveCampaignSimulator

TOKEN = "ac-token-123"


@pytest.fixture
def sim():
    with ActiveCampaignSimulator(TOKEN, actid="223344", event_key="evkey").running() as server:
        yield server


def settings(sim: ActiveCampaignSimulator, **overrides: Any) -> ActiveCampaignSettings:
    raw: dict[str, Any] = {
        "kind": "activecampaign",
        "base_url": sim.url,
        "api_token": TOKEN,
        "field_ids": {"CITY": 2, "TAGS": "7", "VIP": 9},
        "actid": 223344,
        "event_key": "evkey",
        "events_url": f"{sim.url}/event",
        "profile_sync": {"fields": {"firstName": "profile.traits.first_name", "CITY": "profile.traits.city"}},
    }
    raw.update(overrides)
    return ActiveCampaignSettings.model_validate(raw)


@pytest.fixture
async def dest(sim):
    async with httpx.AsyncClient() as http:
        yield ActiveCampaignDestination("ac", settings(sim), http)


def effect(action: str, payload: dict[str, Any], n: int = 1) -> Effect:
    return Effect(id=n, destination="ac", action=action, idempotency_key=f"k{n}", payload=payload, attempt=1)


def upsert(email: str = "ann@example.com", **fields: Any) -> Effect:
    return effect(
        "upsert_contact",
        {"profile_id": 1, "email": email, "phone": "+4915111", "fields": fields, "consent": {}},
    )


def api_requests(sim: ActiveCampaignSimulator) -> list[Any]:
    return [r for r in sim.requests if r.path.startswith("/api/3")]


async def test_upsert_syncs_the_contact_with_custom_field_values_by_id(sim, dest) -> None:
    receipt = await dest.deliver(upsert(firstName="Ann", CITY="Albany", TAGS=["a", "b"], VIP=True))

    [request] = sim.requests
    assert (request.method, request.path) == ("POST", "/api/3/contact/sync")
    assert request.headers["api-token"] == TOKEN
    assert json.loads(request.body) == {
        "contact": {
            "email": "ann@example.com",
            "phone": "+4915111",
            "firstName": "Ann",
            "fieldValues": [
                {"field": "2", "value": "Albany"},
                {"field": "7", "value": "||a||b||"},
                {"field": "9", "value": "1"},
            ],
        }
    }
    assert sim.rejected == [] and len(sim.accepted) == 1
    stored = sim.contact("ann@example.com")
    assert stored is not None and stored["fieldValues"] == {"2": "Albany", "7": "||a||b||", "9": "1"}
    assert receipt.remote_id == stored["id"] and receipt.status_code == 201

    again = await dest.deliver(upsert(CITY="Boston"))  # the same contact, updated
    assert again.remote_id == stored["id"] and len(sim.contacts) == 1
    assert sim.contact("ann@example.com")["fieldValues"]["2"] == "Boston"  # type: ignore[index]


async def test_an_upsert_without_email_or_with_an_unmapped_field_is_permanent(sim, dest) -> None:
    with pytest.raises(PermanentDeliveryError, match="email"):
        await dest.deliver(effect("upsert_contact", {"profile_id": 1, "email": None, "fields": {}}))
    with pytest.raises(PermanentDeliveryError, match="NOPE"):
        await dest.deliver(upsert(NOPE="x"))
    assert sim.requests == []


def test_settings_refuse_profile_sync_fields_without_an_id_and_half_event_settings(sim) -> None:
    with pytest.raises(ValidationError, match="COLOUR"):
        settings(sim, profile_sync={"fields": {"COLOUR": "profile.traits.colour"}})
    with pytest.raises(ValidationError, match="actid and event_key"):
        settings(sim, event_key=None)
    with pytest.raises(ValidationError, match="base_url"):
        ActiveCampaignSettings.model_validate({"kind": "activecampaign", "api_token": "t"})
    assert settings(sim, base_url="https://acct.api-us1.com/api/3/").base_url == "https://acct.api-us1.com"


async def test_track_event_posts_the_form_the_tracking_service_expects(sim, dest) -> None:
    payload = {"email": "ann@example.com", "event": "Checkout Started", "properties": {"value": 30}}
    receipt = await dest.deliver(effect("track_event", payload))

    [request] = sim.requests
    assert (request.method, request.path) == ("POST", "/event")
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert "api-token" not in request.headers
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form == {
        "actid": "223344",
        "key": "evkey",
        "event": "Checkout Started",
        "visit": '{"email":"ann@example.com"}',
        "eventdata": '{"value":30}',
    }
    assert sim.events == [
        {"event": "Checkout Started", "email": "ann@example.com", "eventdata": '{"value":30}'}
    ]
    assert receipt.status_code == 200


async def test_track_event_refusals(sim) -> None:
    async with httpx.AsyncClient() as http:
        dest = ActiveCampaignDestination("ac", settings(sim), http)
        with pytest.raises(PermanentDeliveryError, match="1 to 32"):
            await dest.deliver(effect("track_event", {"email": "a@b.co", "event": "x" * 33}))
        assert sim.requests == []  # refused before sending

        wrong_key = ActiveCampaignDestination("ac", settings(sim, event_key="other"), http)
        with pytest.raises(PermanentDeliveryError, match="Invalid actid or key"):
            await wrong_key.deliver(effect("track_event", {"email": "a@b.co", "event": "Paid"}))

        untracked = ActiveCampaignDestination("ac", settings(sim, actid=None, event_key=None), http)
        with pytest.raises(PermanentDeliveryError, match="not configured"):
            await untracked.deliver(effect("track_event", {"email": "a@b.co", "event": "Paid"}))
    assert sim.events == []


async def test_delete_looks_the_contact_up_then_deletes_it_and_a_missing_one_is_done(sim, dest) -> None:
    created = await dest.deliver(upsert("bob@example.com"))
    sim.requests.clear()

    receipt = await dest.deliver(effect("delete_contact", {"email": "bob@example.com"}))
    assert [(r.method, r.path) for r in sim.requests] == [
        ("GET", "/api/3/contacts"),
        ("DELETE", f"/api/3/contacts/{created.remote_id}"),
    ]
    assert receipt.remote_id == created.remote_id
    assert sim.contact("bob@example.com") is None

    again = await dest.deliver(effect("delete_contact", {"email": "bob@example.com"}))  # idempotent
    assert again.detail == {"absent": True}
    assert [r.method for r in sim.requests] == ["GET", "DELETE", "GET"]


async def test_the_simulator_answers_an_unknown_contact_id_with_activecampaigns_404(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.url, headers={"Api-Token": TOKEN}) as http:
        response = await http.delete("/api/3/contacts/999")
    assert response.status_code == 404
    assert response.json() == {"message": "No result found for contact with id 999"}


async def test_the_simulator_refuses_an_invalid_body_with_activecampaigns_error_shape(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.url, headers={"Api-Token": TOKEN}) as http:
        response = await http.post(
            "/api/3/contact/sync",
            json={"contact": {"email": "not-an-email", "first_name": "Ann", "fieldValues": [{"field": "1"}]}},
        )
    assert response.status_code == 422
    titles = [e["title"] for e in response.json()["errors"]]
    assert "Contact Email Address is not valid." in titles
    assert any("unknown keys ['first_name']" in t for t in titles)
    assert any("fieldValues[0].value" in t for t in titles)
    assert sim.accepted == [] and sim.contacts == {}


async def test_a_refused_body_reaches_the_dead_letters_with_activecampaigns_words(sim, dest) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await dest.deliver(upsert("nobody@"))
    assert caught.value.status == 422
    assert "Contact Email Address is not valid. (/data/attributes)" in str(caught.value)


async def test_a_vendor_400_carries_its_error_titles(sim, dest) -> None:
    body = {"errors": [{"title": "Field value is invalid", "detail": "", "code": "field_invalid"}]}
    sim.fail_next(status=400, body=body)
    with pytest.raises(PermanentDeliveryError, match="answered 400: Field value is invalid") as caught:
        await dest.deliver(upsert())
    assert not isinstance(caught.value, RetryableDeliveryError | DestinationAuthError)


async def test_429_with_retry_after_and_500_are_retryable(sim, dest) -> None:
    sim.fail_next(status=429, headers={"Retry-After": "30"}, body={"message": "slow down"})
    with pytest.raises(RetryableDeliveryError) as caught:
        await dest.deliver(upsert())
    assert caught.value.status == 429 and caught.value.retry_after == 30

    sim.fail_next(status=500)
    with pytest.raises(RetryableDeliveryError) as caught:
        await dest.deliver(effect("delete_contact", {"email": "ann@example.com"}))
    assert caught.value.status == 500 and caught.value.retry_after is None


async def test_a_refused_token_is_an_auth_error(sim) -> None:
    sim.fail_next(status=401, body={"message": "Unauthorized"})
    async with httpx.AsyncClient() as http:
        dest = ActiveCampaignDestination("ac", settings(sim), http)
        with pytest.raises(DestinationAuthError, match="Unauthorized"):
            await dest.deliver(upsert())
        wrong = ActiveCampaignDestination("ac", settings(sim, api_token="wrong"), http)
        with pytest.raises(DestinationAuthError, match="403"):  # the simulator's own check
            await wrong.deliver(upsert())
    assert sim.contacts == {}


async def test_a_timeout_is_retryable(sim) -> None:
    sim.fail_next(delay=1.0, status=200)
    async with httpx.AsyncClient() as http:
        dest = ActiveCampaignDestination("ac", settings(sim, timeout="200ms"), http)
        with pytest.raises(RetryableDeliveryError, match="timed out"):
            await dest.deliver(upsert())


async def test_the_simulator_enforces_five_per_second_with_retry_after(sim) -> None:
    async with httpx.AsyncClient(base_url=sim.url, headers={"Api-Token": TOKEN}) as http:
        answers = [await http.get("/api/3/contacts") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert sim.rate_limited == 1


async def test_deliveries_at_the_default_limit_never_exceed_it(sim, dest) -> None:
    """The dispatcher's limiter per effect, the destination's own per API call: no 429 from the account."""
    for n in range(3):
        await dest.deliver(upsert(f"c{n}@example.com"))
    sim.requests.clear()
    limiter = Limiter(dest.limits)

    async def one(e: Effect) -> None:
        async with limiter.slot():
            await dest.deliver(e)

    started = time.monotonic()
    work = [upsert(f"u{n}@example.com") for n in range(6)]
    work += [effect("delete_contact", {"email": f"c{n}@example.com"}, n) for n in range(3)]  # 2 calls each
    await asyncio.gather(*(one(e) for e in work))
    elapsed = time.monotonic() - started

    assert sim.rate_limited == 0
    assert len(api_requests(sim)) == 12
    assert elapsed >= 1.8  # 12 calls at 5/s need at least two further windows
    starts = [r.at for r in api_requests(sim)]
    assert all(b - a >= 0.95 for a, b in zip(starts, starts[5:], strict=False))
