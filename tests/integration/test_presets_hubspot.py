"""The hubspot preset: signed HubSpot events become canonical events and profiles (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from tests.conftest import fixture, inbox_rows
from tests.integration.test_hubspot import CONFIG, ENV, v3
from tidings.profiles.read import load, resolve
from tidings.store.schema import events

CREATION = fixture("hubspot/webhook_batch_contact_creation.json")  # official: contact 123 created
MIXED = fixture("hubspot/webhook_batch_mixed_CONSTRUCTED.json")["body"]
T0 = 1564113600000  # occurredAt of the fixtures, in milliseconds


# --------------------------------------------------------------------------- helpers

_ids = iter(range(1000, 10**6))


def change(contact: int, name: str, value: str, at: int = T0) -> dict[str, Any]:
    """A contact.propertyChange event as HubSpot sends one."""
    return {
        "eventId": next(_ids),
        "subscriptionId": 2881778,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": at,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": contact,
        "propertyName": name,
        "propertyValue": value,
        "changeSource": "CRM_UI",
    }


def happened(kind: str, contact: int, at: int = T0) -> dict[str, Any]:
    return {
        "eventId": next(_ids),
        "subscriptionId": 2881779,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": at,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": contact,
        "changeSource": "CRM",
    }


async def post(client: Any, clock: Any, batch: list[dict[str, Any]]) -> None:
    body = json.dumps(batch).encode()
    response = await client.post("/hooks/crm", content=body, headers=v3(body, clock.now()))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(batch)


def profile(tidings: Any, ref: str) -> Any:
    def read(conn: Any) -> Any:
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


def recorded(tidings: Any) -> list[Any]:
    return tidings.store.read_sync(
        lambda conn: list(conn.execute(select(events).order_by(events.c.inbox_id)))
    )


# --------------------------------------------------------------------------- tests


async def test_the_official_creation_event_makes_a_profile_for_the_contact(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, CREATION)
        await tidings.processor.drain()
        [created] = recorded(tidings)
        assert created.name == "Identify"
        assert created.occurred_at == datetime.fromtimestamp(T0 / 1000, UTC)  # occurredAt is in ms
        assert profile(tidings, "hubspot:contact:123").identities == ["hubspot:contact:123"]


async def test_the_mixed_batch_sets_traits_and_skips_the_deal(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, MIXED)
        await tidings.processor.drain()
        assert profile(tidings, "hubspot:contact:123").traits["lifecyclestage"] == "customer"
        assert profile(tidings, "hubspot:contact:124") is not None
        deal = next(r for r in inbox_rows(tidings) if r.topic == "deal.propertyChange")
        assert deal.status == "unmapped"
        assert "skipped" in deal.error
        assert [e.name for e in recorded(tidings)] == ["Identify", "Identify"]


async def test_an_email_change_joins_the_contact_to_its_email(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(
            client,
            clock,
            [
                happened("contact.creation", 123),
                change(123, "email", "Ann@Example.com", T0 + 1000),
                change(123, "firstname", "Ann", T0 + 1000),
                change(123, "lastname", "Lee", T0 + 1000),
                change(123, "phone", "+1 (212) 555-0100", T0 + 1000),
            ],
        )
        await tidings.processor.drain()
        contact = profile(tidings, "ann@example.com")
        assert contact.id == profile(tidings, "hubspot:contact:123").id
        assert set(contact.identities) == {
            "email:ann@example.com",
            "hubspot:contact:123",
            "phone:+12125550100",
        }
        assert contact.traits["email"] == "Ann@Example.com"
        assert contact.traits["first_name"] == "Ann"
        assert contact.traits["last_name"] == "Lee"
        assert "firstname" not in contact.traits  # renamed, not duplicated


async def test_the_newest_change_of_a_property_wins_whatever_the_arrival_order(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, [change(123, "lifecyclestage", "customer", T0 + 5000)])
        await tidings.processor.drain()
        await post(client, clock, [change(123, "lifecyclestage", "lead", T0)])  # late and older
        await tidings.processor.drain()
        assert profile(tidings, "hubspot:contact:123").traits["lifecyclestage"] == "customer"


async def test_opting_out_of_all_email_unsubscribes_and_unticking_does_not_resubscribe(
    running, clock
) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(client, clock, [change(123, "hs_email_optout", "true", T0)])
        await tidings.processor.drain()
        consent = profile(tidings, "hubspot:contact:123").consent["email"]
        assert consent["state"] == "unsubscribed"
        assert [e.name for e in recorded(tidings)] == ["Consent Changed"]

        await post(client, clock, [change(123, "hs_email_optout", "false", T0 + 60_000)])
        await tidings.processor.drain()
        assert profile(tidings, "hubspot:contact:123").consent["email"]["state"] == "unsubscribed"


async def test_a_gdpr_deletion_is_a_privacy_request_and_a_plain_deletion_is_not(running, clock) -> None:
    async with running(CONFIG, ENV) as (tidings, client):
        await post(
            client,
            clock,
            [happened("contact.privacyDeletion", 123), happened("contact.deletion", 124)],
        )
        await tidings.processor.drain()
        [request] = recorded(tidings)
        assert request.name == "Privacy Request"
        assert request.properties["kind"] == "erasure"
        assert request.identities == ["hubspot:contact:123"]
        deletion = next(r for r in inbox_rows(tidings) if r.topic == "contact.deletion")
        assert deletion.status == "unmapped"
