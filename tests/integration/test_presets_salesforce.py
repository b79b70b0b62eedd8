"""The salesforce preset: outbound messages about Contacts and Leads become profiles (SQLite and PostgreSQL).

Messages are CONSTRUCTED after the contracts README's example outbound message (the receiver
tests' `message()`), with the fields an outbound message for a Contact or Lead would be set up to
send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any
from xml.sax.saxutils import escape

from sqlalchemy import select

from tests.conftest import inbox_rows
from tests.integration.test_salesforce import CONFIG, XML, assert_ack, contact, message
from tidings.profiles.read import load, resolve
from tidings.store.schema import events

CONTACT_ID = "0035g00000ABCDeAAH"
LEAD_ID = "00Q5g00000XYZabEAH"
_notifications = count(1)


def notification(sobject: str, **fields: str | None) -> str:
    """One Notification of `sobject` holding `fields` (None: sent as xsi:nil)."""
    body = "".join(
        f'\n     <sf:{name} xsi:nil="true"/>'
        if value is None
        else f"\n     <sf:{name}>{escape(value)}</sf:{name}>"
        for name, value in fields.items()
    )
    return f"""
   <Notification>
    <Id>04l{next(_notifications):012d}AAA</Id>
    <sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{body}
    </sObject>
   </Notification>"""


def jane(**fields: str | None) -> str:
    return notification(
        "Contact",
        **{
            "Id": CONTACT_ID,
            "Email": "Jane.Doe@Example.com",
            "FirstName": "Jane",
            "LastName": "Doe",
            "Phone": "(415) 555-0132",
            "HasOptedOutOfEmail": "false",
            "LastModifiedDate": "2026-03-01T10:00:00.000Z",
            **fields,
        },
    )


async def post(client: Any, *notifications: str) -> None:
    assert_ack(await client.post("/hooks/crm", content=message(*notifications), headers=XML))


def profile(tidings: Any, ref: str) -> Any:
    def read(conn: Any) -> Any:
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


def recorded(tidings: Any) -> list[Any]:
    return tidings.store.read_sync(
        lambda conn: list(conn.execute(select(events).order_by(events.c.inbox_id)))
    )


async def test_the_readme_message_identifies_the_contact(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, contact("04l000000000001AAA"))
        await tidings.processor.drain()
        [identify] = recorded(tidings)
        assert identify.name == "Identify"
        jane_ = profile(tidings, "jane@example.com")
        assert set(jane_.identities) == {"email:jane@example.com", "salesforce:contact:003000000000001AAA"}
        assert jane_.traits == {"email": "jane@example.com"}


async def test_a_contact_becomes_a_profile_with_its_fields(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, jane())
        await tidings.processor.drain()
        [identify] = recorded(tidings)
        assert identify.occurred_at == datetime(2026, 3, 1, 10, tzinfo=UTC)  # LastModifiedDate
        person = profile(tidings, f"salesforce:contact:{CONTACT_ID}")
        assert set(person.identities) == {
            "email:jane.doe@example.com",
            "phone:+14155550132",
            f"salesforce:contact:{CONTACT_ID}",
        }
        assert person.traits["first_name"] == "Jane"
        assert person.traits["last_name"] == "Doe"
        assert person.traits["phone"] == "(415) 555-0132"
        assert "email" not in person.consent  # not opted out says nothing about opting in


async def test_email_opt_out_unsubscribes(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, jane(HasOptedOutOfEmail="true"))
        await tidings.processor.drain()
        consent = profile(tidings, "jane.doe@example.com").consent["email"]
        assert consent["state"] == "unsubscribed"
        assert consent["at"].startswith("2026-03-01T10:00:00")


async def test_a_late_older_notification_never_overwrites_a_newer_one(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, jane(LastName="Smith", LastModifiedDate="2026-03-02T09:00:00.000Z"))
        await tidings.processor.drain()
        await post(client, jane(LastName="Doe"))  # delivered out of order: modified a day earlier
        await tidings.processor.drain()
        assert profile(tidings, f"salesforce:contact:{CONTACT_ID}").traits["last_name"] == "Smith"


async def test_without_last_modified_date_the_system_modstamp_or_the_arrival_time_is_used(
    running, clock
) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(
            client,
            jane(LastModifiedDate=None, SystemModstamp="2026-03-05T08:30:00.000Z"),
            notification("Contact", Id="0035g00000ZZZZZAAA", Email="bo@example.com"),
        )
        await tidings.processor.drain()
        stamped, bare = recorded(tidings)
        assert stamped.occurred_at == datetime(2026, 3, 5, 8, 30, tzinfo=UTC)
        assert bare.occurred_at == clock.now()


async def test_a_lead_and_the_contact_it_was_converted_to_are_one_profile(running) -> None:
    lead = notification(
        "Lead",
        Id=LEAD_ID,
        Email="jane.doe@work.example",
        Company="Acme",
        Status="Working - Contacted",
        HasOptedOutOfEmail="false",
        LastModifiedDate="2026-02-01T00:00:00.000Z",
    )
    converted = notification(
        "Lead",
        Id=LEAD_ID,
        IsConverted="true",
        ConvertedContactId=CONTACT_ID,
        LastModifiedDate="2026-03-01T11:00:00.000Z",
    )
    async with running(CONFIG) as (tidings, client):
        await post(client, lead)
        await post(client, jane())
        await tidings.processor.drain()
        assert profile(tidings, f"salesforce:lead:{LEAD_ID}").traits["company"] == "Acme"
        assert (
            profile(tidings, f"salesforce:lead:{LEAD_ID}").id != profile(tidings, "jane.doe@example.com").id
        )

        await post(client, converted)
        await tidings.processor.drain()
        person = profile(tidings, f"salesforce:lead:{LEAD_ID}")
        assert person.id == profile(tidings, "jane.doe@example.com").id
        assert person.traits["company"] == "Acme"
        assert person.traits["lead_status"] == "Working - Contacted"
        assert person.traits["first_name"] == "Jane"
        assert len(person.merged_from) == 1


async def test_other_objects_stay_unmapped(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, notification("Account", Id="0015g00000AAAAAAAA", Name="Acme"))
        await tidings.processor.drain()
        [row] = inbox_rows(tidings)
        assert row.status == "unmapped"
        assert "salesforce:Account" in row.error
