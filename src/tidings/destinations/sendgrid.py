"""SendGrid v3: Marketing Campaigns contacts (upsert, delete) and Mail Send with dynamic templates.

- `upsert_contact`: `PUT /v3/marketing/contacts`. SendGrid's reserved fields (`first_name`,
  `city`, ...) go at the top of the contact; every other vendor field is a custom field, sent under
  `custom_fields` keyed by its field id (`e1_T`), which `custom_field_ids` maps from the name used
  in `profile_sync`. A field that is neither is refused before sending. SendGrid answers 202 with
  a `job_id`: the import is queued, not done; the receipt keeps the job id.
- `send_template`: `POST /v3/mail/send` with `template_id` (the payload's `template`), one
  personalization with the recipient and its `dynamic_template_data` (the payload's `variables`;
  a `subject` goes in there too, since a dynamic template takes its subject from its own
  `{{subject}}`, not from the request), and the effect's idempotency key in the
  personalization's `custom_args` (the Event Webhook hands it back). 202, or 200 in sandbox mode;
  the `X-Message-Id` header is the receipt's remote id. SendGrid has no idempotency key, so a send
  whose outcome is unknown is not repeated by itself.
- `delete_contact`: the contact id is looked up by email (`POST .../contacts/search/emails`), then
  `DELETE /v3/marketing/contacts?ids=...` (202, a job). A contact SendGrid does not know is already
  deleted.

The key goes as `Authorization: Bearer`; `next_api_key` beside `api_key` rotates it without a
pause (`KeyRing` in base.py). Errors come as `{"errors": [{"field", "message"}]}`; their messages
are the error text. Rate limits are SendGrid's `X-RateLimit-*` headers: a 429 without
`Retry-After` waits until `X-RateLimit-Reset`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import httpx
from pydantic import SecretStr

from tidings.clock import Clock
from tidings.delivery.effects import DELETE_CONTACT, SEND_TEMPLATE, UPSERT_CONTACT, Effect, Receipt
from tidings.destinations.base import (
    Destination,
    DestinationSettings,
    KeyRing,
    handles,
    refused_credentials,
)
from tidings.exceptions import PermanentDeliveryError

# Fields every Marketing Campaigns contact has, set at the top of the contact (not custom fields).
RESERVED_FIELDS = frozenset(
    {
        "first_name",
        "last_name",
        "address_line_1",
        "address_line_2",
        "city",
        "state_province_region",
        "postal_code",
        "country",
        "alternate_emails",
        "phone_number_id",
        "external_id",
        "anonymous_id",
    }
)
IDENTIFIERS = ("email", "phone_number_id", "external_id", "anonymous_id")
IDEMPOTENCY_ARG = "tidings_idempotency_key"


class SendGridSettings(DestinationSettings):
    kind: Literal["sendgrid"]
    api_key: SecretStr  # sent as `Authorization: Bearer`
    next_api_key: SecretStr | None = None  # the key being rotated in
    sandbox: bool = False  # mail_settings.sandbox_mode: SendGrid validates and sends nothing
    list_ids: list[str] = []  # lists every upserted contact is added to
    custom_field_ids: dict[str, str] = {}  # vendor field name (as in profile_sync) -> field id
    from_email: str | None = None  # sender of send_template unless the effect names one
    from_name: str | None = None
    on_behalf_of: str | None = None  # a subuser to act as (`on-behalf-of` header)


class SendGridDestination(Destination[SendGridSettings]):
    kind = "sendgrid"
    settings_model = SendGridSettings
    # An upsert and a delete can be repeated harmlessly; a mail send cannot (no idempotency key).
    idempotent_actions = frozenset({UPSERT_CONTACT, DELETE_CONTACT})
    default_base_url: ClassVar[str] = "https://api.sendgrid.com"  # EU: https://api.eu.sendgrid.com
    # SendGrid publishes no numbers (they differ per endpoint and account); it reports them in
    # X-RateLimit-* headers and answers 429 beyond them. Set `limits:` to stay under yours.

    def __init__(
        self, name: str, settings: SendGridSettings, http: httpx.AsyncClient, *, clock: Clock | None = None
    ) -> None:
        super().__init__(name, settings, http, clock=clock)
        self.keys = KeyRing(
            name, self.kind, [("api_key", settings.api_key), ("next_api_key", settings.next_api_key)]
        )

    # ------------------------------------------------------------------ actions

    @handles(UPSERT_CONTACT)
    async def _upsert(self, effect: Effect) -> Receipt:
        contact = self.contact(effect.payload)
        body: dict[str, Any] = {"contacts": [contact]}
        if self.settings.list_ids:
            body["list_ids"] = list(self.settings.list_ids)
        response = await self._call("PUT", "/v3/marketing/contacts", json=body)
        job_id = _json(response).get("job_id")
        return self._receipt(response, remote_id=str(job_id) if job_id is not None else None)

    def contact(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The ContactRequest for an upsert_contact payload ({email, fields: {vendor field: value}})."""
        contact: dict[str, Any] = {}
        if payload.get("email"):
            contact["email"] = str(payload["email"]).strip().lower()
        custom: dict[str, Any] = {}
        unknown = []
        for name, value in (payload.get("fields") or {}).items():
            if value is None:
                continue
            if name in RESERVED_FIELDS:
                contact[name] = _reserved(name, value)
            elif name in self.settings.custom_field_ids:
                custom[self.settings.custom_field_ids[name]] = value
            else:
                unknown.append(name)
        if unknown:
            raise PermanentDeliveryError(
                f"sendgrid: unknown field(s) {', '.join(sorted(unknown))}: neither a reserved field "
                "nor in custom_field_ids"
            )
        if custom:
            contact["custom_fields"] = custom
        if not any(contact.get(key) for key in IDENTIFIERS):
            raise PermanentDeliveryError(
                "sendgrid: the contact has no identifier (email, phone_number_id, external_id, anonymous_id)"
            )
        return contact

    @handles(SEND_TEMPLATE)
    async def _send(self, effect: Effect) -> Receipt:
        body = self.mail(effect)
        response = await self._call("POST", "/v3/mail/send", json=body)
        return self._receipt(response, remote_id=response.headers.get("x-message-id"))

    def mail(self, effect: Effect) -> dict[str, Any]:
        """The Mail Send body for a send_template payload.

        {email, name?, template, variables?, subject?, from_email?, from_name?}; `template_id`
        and `data` are older names of `template` and `variables`, still read.
        """
        payload = effect.payload
        email = payload.get("email")
        template_id = payload.get("template") or payload.get("template_id")
        sender = payload.get("from_email") or self.settings.from_email
        missing = [
            what
            for what, value in (("email", email), ("template", template_id), ("from_email", sender))
            if not value
        ]
        if missing:
            raise PermanentDeliveryError(f"sendgrid: send_template needs {', '.join(missing)}")
        to: dict[str, Any] = {"email": str(email)}
        if payload.get("name"):
            to["name"] = str(payload["name"])
        personalization: dict[str, Any] = {
            "to": [to],
            # The message-level custom_args is declared a string in SendGrid's spec; the
            # personalization's is an object, carried to the Event Webhook all the same.
            "custom_args": {IDEMPOTENCY_ARG: effect.idempotency_key},
        }
        variables = payload.get("variables", payload.get("data"))
        if variables is not None and not isinstance(variables, dict):
            raise PermanentDeliveryError("sendgrid: send_template variables must be a mapping")
        data = dict(variables or {})
        if payload.get("subject") and "subject" not in data:
            data["subject"] = str(payload["subject"])  # for the template's {{subject}}
        if data:
            personalization["dynamic_template_data"] = data
        sender_obj: dict[str, Any] = {"email": str(sender)}
        sender_name = payload.get("from_name") or (
            None if payload.get("from_email") else self.settings.from_name
        )
        if sender_name:
            sender_obj["name"] = str(sender_name)
        body: dict[str, Any] = {
            "personalizations": [personalization],
            "from": sender_obj,
            "template_id": str(template_id),
        }
        if self.settings.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    @handles(DELETE_CONTACT)
    async def _delete(self, effect: Effect) -> Receipt:
        email = effect.payload.get("email")
        if not email:
            raise PermanentDeliveryError("sendgrid: delete_contact needs the contact's email")
        email = str(email).strip().lower()
        found = await self._call(
            "POST", "/v3/marketing/contacts/search/emails", json={"emails": [email]}, missing_ok=True
        )
        entry = (_json(found).get("result") or {}).get(email) or {}
        contact_id = (entry.get("contact") or {}).get("id") if isinstance(entry, dict) else None
        if found.status_code == 404 or not contact_id:
            # Nothing to erase. Caveat: a contact whose upsert job SendGrid has not run yet is
            # not searchable either (see docs/destinations/sendgrid.md).
            return Receipt(status_code=found.status_code, detail={"found": False, **_limits(found)})
        response = await self._call("DELETE", "/v3/marketing/contacts", params={"ids": contact_id})
        job_id = _json(response).get("job_id")
        return self._receipt(
            response,
            remote_id=str(job_id) if job_id is not None else None,
            contact_id=contact_id,
        )

    # ------------------------------------------------------------------ HTTP

    async def _call(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response:
        url = self.base_url + path

        async def call(key: str) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}"}
            if self.settings.on_behalf_of:
                headers["on-behalf-of"] = self.settings.on_behalf_of
            return await self.request(method, url, headers=headers, **kwargs)

        response = await self.keys.send(call, refused_credentials)
        if not (missing_ok and response.status_code == 404):
            self.check(response, error_text=error_text(response))
        return response

    def _receipt(self, response: httpx.Response, *, remote_id: str | None, **detail: Any) -> Receipt:
        return Receipt(
            remote_id=remote_id, status_code=response.status_code, detail={**detail, **_limits(response)}
        )


def error_text(response: httpx.Response) -> str | None:
    """SendGrid's `{"errors": [{"field", "message"}]}` as one line; None when the body is not that."""
    errors = _json(response).get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        message = str(error.get("message") or "").strip()
        field = error.get("field")
        if field and field != "null":
            message = f"{field}: {message}" if message else str(field)
        if message:
            parts.append(message)
    return "; ".join(parts) or None


def _reserved(name: str, value: Any) -> Any:
    if name == "alternate_emails":
        return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    return value if isinstance(value, str) else str(value)  # a postal code of 12345 is a string


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content) if response.content else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _limits(response: httpx.Response) -> dict[str, Any]:
    """SendGrid's rate-limit report, kept on the receipt."""
    out: dict[str, Any] = {}
    for header, key in (
        ("x-ratelimit-limit", "ratelimit_limit"),
        ("x-ratelimit-remaining", "ratelimit_remaining"),
        ("x-ratelimit-reset", "ratelimit_reset"),
    ):
        value = response.headers.get(header)
        if value is not None and value.isdigit():
            out[key] = int(value)
    return out
