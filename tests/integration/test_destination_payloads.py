"""One payload per action, the same for every destination (docs/destinations/README.md).

Each destination is given exactly the conventional payload the flow engine produces and must
turn it into its vendor's request, which the vendor's simulator then accepts.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from aiosmtpd.controller import Controller

from tidings.delivery.effects import SEND_TEMPLATE, TRACK_EVENT, TRIGGER_JOURNEY, UPSERT_CONTACT, Effect
from tidings.destinations.activecampaign import ActiveCampaignDestination, ActiveCampaignSettings
from tidings.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from tidings.destinations.mailchimp import MailchimpDestination, MailchimpSettings
from tidings.destinations.mailchimp_transactional import (
    MailchimpTransactionalDestination,
    MailchimpTransactionalSettings,
)
from tidings.destinations.sendgrid import SendGridDestination, SendGridSettings
from tidings.destinations.smtp import SmtpDestination, SmtpSettings
from tidings.destinations.webhook import WebhookDestination, WebhookSettings
from tidings.testing import (
    ActiveCampaignSimulator,
    KlaviyoSimulator,
    MailchimpSimulator,
    MandrillSimulator,
    SendGridSimulator,
    WebhookSink,
)

# What the flow engine produces for each action.
TRACK = {
    "email": "ann@example.com",
    "phone": "+15005550006",
    "external_id": "cust-7",
    "profile_id": 7,
    "event": "Placed Order",
    "properties": {"order_id": "o-1", "total": 42.5, "items": ["a", "b"]},
    "occurred_at": "2026-03-01T10:00:00+00:00",
    "backfill": False,
}
SEND = {
    "email": "ann@example.com",
    "name": "Ann Lee",
    "template": "welcome",
    "variables": {"first_name": "Ann", "code": "A1", "items": [{"sku": "s1"}]},
    "subject": "Your code",
    "from_email": "news@example.com",
    "from_name": "News",
}
JOURNEY = {"email": "ann@example.com", "journey_id": 12, "step_id": 34}
CONTACT = {"profile_id": 7, "email": "ann@example.com", "phone": None, "fields": {}, "consent": {}}


def effect(action: str, payload: dict[str, Any], key: str = "flow-1:step-2") -> Effect:
    return Effect(id=1, destination="esp", action=action, idempotency_key=key, payload=payload, attempt=1)


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient() as client:
        yield client


# ---------------------------------------------------------------------------- track_event


async def test_klaviyo_track_event(http) -> None:
    with KlaviyoSimulator(["pk_k"]).running() as sim:
        dest = KlaviyoDestination(
            "esp", KlaviyoSettings(kind="klaviyo", base_url=sim.url, api_key="pk_k"), http
        )
        await dest.deliver(effect(TRACK_EVENT, TRACK))
        await dest.deliver(effect(TRACK_EVENT, {**TRACK, "backfill": True}, key="replay-1"))
    assert sim.invalid == []
    assert len(sim.accepted_events) == 2
    sent = json.loads(sim.requests[0].body)["data"]["attributes"]
    assert sent == {
        "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
        "profile": {
            "data": {
                "type": "profile",
                "attributes": {
                    "email": "ann@example.com",
                    "phone_number": "+15005550006",
                    "external_id": "cust-7",
                },
            }
        },
        "properties": TRACK["properties"],
        "time": "2026-03-01T10:00:00+00:00",
        "unique_id": "flow-1:step-2",  # the effect's idempotency key: Klaviyo dedupes on it
    }
    assert json.loads(sim.requests[1].body)["data"]["attributes"]["backfill"] is True


async def test_mailchimp_track_event(http) -> None:
    with MailchimpSimulator("k-us14").running() as sim:
        settings = MailchimpSettings(kind="mailchimp", base_url=sim.url, api_key="k-us14", list_id="l1")
        dest = MailchimpDestination("esp", settings, http)
        await dest.deliver(effect(UPSERT_CONTACT, CONTACT))
        await dest.deliver(effect(TRACK_EVENT, TRACK))
        await dest.deliver(effect(TRACK_EVENT, {**TRACK, "backfill": True}, key="replay-1"))
    live, replay = sim.events
    assert live.body == {
        "name": "Placed Order",
        "properties": {"order_id": "o-1", "total": "42.5", "items": '["a","b"]'},
        "is_syncing": False,
        "occurred_at": "2026-03-01T10:00:00+00:00",
    }
    assert replay.body["is_syncing"] is True


async def test_activecampaign_track_event_and_a_replay_is_not_sent(http) -> None:
    with ActiveCampaignSimulator("ac-k", actid="1", event_key="ek").running() as sim:
        settings = ActiveCampaignSettings(
            kind="activecampaign",
            base_url=sim.url,
            api_key="ac-k",
            actid="1",
            event_key="ek",
            events_url=f"{sim.url}/event",
        )
        dest = ActiveCampaignDestination("esp", settings, http)
        await dest.deliver(effect(TRACK_EVENT, TRACK))
        skipped = await dest.deliver(effect(TRACK_EVENT, {**TRACK, "backfill": True}, key="replay-1"))
    [request] = sim.requests  # the replay sent nothing: it would have started automations
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form["event"] == "Placed Order"
    assert json.loads(form["eventdata"]) == TRACK["properties"]
    assert json.loads(form["visit"]) == {"email": "ann@example.com"}
    assert sim.rejected == [] and len(sim.events) == 1
    assert skipped.detail["skipped"].startswith("backfill")


async def test_webhook_track_event_carries_the_payload_as_it_is(http) -> None:
    secret = "whsec_" + "dGlkaW5ncy10ZXN0LXNlY3JldC0zMi1ieXRlcyEhISE="
    with WebhookSink(secret).running() as sink:
        dest = WebhookDestination(
            "esp", WebhookSettings(kind="webhook", url=f"{sink.url}/in", secret=secret), http
        )
        await dest.deliver(effect(TRACK_EVENT, TRACK))
    received = sink.received["flow-1:step-2"]
    assert received["type"] == TRACK_EVENT and received["data"] == TRACK


# ---------------------------------------------------------------------------- send_template


async def test_sendgrid_send_template(http) -> None:
    with SendGridSimulator("SG.k").running() as sim:
        settings = SendGridSettings(
            kind="sendgrid", base_url=sim.url, api_key="SG.k", from_email="shop@x.com"
        )
        dest = SendGridDestination("esp", settings, http)
        receipt = await dest.deliver(effect(SEND_TEMPLATE, {**SEND, "template": "d-0123456789abcdef"}))
    assert [h.errors for h in sim.handled] == [[]]
    [sent] = sim.sent
    assert sent["template_id"] == "d-0123456789abcdef"
    assert sent["from"] == {"email": "news@example.com", "name": "News"}
    [personalization] = sent["personalizations"]
    assert personalization["to"] == [{"email": "ann@example.com", "name": "Ann Lee"}]
    # a dynamic template takes its subject from its own {{subject}}: it travels with the data
    assert personalization["dynamic_template_data"] == {**SEND["variables"], "subject": "Your code"}
    assert receipt.remote_id == sent["message_id"]


async def test_mailchimp_transactional_send_template(http) -> None:
    with MandrillSimulator("md-k", templates={"welcome"}).running() as sim:
        settings = MailchimpTransactionalSettings(
            kind="mailchimp-transactional", base_url=sim.url, api_key="md-k"
        )
        dest = MailchimpTransactionalDestination("esp", settings, http)
        await dest.deliver(effect(SEND_TEMPLATE, SEND))
        # Mandrill's own merge_vars still work, and win over variables of the same name
        await dest.deliver(effect(SEND_TEMPLATE, {**SEND, "merge_vars": {"code": "B2"}}, key="k2"))
    assert sim.invalid == 0
    first, second = (s.body for s in sim.sent)
    assert first["template_name"] == "welcome"
    message = first["message"]
    assert message["to"] == [{"email": "ann@example.com", "type": "to", "name": "Ann Lee"}]
    assert message["merge_vars"] == [
        {
            "rcpt": "ann@example.com",
            "vars": [
                {"name": "first_name", "content": "Ann"},
                {"name": "code", "content": "A1"},
                {"name": "items", "content": '[{"sku":"s1"}]'},
            ],
        }
    ]
    assert (message["subject"], message["from_email"], message["from_name"]) == (
        "Your code",
        "news@example.com",
        "News",
    )
    assert {v["name"]: v["content"] for v in second["message"]["merge_vars"][0]["vars"]}["code"] == "B2"


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


async def test_smtp_send_template(http, smtp_server) -> None:
    port, inbox = smtp_server
    settings = SmtpSettings.model_validate(
        {
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from_address": "Shop <shop@example.com>",
            "templates": {
                "welcome": {
                    "subject": "Welcome, {{ first_name }}",
                    "text": "Hello {{ first_name }}, code {{ code }}, {{ items[0].sku }}",
                }
            },
        }
    )
    dest = SmtpDestination("esp", settings, http)
    await dest.deliver(effect(SEND_TEMPLATE, SEND))
    without = {k: v for k, v in SEND.items() if k not in ("subject", "from_email", "from_name", "name")}
    await dest.deliver(effect(SEND_TEMPLATE, without, key="k2"))
    first, second = inbox.envelopes
    assert first.rcpt_tos == ["ann@example.com"] and first.mail_from == "news@example.com"
    mail = message_from_bytes(first.content, policy=policy.default)
    assert mail["Subject"] == "Your code"  # the payload's subject replaces the template's
    assert mail["From"] == "News <news@example.com>"
    assert mail["To"] == "Ann Lee <ann@example.com>"
    assert mail.get_content().strip() == "Hello Ann, code A1, s1"
    plain = message_from_bytes(second.content, policy=policy.default)
    assert (plain["Subject"], plain["From"], plain["To"]) == (
        "Welcome, Ann",
        "Shop <shop@example.com>",
        "ann@example.com",
    )


# ---------------------------------------------------------------------------- trigger_journey


async def test_mailchimp_trigger_journey(http) -> None:
    with MailchimpSimulator("k-us14").running() as sim:
        settings = MailchimpSettings(kind="mailchimp", base_url=sim.url, api_key="k-us14", list_id="l1")
        await MailchimpDestination("esp", settings, http).deliver(effect(TRIGGER_JOURNEY, JOURNEY))
    assert sim.triggers == [(12, 34, "ann@example.com")]
