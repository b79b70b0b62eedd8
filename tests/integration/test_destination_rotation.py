"""Key rotation, the same for every API-key destination, against each vendor's simulator.

`next_api_key` beside `api_key`: when the vendor refuses the key in use, the other is tried at
once and kept; only when both are refused does the destination pause (DestinationAuthError).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tidings.delivery.effects import SEND_TEMPLATE, UPSERT_CONTACT, Effect
from tidings.destinations.activecampaign import ActiveCampaignDestination, ActiveCampaignSettings
from tidings.destinations.base import Destination
from tidings.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from tidings.destinations.mailchimp import MailchimpDestination, MailchimpSettings
from tidings.destinations.mailchimp_transactional import (
    MailchimpTransactionalDestination,
    MailchimpTransactionalSettings,
)
from tidings.destinations.sendgrid import SendGridDestination, SendGridSettings
from tidings.exceptions import DestinationAuthError
from tidings.testing import (
    ActiveCampaignSimulator,
    KlaviyoSimulator,
    MailchimpSimulator,
    MandrillSimulator,
    SendGridSimulator,
)
from tidings.testing.simulator import Recorded, Simulator


def _basic_password(recorded: Recorded) -> str:
    value = recorded.headers.get("authorization", "").partition(" ")[2]
    return base64.b64decode(value).decode().partition(":")[2]


@dataclass(frozen=True)
class Case:
    kind: str
    old: str
    new: str
    simulator: Callable[[list[str]], Simulator]
    destination: Callable[[Simulator, httpx.AsyncClient, dict[str, Any]], Destination[Any]]
    effect: Effect
    key_of: Callable[[Recorded], str]  # which key a recorded request carried


def _effect(action: str, payload: dict[str, Any]) -> Effect:
    return Effect(id=1, destination="esp", action=action, idempotency_key="k-1", payload=payload, attempt=1)


CONTACT = {"profile_id": 1, "email": "ann@example.com", "phone": None, "fields": {}, "consent": {}}

CASES = [
    Case(
        "klaviyo",
        "pk_old_0123456789",
        "pk_new_9876543210",
        lambda keys: KlaviyoSimulator(keys),
        lambda sim, http, keys: KlaviyoDestination(
            "esp", KlaviyoSettings(kind="klaviyo", base_url=sim.url, **keys), http
        ),
        _effect(UPSERT_CONTACT, CONTACT),
        lambda r: r.headers["authorization"].removeprefix("Klaviyo-API-Key "),
    ),
    Case(
        "mailchimp",
        "0123456789abcdef0123456789abcdef-us14",
        "fedcba9876543210fedcba9876543210-us14",
        lambda keys: MailchimpSimulator(keys),
        lambda sim, http, keys: MailchimpDestination(
            "esp", MailchimpSettings(kind="mailchimp", base_url=sim.url, list_id="l1", **keys), http
        ),
        _effect(UPSERT_CONTACT, CONTACT),
        _basic_password,
    ),
    Case(
        "mailchimp-transactional",
        "md-old-key",
        "md-new-key",
        lambda keys: MandrillSimulator(keys),
        lambda sim, http, keys: MailchimpTransactionalDestination(
            "esp",
            MailchimpTransactionalSettings(kind="mailchimp-transactional", base_url=sim.url, **keys),
            http,
        ),
        _effect(SEND_TEMPLATE, {"email": "ann@example.com", "template": "welcome", "variables": {}}),
        lambda r: json.loads(r.body)["key"],
    ),
    Case(
        "sendgrid",
        "SG.old-key",
        "SG.new-key",
        lambda keys: SendGridSimulator(keys),
        lambda sim, http, keys: SendGridDestination(
            "esp", SendGridSettings(kind="sendgrid", base_url=sim.url, **keys), http
        ),
        _effect(UPSERT_CONTACT, CONTACT),
        lambda r: r.headers["authorization"].removeprefix("Bearer "),
    ),
    Case(
        "activecampaign",
        "ac-old-key",
        "ac-new-key",
        lambda keys: ActiveCampaignSimulator(keys),
        lambda sim, http, keys: ActiveCampaignDestination(
            "esp", ActiveCampaignSettings(kind="activecampaign", base_url=sim.url, **keys), http
        ),
        _effect(UPSERT_CONTACT, CONTACT),
        lambda r: r.headers["api-token"],
    ),
]


@pytest.fixture(params=CASES, ids=[c.kind for c in CASES])
def case(request: pytest.FixtureRequest) -> Iterator[tuple[Case, Any]]:
    chosen: Case = request.param
    with chosen.simulator([chosen.old, chosen.new]).running() as sim:
        yield chosen, sim


async def test_a_revoked_key_hands_over_to_the_next_one_without_a_pause(case, caplog) -> None:
    caplog.set_level(logging.INFO)
    chosen, sim = case
    async with httpx.AsyncClient() as http:
        dest = chosen.destination(sim, http, {"api_key": chosen.old, "next_api_key": chosen.new})
        await dest.deliver(chosen.effect)
        assert [chosen.key_of(r) for r in sim.requests] == [chosen.old]

        sim.revoke(chosen.old)  # the operator revoked the old key at the vendor
        sim.requests.clear()
        await dest.deliver(chosen.effect)
        assert [chosen.key_of(r) for r in sim.requests] == [chosen.old, chosen.new]

        sim.requests.clear()
        await dest.deliver(chosen.effect)  # the working key is kept: no refused request first
        assert [chosen.key_of(r) for r in sim.requests] == [chosen.new]

        sim.revoke(chosen.new)  # both gone: now the destination must pause
        sim.requests.clear()
        with pytest.raises(DestinationAuthError) as refused:
            await dest.deliver(chosen.effect)
        assert [chosen.key_of(r) for r in sim.requests] == [chosen.new, chosen.old]

    assert f"{chosen.kind} refused api_key; trying next_api_key" in caplog.text
    assert f"{chosen.kind} accepted next_api_key" in caplog.text
    for secret in (chosen.old, chosen.new):
        assert secret not in caplog.text
        assert secret not in str(refused.value)


async def test_without_a_next_key_a_revoked_key_pauses_at_once(case) -> None:
    chosen, sim = case
    sim.revoke(chosen.old)
    async with httpx.AsyncClient() as http:
        dest = chosen.destination(sim, http, {"api_key": chosen.old})
        with pytest.raises(DestinationAuthError):
            await dest.deliver(chosen.effect)
    assert [chosen.key_of(r) for r in sim.requests] == [chosen.old]


def test_activecampaign_still_reads_api_token_but_not_both_names() -> None:
    base = {"kind": "activecampaign", "base_url": "https://acct.api-us1.com"}
    assert ActiveCampaignSettings.model_validate({**base, "api_token": "t"}).api_key.get_secret_value() == "t"
    with pytest.raises(ValidationError, match="older name"):
        ActiveCampaignSettings.model_validate({**base, "api_token": "t", "api_key": "u"})


def test_mailchimp_keys_of_two_data_centres_are_refused() -> None:
    with pytest.raises(ValidationError, match="data centre us14 but next_api_key for us6"):
        MailchimpSettings(kind="mailchimp", list_id="l", api_key="a-us14", next_api_key="b-us6")
