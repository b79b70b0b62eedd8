"""Salesforce outbound messages: SOAP 1.1 notifications pushed by workflow rules and flows.

There is no signature. What ties a message to your org is its `OrganizationId`, checked
against the configured ids; since that id is not a secret, the guide recommends adding a
client certificate or IP allow-list at the proxy. Because the id sits inside the body, the body
is parsed before it is authenticated, with defusedxml and DTDs forbidden outright (a SOAP
message must not carry one), so entity-expansion and external-entity tricks fail before any
expansion. One message holds up to 100 notifications; each is an item keyed on its
notification `Id`, which Salesforce keeps across re-deliveries (and re-batching) of it.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException
from pydantic import field_validator

from tidings.exceptions import AuthenticationFailed, MalformedPayload
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    Outcome,
    Receiver,
    Reception,
    Reply,
    SourceSettings,
    compact,
)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">\n'
    b" <soapenv:Body>\n"
    b'  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    b"</notificationsResponse>\n"
    b" </soapenv:Body>\n"
    b"</soapenv:Envelope>\n"
)

_ORG_ID = re.compile(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?")
_RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_SOBJECT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


class SalesforceSettings(SourceSettings):
    kind: Literal["salesforce"]
    organization_ids: list[str]

    @field_validator("organization_ids")
    @classmethod
    def _org_ids(cls, ids: list[str]) -> list[str]:
        if not ids:
            raise ValueError("at least one organization id is required")
        for org in ids:
            if not _ORG_ID.fullmatch(org):
                raise ValueError(
                    f"{org!r} is not a Salesforce organization id (00D then 12 or 15 letters or digits, "
                    "as shown in Setup > Company Information)"
                )
        return ids


class SalesforceReceiver(Receiver[SalesforceSettings]):
    """Organization ids are compared on their first 15 characters, case-sensitively.

    The 18-character form is the 15-character (case-sensitive) id plus three characters that
    only encode its capitalisation, so both forms name the same org by their first 15: Setup
    shows the 15-character one, messages carry the 18-character one, and either may be
    configured.

    Only `text/xml` is accepted: outbound messages are SOAP 1.1, which is always sent so;
    `application/soap+xml` is SOAP 1.2, which Salesforce never sends.
    """

    kind = "salesforce"
    settings_model = SalesforceSettings
    media_types = frozenset({"text/xml"})
    kept_headers = ("content-type", "soapaction", "user-agent")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._orgs = [org[:15].encode() for org in self.settings.organization_ids]

    def receive(self, request: InboundRequest) -> Reception:
        root = _parse(request.body)
        self._authenticate(root)
        envelope_body = root.find(_q(SOAP_ENV, "Body")) if root.tag == _q(SOAP_ENV, "Envelope") else None
        messages = [] if envelope_body is None else envelope_body.findall(_q(OUTBOUND, "notifications"))
        if len(messages) != 1:
            return self.flag(
                request, "not an outbound message: no soapenv:Envelope/soapenv:Body/notifications"
            )
        items = _items(messages[0])
        if isinstance(items, str):
            return self.flag(request, items)
        return Reception(items=items, headers=self.keep_headers(request))

    def reply(self, reception: Reception, outcome: Outcome) -> Reply:
        """The SOAP Ack, for new, duplicate and flagged messages alike: each is safely stored, and
        anything but this Ack makes Salesforce retry the message for up to 24 hours."""
        return Reply(status=200, body=ACK, media_type="text/xml")

    def _authenticate(self, root: Element) -> None:
        presented = [(el.text or "").strip() for el in root.iter(_q(OUTBOUND, "OrganizationId"))]
        if not presented:
            raise AuthenticationFailed("the message carries no OrganizationId", code="missing_organization")
        known = [self._knows(org) for org in presented]  # every id checked: no short-circuit
        if not all(known):
            unknown = next(org for org, ok in zip(presented, known, strict=True) if not ok)
            raise AuthenticationFailed(
                f"OrganizationId {unknown[:18]!r} is not one of this source's organization_ids",
                code="unknown_organization",
            )

    def _knows(self, org: str) -> bool:
        shape_ok = _ORG_ID.fullmatch(org) is not None
        return signing.any_match(self._orgs, [org[:15].encode()]) and shape_ok


def _parse(body: bytes) -> Element:
    """The document, or 400: not XML (it cannot be authenticated, so nothing is stored)."""
    try:
        root: Element = safe_xml.fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise MalformedPayload(
            f"XML with a DTD or entity declarations is refused unread ({type(exc).__name__})",
            code="forbidden_xml",
        ) from exc
    except ParseError as exc:
        raise MalformedPayload(f"body is not well-formed XML: {exc}", code="malformed_xml") from exc
    return root


def _items(message: Element) -> list[Item] | str:
    """One item per Notification, or why the message cannot be read as notifications."""
    org = _text(message.find(_q(OUTBOUND, "OrganizationId")))
    action = _text(message.find(_q(OUTBOUND, "ActionId")))
    if org is None:
        return "notifications has no OrganizationId of its own"
    notifications = message.findall(_q(OUTBOUND, "Notification"))
    if not notifications:
        return "the message holds no Notification"
    items = []
    for index, notification in enumerate(notifications):
        notification_id = _text(notification.find(_q(OUTBOUND, "Id")))
        if notification_id is None or not _RECORD_ID.fullmatch(notification_id):
            return f"Notification #{index} has no valid Id"
        sobject = notification.find(_q(OUTBOUND, "sObject"))
        if sobject is None:
            return f"Notification {notification_id} has no sObject"
        sobject_type = (sobject.get(_q(XSI, "type")) or "").rpartition(":")[2]
        if not _SOBJECT_TYPE.fullmatch(sobject_type):
            return f"Notification {notification_id} has no valid sObject xsi:type"
        payload = {
            "organization_id": org,
            "action_id": action,
            "notification_id": notification_id,
            "sobject_type": sobject_type,
            "fields": _fields(sobject),
        }
        items.append(
            Item(keys=(notification_id,), topic=f"salesforce:{sobject_type}", payload=compact(payload))
        )
    return items


def _text(element: Element | None) -> str | None:
    return None if element is None else (element.text or "").strip()


def _fields(parent: Element) -> dict[str, Any]:
    """Child elements by local name: nil is null, text stays text (types live in the WSDL),
    nested elements become objects, and a repeated name becomes a list."""
    fields: dict[str, Any] = {}
    for child in parent:
        name = child.tag.rpartition("}")[2]
        value: Any
        if child.get(_q(XSI, "nil")) in ("true", "1"):
            value = None
        elif len(child):
            value = _fields(child)
        else:
            value = child.text or ""
        if name in fields:
            previous = fields[name]
            fields[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[name] = value
    return fields
