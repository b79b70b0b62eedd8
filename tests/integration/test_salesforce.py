"""Salesforce outbound messages, end to end through HTTP into the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import inbox_rows, request_count
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError

ORG = "00D000000000001AAA"  # as the contracts README's example message carries it
CONFIG = """
sources:
  crm:
    kind: salesforce
    organization_ids: ["00D000000000001"]
"""
XML = {"content-type": "text/xml; charset=utf-8", "soapaction": '""'}
ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">\n'
    b" <soapenv:Body>\n"
    b'  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    b"</notificationsResponse>\n"
    b" </soapenv:Body>\n"
    b"</soapenv:Envelope>\n"
)


def contact(
    notification_id: str, record_id: str = "003000000000001AAA", email: str = "jane@example.com"
) -> str:
    return f"""
   <Notification>
    <Id>{notification_id}</Id>
    <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{record_id}</sf:Id>
     <sf:Email>{email}</sf:Email>
    </sObject>
   </Notification>"""


def message(*notifications: str, org: str = ORG, prologue: str = "") -> bytes:
    """The README's outbound message, holding the given Notification elements."""
    return f"""{prologue}<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
                  xmlns:xsd="http://www.w3.org/2001/XMLSchema"
                  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00D000000000001</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00D000000000001</PartnerUrl>{"".join(notifications)}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


def notification_id(n: int) -> str:
    return f"04l{n:012d}AAA"


def stored(row: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(row.payload)
    return result


def assert_ack(response: Any) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.content == ACK


@pytest.mark.parametrize("configured", ["00D000000000001", "00D000000000001AAA"], ids=["15-char", "18-char"])
async def test_the_documented_message_is_stored_and_acked(running, configured) -> None:
    config = CONFIG.replace("00D000000000001", configured)
    async with running(config) as (tidings, client):
        response = await client.post(
            "/hooks/crm", content=message(contact("04l000000000001AAA")), headers=XML
        )
        assert_ack(response)
        [row] = inbox_rows(tidings)
        assert (row.dedupe_key, row.topic, row.status) == (
            "04l000000000001AAA",
            "salesforce:Contact",
            "pending",
        )
        assert stored(row) == {
            "organization_id": ORG,
            "action_id": "04k000000000001AAA",
            "notification_id": "04l000000000001AAA",
            "sobject_type": "Contact",
            "fields": {"Id": "003000000000001AAA", "Email": "jane@example.com"},
        }


async def test_nil_fields_are_null_and_nothing_else_is_lost(running) -> None:
    notification = """
   <Notification>
    <Id>04l000000000002AAA</Id>
    <sObject xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>00Q000000000001AAA</sf:Id>
     <sf:Phone xsi:nil="true"/>
     <sf:Company></sf:Company>
     <sf:Description>caf\u00e9 &amp; \u2615</sf:Description>
    </sObject>
   </Notification>"""
    async with running(CONFIG) as (tidings, client):
        assert_ack(await client.post("/hooks/crm", content=message(notification), headers=XML))
        [row] = inbox_rows(tidings)
        assert row.topic == "salesforce:Lead"
        assert stored(row)["fields"] == {
            "Id": "00Q000000000001AAA",
            "Phone": None,
            "Company": "",
            "Description": "caf\u00e9 & \u2615",
        }


async def test_a_message_of_100_notifications_is_100_items(running) -> None:
    body = message(*(contact(notification_id(n), email=f"c{n}@example.com") for n in range(100)))
    async with running(CONFIG) as (tidings, client):
        assert_ack(await client.post("/hooks/crm", content=body, headers=XML))
        rows = inbox_rows(tidings)
        assert [r.dedupe_key for r in rows] == [notification_id(n) for n in range(100)]
        assert stored(rows[99])["fields"]["Email"] == "c99@example.com"
        assert request_count(tidings) == 1


async def test_a_redelivery_stores_only_the_notifications_not_seen_before(running) -> None:
    first = message(contact(notification_id(1)), contact(notification_id(2)))
    # Salesforce re-batches queued notifications: a retry may mix old and new ones
    retry = message(contact(notification_id(2)), contact(notification_id(3)), contact(notification_id(1)))
    async with running(CONFIG) as (tidings, client):
        assert_ack(await client.post("/hooks/crm", content=first, headers=XML))
        assert_ack(await client.post("/hooks/crm", content=retry, headers=XML))
        assert [r.dedupe_key for r in inbox_rows(tidings)] == [notification_id(n) for n in (1, 2, 3)]
        # a full duplicate is acked the same way, or Salesforce would retry it for 24 hours
        assert_ack(await client.post("/hooks/crm", content=first, headers=XML))
        assert len(inbox_rows(tidings)) == 3


@pytest.mark.parametrize(
    ("org", "code"),
    [
        ("00D000000000002AAA", "unknown_organization"),
        ("00d000000000001AAA", "unknown_organization"),  # ids are case-sensitive
        ("", "unknown_organization"),
    ],
    ids=["other-org", "other-case", "empty"],
)
async def test_an_organization_not_configured_is_401_and_stores_nothing(running, org, code) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post(
            "/hooks/crm", content=message(contact(notification_id(1)), org=org), headers=XML
        )
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert request_count(tidings) == 0


async def test_a_message_without_organization_is_401(running) -> None:
    body = message(contact(notification_id(1))).replace(
        b"<OrganizationId>00D000000000001AAA</OrganizationId>", b""
    )
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=XML)
        assert response.status_code == 401
        assert response.json()["error"] == "missing_organization"


def _laughs() -> str:
    """The classic billion-laughs prologue: &lol9; would expand to 10**9 "lol"s."""
    entities = ['<!ENTITY lol "lol">']
    for level in range(1, 10):
        previous = f"lol{level - 1}" if level > 1 else "lol"
        entities.append(f'<!ENTITY lol{level} "{("&" + previous + ";") * 10}">')
    return '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n' + "\n".join(entities) + "\n]>\n"


BILLION_LAUGHS = _laughs()
XXE = '<?xml version="1.0"?>\n<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'


@pytest.mark.parametrize(
    ("prologue", "email"),
    [(BILLION_LAUGHS, "&lol9;"), (XXE, "&xxe;")],
    ids=["billion-laughs", "xxe"],
)
async def test_entity_tricks_are_refused_unexpanded_even_from_the_right_org(running, prologue, email) -> None:
    body = message(contact(notification_id(1), email=email), prologue=prologue)
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=XML)
        assert response.status_code == 400
        assert response.json()["error"] == "forbidden_xml"
        assert "root:" not in response.text and "lollol" not in response.text
        assert request_count(tidings) == 0


async def test_a_body_that_is_not_xml_is_400(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post(
            "/hooks/crm", content=message(contact(notification_id(1)))[:-20], headers=XML
        )
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_xml"
        assert request_count(tidings) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (message(), "no Notification"),
        (message(contact("not-an-id")), "no valid Id"),
        (message(contact(notification_id(1)).replace('xsi:type="sf:Contact" ', "")), "xsi:type"),
        (
            message(contact(notification_id(1))).replace(b"notifications", b"somethingElse"),
            "not an outbound message",
        ),
    ],
    ids=["empty", "bad-id", "untyped-sobject", "other-operation"],
)
async def test_an_authentic_envelope_that_is_not_notifications_is_stored_flagged(
    running, body, reason
) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/crm", content=body, headers=XML)
        assert_ack(response)
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"
        assert reason in row.error


async def test_json_is_refused_before_reading(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/crm", json={"OrganizationId": ORG})
        assert response.status_code == 415
        assert request_count(tidings) == 0


@pytest.mark.parametrize(
    ("ids", "message_part"),
    [("[]", "at least one organization id"), ('["001000000000001"]', "not a Salesforce organization id")],
)
def test_organization_ids_are_checked_when_the_config_loads(ids, message_part) -> None:
    with pytest.raises(ConfigurationError, match=message_part):
        parse_settings(f"sources:\n  crm:\n    kind: salesforce\n    organization_ids: {ids}\n", "t.yaml", {})
