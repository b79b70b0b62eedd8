"""The SendGrid destination against the SendGrid simulator (bodies checked against SendGrid's spec)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tidings.delivery.effects import Effect
from tidings.destinations.sendgrid import SendGridDestination, SendGridSettings
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError
from tidings.testing.sendgrid import SendGridSimulator

KEY = "SG.test-key-0123456789"
FIELDS = {"plan": "e1_T", "cart_value": "e2_N"}
LIST = "ca7a3796-e8a8-4029-9ccb-df8937940562"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim():
    with SendGridSimulator(KEY, custom_fields=FIELDS).running() as server:
        yield server


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def destination(sim: SendGridSimulator, http: httpx.AsyncClient, **settings: Any) -> SendGridDestination:
    values: dict[str, Any] = {
        "kind": "sendgrid",
        "api_key": KEY,
        "base_url": sim.url,
        "custom_field_ids": FIELDS,
        "from_email": "shop@example.com",
        "from_name": "The Shop",
        **settings,
    }
    return SendGridDestination("sg", SendGridSettings.model_validate(values), http)


def effect(action: str, payload: dict[str, Any], key: str = "key-1") -> Effect:
    return Effect(id=1, destination="sg", action=action, idempotency_key=key, payload=payload, attempt=1)


def upsert(email: str = "Ann@Example.com", **fields: Any) -> Effect:
    return effect("upsert_contact", {"profile_id": 7, "email": email, "phone": None, "fields": fields})


def mail(**payload: Any) -> Effect:
    return effect(
        "send_template", {"email": "ann@example.com", "template_id": "d-abc123", **payload}, "idem-9"
    )


def body(sim: SendGridSimulator, n: int = -1) -> Any:
    return json.loads(sim.requests[n].body)


# ---------------------------------------------------------------------- settings


def test_settings_defaults_and_the_key_stays_secret() -> None:
    settings = SendGridSettings.model_validate({"kind": "sendgrid", "api_key": KEY})
    dest = SendGridDestination("sg", settings, httpx.AsyncClient())
    assert dest.base_url == "https://api.sendgrid.com"
    assert (settings.sandbox, settings.list_ids, settings.custom_field_ids) == (False, [], {})
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    eu = SendGridSettings.model_validate(
        {"kind": "sendgrid", "api_key": KEY, "base_url": "https://api.eu.sendgrid.com/"}
    )
    assert SendGridDestination("sg", eu, httpx.AsyncClient()).base_url == "https://api.eu.sendgrid.com"
    with pytest.raises(ValidationError):
        SendGridSettings.model_validate({"kind": "sendgrid", "api_key": KEY, "sandbox": "maybe"})
    assert SendGridDestination.idempotent_actions == {"upsert_contact", "delete_contact"}


# ---------------------------------------------------------------------- upsert_contact


async def test_upsert_sends_reserved_fields_top_level_and_custom_fields_by_id(sim, http) -> None:
    dest = destination(sim, http, list_ids=[LIST])
    receipt = await dest.deliver(upsert(first_name="Ann", postal_code=75001, plan="gold", cart_value=30))
    [request] = sim.requests
    assert (request.method, request.path) == ("PUT", "/v3/marketing/contacts")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert body(sim) == {
        "list_ids": [LIST],
        "contacts": [
            {
                "email": "ann@example.com",
                "first_name": "Ann",
                "postal_code": "75001",
                "custom_fields": {"e1_T": "gold", "e2_N": 30},
            }
        ],
    }
    [handled] = sim.handled
    assert (handled.status, handled.errors) == (202, [])  # the spec's schema accepted it
    assert receipt.status_code == 202
    assert receipt.remote_id in sim.jobs and sim.jobs[receipt.remote_id]["job_type"] == "upsert"
    assert receipt.detail["ratelimit_remaining"] == receipt.detail["ratelimit_limit"] - 1
    contact = sim.contacts["ann@example.com"]
    assert contact["custom_fields"] == {"e1_T": "gold", "e2_N": 30}
    assert contact["list_ids"] == [LIST]


async def test_a_second_upsert_updates_the_same_contact_and_keeps_omitted_fields(sim, http) -> None:
    dest = destination(sim, http)
    await dest.deliver(upsert(first_name="Ann", plan="gold"))
    contact_id = sim.contacts["ann@example.com"]["id"]
    await dest.deliver(upsert(last_name="Lee", plan="silver", first_name=None))
    assert "first_name" not in body(sim)["contacts"][0]  # a None value is not sent (not cleared)
    contact = sim.contacts["ann@example.com"]
    assert contact["id"] == contact_id
    assert (contact["first_name"], contact["last_name"], contact["custom_fields"]) == (
        "Ann",
        "Lee",
        {"e1_T": "silver"},
    )
    assert "list_ids" not in body(sim)  # none configured: not sent


async def test_an_unknown_field_is_refused_before_sending(sim, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="favourite_colour"):
        await destination(sim, http).deliver(upsert(first_name="Ann", favourite_colour="blue"))
    assert sim.requests == []


async def test_a_contact_without_identifier_is_refused_before_sending(sim, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="no identifier"):
        await destination(sim, http).deliver(upsert(email=None, first_name="Ann"))
    assert sim.requests == []


async def test_a_field_id_sendgrid_does_not_know_is_a_permanent_error_with_its_words(sim, http) -> None:
    dest = destination(sim, http, custom_field_ids={"plan": "w9_T"})
    with pytest.raises(PermanentDeliveryError) as caught:
        await dest.deliver(upsert(plan="gold"))
    assert caught.value.status == 400
    assert "contacts[0].custom_fields.w9_T: custom field ID does not exist" in str(caught.value)


# ---------------------------------------------------------------------- send_template


async def test_send_template_with_dynamic_data_and_the_idempotency_key(sim, http) -> None:
    receipt = await destination(sim, http).deliver(mail(name="Ann", data={"order": {"total": 30}}))
    [request] = sim.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert body(sim) == {
        "personalizations": [
            {
                "to": [{"email": "ann@example.com", "name": "Ann"}],
                "custom_args": {"tidings_idempotency_key": "idem-9"},
                "dynamic_template_data": {"order": {"total": 30}},
            }
        ],
        "from": {"email": "shop@example.com", "name": "The Shop"},
        "template_id": "d-abc123",
    }
    assert sim.handled[-1].errors == []
    [sent] = sim.sent
    assert (receipt.status_code, receipt.remote_id) == (202, sent["message_id"])
    assert sim.sandboxed == []


async def test_the_effect_may_name_its_own_sender(sim, http) -> None:
    await destination(sim, http).deliver(mail(from_email="news@example.com"))
    assert body(sim)["from"] == {"email": "news@example.com"}  # not the configured name


async def test_sandbox_mode_answers_200_and_sends_nothing(sim, http) -> None:
    receipt = await destination(sim, http, sandbox=True).deliver(mail())
    assert body(sim)["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert receipt.status_code == 200
    assert sim.sent == [] and len(sim.sandboxed) == 1


async def test_send_template_without_template_or_sender_is_refused_before_sending(sim, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="needs template"):
        await destination(sim, http).deliver(effect("send_template", {"email": "ann@example.com"}))
    with pytest.raises(PermanentDeliveryError, match="from_email"):
        await destination(sim, http, from_email=None).deliver(mail())
    assert sim.requests == []


async def test_an_action_sendgrid_does_not_do_is_permanent(sim, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="track_event"):
        await destination(sim, http).deliver(effect("track_event", {"email": "ann@example.com"}))


# ---------------------------------------------------------------------- delete_contact


async def test_delete_looks_the_contact_up_by_email_then_deletes_its_id(sim, http) -> None:
    dest = destination(sim, http)
    await dest.deliver(upsert(first_name="Ann"))
    contact_id = sim.contacts["ann@example.com"]["id"]
    receipt = await dest.deliver(effect("delete_contact", {"email": "ANN@example.com"}))
    search, delete = sim.requests[1:]
    assert (search.method, search.path) == ("POST", "/v3/marketing/contacts/search/emails")
    assert json.loads(search.body) == {"emails": ["ann@example.com"]}
    assert (delete.method, delete.path) == ("DELETE", "/v3/marketing/contacts")
    assert [h.status for h in sim.handled] == [202, 200, 202]
    assert sim.contacts == {}
    assert receipt.status_code == 202 and sim.jobs[receipt.remote_id]["results"]["deleted_count"] == 1
    assert receipt.detail["contact_id"] == contact_id


async def test_deleting_a_contact_sendgrid_does_not_have_is_done(sim, http) -> None:
    receipt = await destination(sim, http).deliver(effect("delete_contact", {"email": "nobody@example.com"}))
    assert [r.path for r in sim.requests] == ["/v3/marketing/contacts/search/emails"]
    assert (receipt.status_code, receipt.remote_id, receipt.detail["found"]) == (404, None, False)


async def test_delete_without_email_is_refused(sim, http) -> None:
    with pytest.raises(PermanentDeliveryError, match="email"):
        await destination(sim, http).deliver(effect("delete_contact", {"profile_id": 3}))


# ---------------------------------------------------------------------- errors


async def test_429_with_retry_after_is_retryable_after_that_long(sim, http) -> None:
    sim.fail_next(
        status=429, headers={"Retry-After": "7"}, body={"errors": [{"message": "too many requests"}]}
    )
    with pytest.raises(RetryableDeliveryError) as caught:
        await destination(sim, http).deliver(upsert())
    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    assert "too many requests" in str(caught.value)


async def test_429_without_retry_after_waits_until_the_rate_limit_reset(http) -> None:
    with SendGridSimulator(KEY, custom_fields=FIELDS, rate_limit=2, rate_window=30).running() as sim:
        dest = destination(sim, http)
        first = await dest.deliver(upsert())
        assert (first.detail["ratelimit_limit"], first.detail["ratelimit_remaining"]) == (2, 1)
        await dest.deliver(mail())  # another endpoint, another budget
        await dest.deliver(upsert())
        with pytest.raises(RetryableDeliveryError) as caught:
            await dest.deliver(upsert())
        response = sim.requests[-1]
        assert response.path == "/v3/marketing/contacts"
        assert sim.rate_limited == 1
        assert caught.value.status == 429 and "too many requests" in str(caught.value)
        reset = first.detail["ratelimit_reset"]
        assert caught.value.retry_after is not None
        assert abs(caught.value.retry_after - (reset - time.time())) < 2
        assert 0 < caught.value.retry_after <= 31
        assert len(sim.contacts) == 1 and [h.status for h in sim.handled] == [202, 202, 202, 429]


async def test_a_5xx_is_retryable(sim, http) -> None:
    sim.fail_next(status=500, body={"errors": [{"message": "internal error"}]})
    with pytest.raises(RetryableDeliveryError) as caught:
        await destination(sim, http).deliver(mail())
    assert caught.value.status == 500 and "internal error" in str(caught.value)
    assert sim.sent == []


async def test_a_timeout_is_retryable(sim, http) -> None:
    sim.fail_next(status=202, delay=1.0)
    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await destination(sim, http, timeout=0.2).deliver(upsert())


async def test_a_400_carries_sendgrids_own_words(sim, http) -> None:
    sim.fail_next(
        status=400,
        body={
            "errors": [
                {"field": "personalizations.0.to", "message": "Does not contain a valid address."},
                {"field": None, "message": "The template_id is not a valid dynamic template."},
            ]
        },
    )
    with pytest.raises(PermanentDeliveryError) as caught:
        await destination(sim, http).deliver(mail())
    assert not isinstance(caught.value, RetryableDeliveryError | DestinationAuthError)
    assert str(caught.value) == (
        "sendgrid answered 400: personalizations.0.to: Does not contain a valid address.; "
        "The template_id is not a valid dynamic template."
    )


async def test_a_wrong_key_is_an_auth_error(sim, http) -> None:
    with pytest.raises(DestinationAuthError) as caught:
        await destination(sim, http, api_key="SG.revoked").deliver(upsert())
    assert caught.value.status == 401 and "invalid, expired, or revoked" in str(caught.value)
    assert "SG.revoked" not in str(caught.value)
    assert sim.contacts == {}


async def test_a_403_is_an_auth_error(sim, http) -> None:
    sim.fail_next(status=403, body={"errors": [{"field": None, "message": "access forbidden"}]})
    with pytest.raises(DestinationAuthError, match="access forbidden"):
        await destination(sim, http).deliver(mail())


async def test_either_of_two_keys_works_during_a_rotation(http) -> None:
    with SendGridSimulator([KEY, "SG.new-key"], custom_fields=FIELDS).running() as sim:
        await destination(sim, http, api_key="SG.new-key").deliver(upsert())
        await destination(sim, http).deliver(upsert())
        assert [h.status for h in sim.handled] == [202, 202]


async def test_on_behalf_of_is_sent_when_configured(sim, http) -> None:
    await destination(sim, http, on_behalf_of="subuser-eu").deliver(upsert())
    assert sim.requests[0].headers["on-behalf-of"] == "subuser-eu"


# ---------------------------------------------------------------------- the simulator itself


async def test_the_simulator_refuses_bodies_the_spec_refuses_in_sendgrids_shape(sim, http) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    no_from = await http.post(
        f"{sim.url}/v3/mail/send",
        json={"personalizations": [{"to": [{"email": "a@example.com"}]}]},
        headers=auth,
    )
    assert no_from.status_code == 400
    assert {"field": "from", "message": "'from' is a required property"} in no_from.json()["errors"]
    not_a_list = await http.put(
        f"{sim.url}/v3/marketing/contacts", json={"contacts": {"email": "a@b.c"}}, headers=auth
    )
    assert not_a_list.status_code == 400
    [error] = not_a_list.json()["errors"]
    assert error["field"] == "contacts" and "is not of type 'array'" in error["message"]
    bad_email = await http.post(
        f"{sim.url}/v3/mail/send",
        json={"personalizations": [{"to": [{"email": "nobody"}]}], "from": {"email": "a@example.com"}},
        headers=auth,
    )
    assert bad_email.json()["errors"][0]["field"] == "personalizations.0.to.0.email"
    bad_list = await http.put(
        f"{sim.url}/v3/marketing/contacts",
        json={"list_ids": ["not-a-uuid"], "contacts": [{"email": "a@example.com"}]},
        headers=auth,
    )
    assert bad_list.status_code == 400
    number_arg = await http.post(
        f"{sim.url}/v3/mail/send",
        json={
            "personalizations": [{"to": [{"email": "a@example.com"}], "custom_args": {"n": 1}}],
            "from": {"email": "a@example.com"},
            "template_id": "d-1",
        },
        headers=auth,
    )
    assert number_arg.status_code == 400
    assert [h.status for h in sim.handled] == [400] * 5 and all(h.errors for h in sim.handled)
    assert sim.contacts == {} and sim.sent == []
    assert all("x-ratelimit-reset" in r.headers for r in (no_from, not_a_list, bad_email, bad_list))


async def test_the_simulator_wants_a_bearer_key(sim, http) -> None:
    answer = await http.put(
        f"{sim.url}/v3/marketing/contacts", json={"contacts": [{"email": "a@example.com"}]}
    )
    assert answer.status_code == 401
    assert answer.json() == {"errors": [{"field": None, "message": "authorization required"}]}
    assert "x-ratelimit-limit" in answer.headers


async def test_the_simulator_serves_jobs_and_field_definitions(sim, http) -> None:
    receipt = await destination(sim, http).deliver(upsert(plan="gold"))
    auth = {"authorization": f"Bearer {KEY}"}
    job = (
        await http.get(f"{sim.url}/v3/marketing/contacts/imports/{receipt.remote_id}", headers=auth)
    ).json()
    assert (job["status"], job["results"]["created_count"]) == ("completed", 1)
    fields = (await http.get(f"{sim.url}/v3/marketing/field_definitions", headers=auth)).json()
    assert {f["name"]: f["id"] for f in fields["custom_fields"]} == FIELDS


def test_the_shipped_schemas_are_what_the_extractor_makes_from_the_specs() -> None:
    specs = ROOT.parent / "shared" / "contracts" / "specs"
    if not (specs / "sendgrid").is_dir():
        pytest.skip("the vendor specs are not next to this checkout")
    spec = importlib.util.spec_from_file_location("extract_schemas", ROOT / "tools" / "extract_schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = json.loads((ROOT / "src" / "tidings" / "testing" / "schemas" / "sendgrid.json").read_text())
    assert module.sendgrid(specs) == shipped
