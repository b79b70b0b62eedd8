"""OAuth 2.0 at the destinations: Klaviyo's refresh-token flow and Mailchimp's bearer tokens.

Klaviyo against its simulator's `/oauth/token` (refresh_token grant, client in HTTP Basic,
expiring access tokens); time is a FakeClock handed to the destination, so "a minute before
expiry" is exact and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import ValidationError

from tidings.clock import FakeClock
from tidings.delivery.effects import TRACK_EVENT, UPSERT_CONTACT, Effect
from tidings.destinations.klaviyo import TOKEN_URL, KlaviyoDestination, KlaviyoSettings
from tidings.destinations.mailchimp import MailchimpDestination, MailchimpSettings
from tidings.exceptions import DestinationAuthError, RetryableDeliveryError
from tidings.testing import KlaviyoSimulator, MailchimpSimulator

CLIENT_ID, CLIENT_SECRET = "app-client-id", "app-client-secret-value"
REFRESH = "krt_initial_refresh_token"
LIFETIME = 3600


def effect(n: int = 1) -> Effect:
    payload = {"email": f"ann{n}@example.com", "event": "Viewed", "properties": {}}
    return Effect(
        id=n, destination="k", action=TRACK_EVENT, idempotency_key=f"k{n}", payload=payload, attempt=1
    )


@pytest.fixture
def sim() -> Iterator[KlaviyoSimulator]:
    simulator = KlaviyoSimulator(
        (), oauth_clients={CLIENT_ID: CLIENT_SECRET}, refresh_tokens=[REFRESH], token_lifetime=LIFETIME
    )
    with simulator.running():
        yield simulator


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient() as client:
        yield client


def klaviyo(
    sim: KlaviyoSimulator, http: httpx.AsyncClient, clock: FakeClock, **oauth: Any
) -> KlaviyoDestination:
    credentials = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH, **oauth}
    settings = KlaviyoSettings(kind="klaviyo", base_url=sim.url, oauth=credentials)
    return KlaviyoDestination("k", settings, http, clock=clock)


def token_requests(sim: KlaviyoSimulator) -> list[Any]:
    return [r for r in sim.requests if r.path == "/oauth/token"]


def api_auth(sim: KlaviyoSimulator) -> list[str]:
    return [r.headers["authorization"] for r in sim.requests if r.path.startswith("/api/")]


async def test_the_first_call_gets_a_token_with_the_refresh_grant_and_sends_it_as_bearer(sim, http) -> None:
    dest = klaviyo(sim, http, FakeClock())
    await dest.deliver(effect(1))
    await dest.deliver(effect(2))
    [request] = token_requests(sim)
    assert (
        request.headers["authorization"]
        == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    )
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert {k: v[0] for k, v in parse_qs(request.body.decode()).items()} == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
    }
    [issued] = sim.access_tokens
    assert api_auth(sim) == [f"Bearer {issued}"] * 2
    assert len(sim.accepted_events) == 2 and sim.invalid == []


async def test_the_token_is_renewed_a_minute_before_it_expires_not_earlier(sim, http) -> None:
    clock = FakeClock()
    dest = klaviyo(sim, http, clock)
    await dest.deliver(effect(1))
    assert dest.oauth is not None and dest.oauth.expires_at == clock.now() + timedelta(seconds=LIFETIME)
    clock.advance(LIFETIME - 61)
    await dest.deliver(effect(2))
    assert len(token_requests(sim)) == 1  # still more than a minute left
    clock.advance(2)  # now 59 s left: renewed before the call, never refused
    await dest.deliver(effect(3))
    assert len(token_requests(sim)) == 2
    assert sim.token_answers == [(200, "issued"), (200, "issued")]
    first, second, third = api_auth(sim)
    assert first == second != third
    assert [r.path for r in sim.requests].count("/api/events") == 3  # no 401 on the way


async def test_a_401_renews_the_token_once_and_the_call_is_repeated(sim, http) -> None:
    dest = klaviyo(sim, http, FakeClock())
    await dest.deliver(effect(1))
    sim.expire_access_tokens()  # Klaviyo revoked or forgot it before its time
    await dest.deliver(effect(2))
    assert len(token_requests(sim)) == 2
    assert [r.path for r in sim.requests] == [
        "/oauth/token",
        "/api/events",
        "/api/events",  # refused with 401
        "/oauth/token",
        "/api/events",
    ]
    assert len(sim.accepted_events) == 2


async def test_a_401_with_a_fresh_token_pauses_after_exactly_one_renewal(sim, http) -> None:
    dest = klaviyo(sim, http, FakeClock())
    await dest.deliver(effect(1))
    sim.token_lifetime = 0  # every token issued from now on is dead on arrival
    sim.expire_access_tokens()
    with pytest.raises(DestinationAuthError, match="401"):
        await dest.deliver(effect(2))
    assert len(token_requests(sim)) == 2


async def test_a_refused_refresh_pauses_the_destination_and_never_shows_a_secret(sim, http, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    dest = klaviyo(sim, http, FakeClock())
    await dest.deliver(effect(1))
    [access] = sim.access_tokens
    sim.revoke(REFRESH)  # the app was uninstalled
    sim.expire_access_tokens()
    with pytest.raises(DestinationAuthError, match="invalid_grant") as refused:
        await dest.deliver(effect(2))
    assert refused.value.status == 400
    assert sim.token_answers[-1] == (400, "invalid_grant")
    for secret in (CLIENT_SECRET, REFRESH, access):
        assert secret not in str(refused.value) and secret not in caplog.text


async def test_a_wrong_client_secret_is_invalid_client_and_pauses(sim, http) -> None:
    with pytest.raises(DestinationAuthError, match="401: invalid_client"):
        await klaviyo(sim, http, FakeClock(), client_secret="not-it").deliver(effect(1))
    assert [r.path for r in sim.requests] == ["/oauth/token"]


async def test_a_token_endpoint_that_is_down_is_retryable(sim, http) -> None:
    sim.fail_next(status=503, headers={"Retry-After": "7"})
    dest = klaviyo(sim, http, FakeClock())
    with pytest.raises(RetryableDeliveryError, match="token endpoint answered 503") as caught:
        await dest.deliver(effect(1))
    assert caught.value.retry_after == 7.0
    await dest.deliver(effect(1))  # the next attempt gets its token
    assert len(sim.accepted_events) == 1


async def test_concurrent_calls_share_one_renewal(sim, http) -> None:
    dest = klaviyo(sim, http, FakeClock())
    await asyncio.gather(*(dest.deliver(effect(n)) for n in range(10)))
    assert len(token_requests(sim)) == 1
    sim.expire_access_tokens()
    await asyncio.gather(*(dest.deliver(effect(n)) for n in range(10, 20)))
    assert len(token_requests(sim)) == 2  # ten 401s, one renewal
    assert len(sim.accepted_events) == 20


async def test_concurrent_calls_all_fail_on_one_refused_refresh(sim, http) -> None:
    dest = klaviyo(sim, http, FakeClock())
    sim.revoke(REFRESH)
    results = await asyncio.gather(*(dest.deliver(effect(n)) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, DestinationAuthError) for r in results)
    assert len(token_requests(sim)) == 1


async def test_a_rotated_refresh_token_is_used_next_and_handed_to_the_hook(http) -> None:
    with KlaviyoSimulator(
        (), oauth_clients={CLIENT_ID: CLIENT_SECRET}, refresh_tokens=[REFRESH], rotate_refresh_tokens=True
    ).running() as sim:
        clock = FakeClock()
        dest = klaviyo(sim, http, clock)
        handed: list[str] = []

        async def keep(token: str) -> None:
            handed.append(token)

        assert dest.oauth is not None
        dest.oauth.on_refresh_token = keep
        await dest.deliver(effect(1))
        clock.advance(LIFETIME)
        await dest.deliver(effect(2))  # would be invalid_grant with the retired first token
        clock.advance(LIFETIME)
        await dest.deliver(effect(3))
        assert sim.token_answers == [(200, "issued")] * 3
        sent = [parse_qs(r.body.decode())["refresh_token"][0] for r in token_requests(sim)]
        assert sent == [REFRESH, handed[0], handed[1]] and len(set(sent)) == 3
        assert sim.refresh_tokens == {handed[2]}


def test_klaviyo_takes_either_a_key_or_oauth() -> None:
    oauth = {"client_id": CLIENT_ID, "client_secret": "secret-xyz", "refresh_token": "refresh-xyz"}
    with pytest.raises(ValidationError, match="either api_key or oauth"):
        KlaviyoSettings(kind="klaviyo")
    with pytest.raises(ValidationError, match="either api_key or oauth"):
        KlaviyoSettings(kind="klaviyo", api_key="pk_1", oauth=oauth)
    with pytest.raises(ValidationError, match="next_api_key rotates an api_key"):
        KlaviyoSettings(kind="klaviyo", oauth=oauth, next_api_key="pk_2")
    with pytest.raises(ValidationError, match="refresh_token"):
        KlaviyoSettings(kind="klaviyo", oauth={"client_id": CLIENT_ID, "client_secret": "s"})
    settings = KlaviyoSettings(kind="klaviyo", oauth=oauth)
    dest = KlaviyoDestination("k", settings, httpx.AsyncClient())
    assert dest.oauth is not None and dest.oauth.token_url == TOKEN_URL == "https://a.klaviyo.com/oauth/token"
    assert "secret-xyz" not in repr(settings) and "refresh-xyz" not in repr(settings)


async def test_upsert_and_delete_use_the_same_token(sim, http) -> None:
    dest = klaviyo(sim, http, FakeClock())
    await dest.deliver(
        Effect(
            id=9,
            destination="k",
            action=UPSERT_CONTACT,
            idempotency_key="u",
            payload={"email": "ann@example.com", "fields": {"first_name": "Ann"}},
            attempt=1,
        )
    )
    assert sim.profile_by_email("ann@example.com") is not None
    assert len(token_requests(sim)) == 1


# ---------------------------------------------------------------------------- Mailchimp


def test_mailchimp_access_token_needs_a_data_centre() -> None:
    with pytest.raises(ValidationError, match="give the data centre as dc"):
        MailchimpSettings(kind="mailchimp", list_id="l", access_token="tok")
    with pytest.raises(ValidationError, match="either api_key or access_token"):
        MailchimpSettings(kind="mailchimp", list_id="l", api_key="k-us1", access_token="tok", dc="us1")
    with pytest.raises(ValidationError, match="next_api_key rotates an api_key"):
        MailchimpSettings(kind="mailchimp", list_id="l", access_token="tok", dc="us1", next_api_key="k-us1")
    settings = MailchimpSettings(kind="mailchimp", list_id="l", access_token="tok", dc="us6")
    assert (
        MailchimpDestination("mc", settings, httpx.AsyncClient()).base_url
        == "https://us6.api.mailchimp.com/3.0"
    )


async def test_mailchimp_with_an_oauth_token_sends_it_as_bearer_and_a_revoked_one_pauses(http) -> None:
    with MailchimpSimulator((), access_tokens=["oauth-token-1"]).running() as sim:
        settings = MailchimpSettings(
            kind="mailchimp", base_url=sim.url, access_token="oauth-token-1", list_id="l1"
        )
        dest = MailchimpDestination("mc", settings, http)
        payload = {"profile_id": 1, "email": "ann@example.com", "fields": {}, "consent": {}}
        upsert = Effect(
            id=1, destination="mc", action=UPSERT_CONTACT, idempotency_key="u", payload=payload, attempt=1
        )
        await dest.deliver(upsert)
        assert sim.requests[0].headers["authorization"] == "Bearer oauth-token-1"
        assert sim.member("l1", "ann@example.com") is not None
        sim.revoke("oauth-token-1")  # the user disconnected the app
        with pytest.raises(DestinationAuthError, match="API Key Invalid") as refused:
            await dest.deliver(upsert)
        assert "oauth-token-1" not in str(refused.value)
