"""The Mailchimp Marketing and Transactional destinations, against their simulators."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tidings.delivery.effects import Effect
from tidings.destinations.mailchimp import MailchimpDestination, MailchimpSettings
from tidings.destinations.mailchimp_transactional import (
    MailchimpTransactionalDestination,
    MailchimpTransactionalSettings,
)
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError
from tidings.testing.mailchimp import MailchimpSimulator, MandrillSimulator

KEY = "0123456789abcdef0123456789abcdef-us14"
LIST = "a1b2c3d4e5"
MD_KEY = "md-0123456789"
PROBLEM = "https://mailchimp.com/developer/marketing/docs/errors/"


def effect(action: str, payload: dict[str, Any], key: str = "k1") -> Effect:
    return Effect(id=1, destination="mc", action=action, idempotency_key=key, payload=payload, attempt=1)


def md5(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


@pytest.fixture
def mailchimp():
    with MailchimpSimulator(KEY, lists={LIST}).running() as server:
        yield server


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def marketing(sim: MailchimpSimulator, http: httpx.AsyncClient, **settings: Any) -> MailchimpDestination:
    values: dict[str, Any] = {"kind": "mailchimp", "api_key": KEY, "list_id": LIST, "base_url": sim.url}
    return MailchimpDestination("mc", MailchimpSettings(**{**values, **settings}), http)


UPSERT = {
    "profile_id": 7,
    "email": "Ann@Example.com",
    "phone": None,
    "fields": {"FNAME": "Ann", "CART": 30, "VIP": True},
    "consent": {"email": "subscribed"},
}

# ---------------------------------------------------------------------------- settings


def test_the_data_centre_comes_from_the_key_and_base_url_overrides_it() -> None:
    settings = MailchimpSettings(kind="mailchimp", api_key=KEY, list_id=LIST)
    dest = MailchimpDestination("mc", settings, httpx.AsyncClient())
    assert dest.base_url == "https://us14.api.mailchimp.com/3.0"
    assert dest.limits.concurrency == 10
    assert dest.idempotent_actions == {"upsert_contact", "delete_contact"}
    custom = MailchimpSettings(kind="mailchimp", api_key="nodc", list_id=LIST, base_url="http://x/3.0/")
    assert MailchimpDestination("mc", custom, httpx.AsyncClient()).base_url == "http://x/3.0"
    with pytest.raises(ValidationError, match="data centre"):
        MailchimpSettings(kind="mailchimp", api_key="nodc", list_id=LIST)
    with pytest.raises(ValidationError):
        MailchimpSettings(kind="mailchimp", api_key=KEY, list_id=LIST, status_if_new="cleaned")
    assert KEY not in repr(settings)


# ---------------------------------------------------------------------------- marketing: actions


async def test_upsert_puts_the_member_by_hash_with_basic_auth_and_merge_fields(mailchimp, http) -> None:
    receipt = await marketing(mailchimp, http).deliver(effect("upsert_contact", UPSERT))
    [request] = mailchimp.requests
    assert (request.method, request.path) == ("PUT", f"/3.0/lists/{LIST}/members/{md5('ann@example.com')}")
    user, _, password = base64.b64decode(request.headers["authorization"].split()[1]).decode().partition(":")
    assert password == KEY and user
    assert json.loads(request.body) == {
        "email_address": "Ann@Example.com",
        "status_if_new": "subscribed",
        "merge_fields": {"FNAME": "Ann", "CART": 30, "VIP": "true"},
    }
    assert receipt.remote_id == md5("ann@example.com") and receipt.status_code == 200
    member = mailchimp.member(LIST, "ann@example.com")
    assert member["status"] == "subscribed" and member["merge_fields"]["CART"] == 30
    # a second push updates in place, and does not change an existing member's status
    await marketing(mailchimp, http, status_if_new="pending").deliver(
        effect("upsert_contact", {**UPSERT, "fields": {"CART": 45}})
    )
    assert len(mailchimp.members) == 1
    member = mailchimp.member(LIST, "ann@example.com")
    assert member["merge_fields"] == {"FNAME": "Ann", "CART": 45, "VIP": "true"}
    assert member["status"] == "subscribed"


async def test_a_new_member_can_be_pending_and_an_opt_out_is_pushed_as_unsubscribed(mailchimp, http) -> None:
    dest = marketing(mailchimp, http, status_if_new="pending")
    await dest.deliver(effect("upsert_contact", {**UPSERT, "email": "bob@example.com"}))
    assert mailchimp.member(LIST, "bob@example.com")["status"] == "pending"
    await dest.deliver(
        effect("upsert_contact", {**UPSERT, "email": "bob@example.com", "consent": {"email": "unsubscribed"}})
    )
    assert mailchimp.member(LIST, "bob@example.com")["status"] == "unsubscribed"
    assert json.loads(mailchimp.requests[-1].body)["status"] == "unsubscribed"


async def test_tags_are_added_through_the_tags_endpoint(mailchimp, http) -> None:
    dest = marketing(mailchimp, http, tags=["tidings"])
    await dest.deliver(effect("upsert_contact", {**UPSERT, "tags": ["vip"], "backfill": True}))
    put, tags = mailchimp.requests
    assert tags.path == f"/3.0/lists/{LIST}/members/{md5('ann@example.com')}/tags"
    assert json.loads(tags.body) == {
        "tags": [{"name": "tidings", "status": "active"}, {"name": "vip", "status": "active"}],
        "is_syncing": True,
    }
    assert mailchimp.member(LIST, "ann@example.com")["tags"] == [{"name": "tidings"}, {"name": "vip"}]


async def test_track_event_posts_string_properties_and_is_syncing_for_replays(mailchimp, http) -> None:
    dest = marketing(mailchimp, http)
    await dest.deliver(effect("upsert_contact", UPSERT))
    payload = {
        "email": "ann@example.com",
        "name": "checkout_started",
        "properties": {"value": 30, "currency": "EUR", "items": ["a", "b"], "gone": None},
        "occurred_at": "2026-03-01T10:01:00Z",
    }
    receipt = await dest.deliver(effect("track_event", payload))
    assert receipt.status_code == 204
    await dest.deliver(effect("track_event", {**payload, "backfill": True}, key="k2"))
    live, replay = mailchimp.events
    assert live.subscriber_hash == md5("ann@example.com")
    assert live.body == {
        "name": "checkout_started",
        "properties": {"value": "30", "currency": "EUR", "items": '["a","b"]'},
        "is_syncing": False,
        "occurred_at": "2026-03-01T10:01:00Z",
    }
    assert replay.body["is_syncing"] is True
    with pytest.raises(PermanentDeliveryError, match="2 to 30"):
        await dest.deliver(effect("track_event", {**payload, "name": "x"}))
    assert len(mailchimp.events) == 2


async def test_an_event_for_an_unknown_member_is_permanent_with_mailchimps_words(mailchimp, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="Resource Not Found: The requested resource") as caught:
        await marketing(mailchimp, http).deliver(
            effect("track_event", {"email": "zed@example.com", "name": "viewed"})
        )
    assert caught.value.status == 404


async def test_trigger_journey_posts_the_email_to_the_step(mailchimp, http) -> None:
    receipt = await marketing(mailchimp, http).deliver(
        effect("trigger_journey", {"email": "ann@example.com", "journey_id": 12, "step_id": "34"})
    )
    assert receipt.status_code == 204
    assert mailchimp.requests[0].path == "/3.0/customer-journeys/journeys/12/steps/34/actions/trigger"
    assert mailchimp.triggers == [(12, 34, "ann@example.com")]
    with pytest.raises(PermanentDeliveryError, match="journey_id and step_id"):
        await marketing(mailchimp, http).deliver(effect("trigger_journey", {"email": "ann@example.com"}))


async def test_delete_is_permanent_and_repeating_it_is_harmless(mailchimp, http) -> None:
    dest = marketing(mailchimp, http)
    await dest.deliver(effect("upsert_contact", UPSERT))
    receipt = await dest.deliver(effect("delete_contact", {"email": "ann@example.com"}))
    assert receipt.status_code == 204
    assert (
        mailchimp.requests[-1].path
        == f"/3.0/lists/{LIST}/members/{md5('ann@example.com')}/actions/delete-permanent"
    )
    assert mailchimp.member(LIST, "ann@example.com") is None
    again = await dest.deliver(effect("delete_contact", {"email": "ann@example.com"}))
    assert again.status_code == 404  # already gone: done
    with pytest.raises(PermanentDeliveryError, match="Forgotten Email Not Subscribed"):
        await dest.deliver(effect("upsert_contact", UPSERT))


async def test_a_payload_without_an_email_is_permanent_without_a_request(mailchimp, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="no email"):
        await marketing(mailchimp, http).deliver(effect("upsert_contact", {**UPSERT, "email": None}))
    assert mailchimp.requests == []


# ---------------------------------------------------------------------------- marketing: errors


async def test_a_wrong_key_is_an_auth_error(mailchimp, http) -> None:
    dest = marketing(mailchimp, http, api_key="ffffffffffffffffffffffffffffffff-us14")
    with pytest.raises(DestinationAuthError, match="API Key Invalid") as caught:
        await dest.deliver(effect("upsert_contact", UPSERT))
    assert caught.value.status == 401


async def test_an_unknown_list_is_permanent(mailchimp, http) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"404.*Resource Not Found"):
        await marketing(mailchimp, http, list_id="nope").deliver(effect("upsert_contact", UPSERT))


async def test_429_and_5xx_are_retryable_and_retry_after_is_passed_on(mailchimp, http) -> None:
    dest = marketing(mailchimp, http)
    mailchimp.fail_next(status=429, headers={"Retry-After": "7"})
    with pytest.raises(RetryableDeliveryError) as caught:
        await dest.deliver(effect("upsert_contact", UPSERT))
    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    mailchimp.fail_next(status=429)  # Mailchimp sends no Retry-After
    with pytest.raises(RetryableDeliveryError) as caught:
        await dest.deliver(effect("upsert_contact", UPSERT))
    assert caught.value.retry_after is None
    mailchimp.fail_next(
        status=500, body={"type": PROBLEM, "title": "Internal Server Error", "status": 500, "detail": "oops"}
    )
    with pytest.raises(RetryableDeliveryError, match="500: Internal Server Error: oops"):
        await dest.deliver(effect("upsert_contact", UPSERT))
    mailchimp.fail_next(delay=1.0)
    slow = marketing(mailchimp, http, timeout=0.2)
    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await slow.deliver(effect("upsert_contact", UPSERT))
    await dest.deliver(effect("upsert_contact", UPSERT))
    assert mailchimp.member(LIST, "ann@example.com") is not None


async def test_a_400_carries_the_problem_detail(mailchimp, http) -> None:
    mailchimp.fail_next(
        status=400,
        body={
            "type": PROBLEM,
            "title": "Invalid Resource",
            "status": 400,
            "detail": "Please provide a valid email address.",
        },
    )
    with pytest.raises(
        PermanentDeliveryError, match="400: Invalid Resource: Please provide a valid email address"
    ) as caught:
        await marketing(mailchimp, http).deliver(effect("upsert_contact", UPSERT))
    assert not isinstance(caught.value, DestinationAuthError)


async def test_the_simulator_refuses_an_invalid_member_with_a_problem(mailchimp, http) -> None:
    auth = ("x", KEY)
    url = f"{mailchimp.url}/lists/{LIST}/members/{md5('ann@example.com')}"
    bad = await http.put(url, json={"email_address": "ann@example.com", "status_if_new": "maybe"}, auth=auth)
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["title"] == "Invalid Resource" and "status_if_new" in bad.json()["detail"]
    wrong_hash = await http.put(
        url, json={"email_address": "bob@example.com", "status_if_new": "subscribed"}, auth=auth
    )
    assert wrong_hash.status_code == 400
    no_status = await http.put(url, json={"email_address": "ann@example.com"}, auth=auth)
    assert no_status.status_code == 400 and "status_if_new" in no_status.json()["detail"]
    anonymous = await http.put(url, json={"email_address": "ann@example.com", "status_if_new": "subscribed"})
    assert anonymous.status_code == 401 and anonymous.json()["status"] == 401
    assert mailchimp.members == {}


async def test_the_simulator_answers_429_beyond_ten_connections_and_the_limit_keeps_under_it(http) -> None:
    with MailchimpSimulator(KEY, latency=0.2).running() as sim:
        dest = marketing(sim, http)
        emails = [f"c{n}@example.com" for n in range(14)]
        outcomes = await asyncio.gather(
            *(dest.deliver(effect("upsert_contact", {**UPSERT, "email": e})) for e in emails),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, RetryableDeliveryError)]
        assert sim.throttled == len(refused) >= 1  # 14 at once: Mailchimp refuses the excess
        assert all(o.status == 429 for o in refused)
        sim.throttled = 0
        gate = asyncio.Semaphore(dest.limits.concurrency or 0)  # what the dispatcher's budget does

        async def limited(email: str) -> None:
            async with gate:
                await dest.deliver(effect("upsert_contact", {**UPSERT, "email": email}))

        await asyncio.gather(*(limited(e) for e in emails))
        assert sim.throttled == 0 and len(sim.members) == 14


# ---------------------------------------------------------------------------- transactional


@pytest.fixture
def mandrill():
    with MandrillSimulator(
        MD_KEY, rejects={"gone@example.com": "hard-bounce"}, templates={"welcome"}
    ).running() as sim:
        yield sim


def transactional(
    sim: MandrillSimulator, http: httpx.AsyncClient, **settings: Any
) -> MailchimpTransactionalDestination:
    values: dict[str, Any] = {"kind": "mailchimp-transactional", "api_key": MD_KEY, "base_url": sim.url}
    return MailchimpTransactionalDestination(
        "md", MailchimpTransactionalSettings(**{**values, **settings}), http
    )


SEND = {
    "email": "ann@example.com",
    "name": "Ann",
    "template": "welcome",
    "merge_vars": {"FNAME": "Ann", "CART": 30},
    "global_merge_vars": {"SHOP": "Tidings"},
    "subject": "Hello",
}


def test_transactional_defaults() -> None:
    settings = MailchimpTransactionalSettings(kind="mailchimp-transactional", api_key=MD_KEY)
    dest = MailchimpTransactionalDestination("md", settings, httpx.AsyncClient())
    assert dest.base_url == "https://mandrillapp.com/api/1.3"
    assert dest.actions == {"send_template"} and dest.idempotent_actions == frozenset()


async def test_send_template_sends_a_valid_body_and_returns_the_message_id(mandrill, http) -> None:
    dest = transactional(mandrill, http, from_email="shop@example.com")
    receipt = await dest.deliver(effect("send_template", SEND, key="send-1"))
    [request] = mandrill.requests
    assert request.path == "/api/1.3/messages/send-template"
    assert "authorization" not in request.headers
    [sent] = mandrill.sent
    assert mandrill.invalid == 0
    assert sent.body == {
        "key": MD_KEY,
        "template_name": "welcome",
        "template_content": [],
        "message": {
            "to": [{"email": "ann@example.com", "type": "to", "name": "Ann"}],
            "metadata": {"tidings_idempotency_key": "send-1"},
            "merge_vars": [
                {
                    "rcpt": "ann@example.com",
                    "vars": [{"name": "FNAME", "content": "Ann"}, {"name": "CART", "content": "30"}],
                }
            ],
            "global_merge_vars": [{"name": "SHOP", "content": "Tidings"}],
            "subject": "Hello",
            "from_email": "shop@example.com",
        },
    }
    assert receipt.remote_id == sent.results[0]["_id"]
    assert receipt.detail == {"status": "sent"}


async def test_a_rejected_recipient_in_a_200_is_permanent_naming_the_reason(mandrill, http) -> None:
    with pytest.raises(
        PermanentDeliveryError, match=r"gone@example\.com was rejected: hard-bounce"
    ) as caught:
        await transactional(mandrill, http).deliver(
            effect("send_template", {**SEND, "email": "gone@example.com"})
        )
    assert caught.value.status == 200 and not isinstance(caught.value, DestinationAuthError)
    with pytest.raises(PermanentDeliveryError, match="was invalid"):
        await transactional(mandrill, http).deliver(
            effect("send_template", {**SEND, "email": "ann@localhost"})
        )


async def test_an_invalid_key_is_an_auth_error(mandrill, http) -> None:
    with pytest.raises(DestinationAuthError, match="Invalid_Key: Invalid API key"):
        await transactional(mandrill, http, api_key="wrong").deliver(effect("send_template", SEND))
    # Mandrill has long answered every error with a 500: the name decides, not the status
    mandrill.fail_next(
        status=500, body={"status": "error", "code": -1, "name": "Invalid_Key", "message": "Invalid API key"}
    )
    with pytest.raises(DestinationAuthError):
        await transactional(mandrill, http).deliver(effect("send_template", SEND))


async def test_unknown_template_and_validation_errors_are_permanent_with_mandrills_words(
    mandrill, http
) -> None:
    with pytest.raises(PermanentDeliveryError, match='404: Unknown_Template: No such template "nope"'):
        await transactional(mandrill, http).deliver(effect("send_template", {**SEND, "template": "nope"}))
    mandrill.fail_next(
        status=500,
        body={"status": "error", "code": -2, "name": "ValidationError", "message": "bad merge var"},
    )
    with pytest.raises(PermanentDeliveryError, match="ValidationError: bad merge var") as caught:
        await transactional(mandrill, http).deliver(effect("send_template", SEND))
    assert not isinstance(caught.value, RetryableDeliveryError)
    with pytest.raises(PermanentDeliveryError, match="no template"):
        await transactional(mandrill, http).deliver(effect("send_template", {**SEND, "template": None}))


async def test_transactional_429_5xx_and_timeouts_are_retryable(mandrill, http) -> None:
    dest = transactional(mandrill, http)
    mandrill.fail_next(status=429, headers={"Retry-After": "30"})
    with pytest.raises(RetryableDeliveryError) as caught:
        await dest.deliver(effect("send_template", SEND))
    assert caught.value.retry_after == 30.0
    mandrill.fail_next(
        status=500, body={"status": "error", "code": -1, "name": "GeneralError", "message": "try later"}
    )
    with pytest.raises(RetryableDeliveryError, match="GeneralError: try later"):
        await dest.deliver(effect("send_template", SEND))
    mandrill.fail_next(status=503)
    with pytest.raises(RetryableDeliveryError):
        await dest.deliver(effect("send_template", SEND))
    mandrill.fail_next(delay=1.0)
    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await transactional(mandrill, http, timeout=0.2).deliver(effect("send_template", SEND))
    assert mandrill.sent == []


async def test_the_mandrill_simulator_validates_against_the_spec(mandrill, http) -> None:
    url = f"{mandrill.url}/messages/send-template"
    good = {
        "key": MD_KEY,
        "template_name": "welcome",
        "template_content": [],
        "message": {"to": [{"email": "a@example.com"}]},
    }
    assert (await http.post(url, json=good)).status_code == 200
    for bad, where in (
        ({k: v for k, v in good.items() if k != "template_content"}, "template_content"),
        ({**good, "message": {"to": "a@example.com"}}, "message/to"),
        ({**good, "message": {"to": [{"email": "a@example.com", "type": "primary"}]}}, "message/to/0/type"),
        ({**good, "template_nmae": "welcome"}, "template_nmae"),
    ):
        response = await http.post(url, json=bad)
        assert response.status_code == 400, bad
        error = response.json()
        assert (error["status"], error["name"], error["code"]) == ("error", "ValidationError", -2)
        assert where in error["message"], (where, error["message"])
    assert mandrill.invalid == 4 and len(mandrill.sent) == 1
