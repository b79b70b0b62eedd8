"""Mailchimp Transactional (Mandrill): one templated email to one recipient, `messages/send-template`.

The API key travels in the JSON body (`key`), not in a header; `next_api_key` beside `api_key`
rotates it without a pause (`KeyRing` in base.py: when Mandrill answers `Invalid_Key`, whatever
the HTTP status, the other key is tried at once). A 200 is an array with one result
per recipient, and a recipient can still be refused in it (`status: rejected|invalid` with a
`reject_reason`: hard-bounce, unsub, spam, ...): that is a permanent failure naming the reason.
Errors are `{status: "error", code, name, message}`; Mandrill has long answered them with HTTP 500
whatever the cause, so the error's `name` decides the class, not the status alone.

Nothing deduplicates a send on Mandrill's side, so `send_template` is not idempotent: after a
crash left a send unknown it is parked for an operator rather than sent twice. The effect's
idempotency key rides along in `metadata.tidings_idempotency_key`, searchable in Mandrill.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from tidings.clock import Clock
from tidings.delivery.effects import SEND_TEMPLATE, Effect, Receipt
from tidings.destinations.base import Destination, DestinationSettings, KeyRing, handles
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError

# Errors whose cause a retry cannot fix, whatever HTTP status they came with.
_PERMANENT = frozenset(
    {
        "ValidationError",
        "Unknown_Template",
        "Unknown_Subaccount",
        "Unknown_Sender",
        "PaymentRequired",
        "Invalid_Template",
        "Invalid_Reject",
    }
)
_REFUSED = frozenset({"rejected", "invalid"})


class MailchimpTransactionalSettings(DestinationSettings):
    kind: Literal["mailchimp-transactional"]
    api_key: SecretStr
    next_api_key: SecretStr | None = None  # the key being rotated in
    from_email: str | None = None  # else the template's own sender
    from_name: str | None = None
    subaccount: str | None = None
    merge_language: Literal["mailchimp", "handlebars"] | None = None


class MailchimpTransactionalDestination(Destination[MailchimpTransactionalSettings]):
    kind = "mailchimp-transactional"
    settings_model = MailchimpTransactionalSettings
    idempotent_actions = frozenset()
    # Both official descriptions name this host; they disagree on the version (1.3 in the
    # Swagger 2.0 file, 1.4 in the OpenAPI 3.1 one): set base_url to use the other.
    default_base_url = "https://mandrillapp.com/api/1.3"

    def __init__(
        self,
        name: str,
        settings: MailchimpTransactionalSettings,
        http: httpx.AsyncClient,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name, settings, http, clock=clock)
        self.keys = KeyRing(
            name, self.kind, [("api_key", settings.api_key), ("next_api_key", settings.next_api_key)]
        )

    @handles(SEND_TEMPLATE)
    async def _send(self, effect: Effect) -> Receipt:
        body = self.body(effect)
        url = self.base_url + "/messages/send-template"
        response = await self.keys.send(
            lambda key: self.request("POST", url, json={**body, "key": key}), _refused
        )
        if response.status_code >= 300:
            self._fail(response)
        email = body["message"]["to"][0]["email"]
        result = _result_for(response, email)
        status = str(result.get("status") or "")
        if status in _REFUSED:
            reason = result.get("reject_reason") or status
            raise PermanentDeliveryError(
                f"mailchimp-transactional: {email} was {status}: {reason}", status=response.status_code
            )
        detail = {"status": status}
        if result.get("queued_reason"):
            detail["queued_reason"] = str(result["queued_reason"])
        remote = result.get("_id")
        return Receipt(
            remote_id=str(remote) if remote else None, status_code=response.status_code, detail=detail
        )

    def body(self, effect: Effect) -> dict[str, Any]:
        """The send-template request for `effect` (payload: email, name, template, variables ...).

        `variables` become the recipient's merge vars (`merge_vars` and `global_merge_vars` in
        Mandrill's own form are still read, and win over `variables` for the same name).
        """
        payload = effect.payload
        email = payload.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise PermanentDeliveryError("mailchimp-transactional: the recipient has no email address")
        template = payload.get("template") or payload.get("template_name")
        if not isinstance(template, str) or not template:
            raise PermanentDeliveryError("mailchimp-transactional: no template named (payload.template)")
        recipient: dict[str, Any] = {"email": email.strip(), "type": "to"}
        if payload.get("name"):
            recipient["name"] = str(payload["name"])
        message: dict[str, Any] = {
            "to": [recipient],
            "metadata": {"tidings_idempotency_key": effect.idempotency_key},
        }
        merge_vars = _merged(_vars(payload.get("variables")), _vars(payload.get("merge_vars")))
        if merge_vars:
            message["merge_vars"] = [{"rcpt": recipient["email"], "vars": merge_vars}]
        global_vars = _vars(payload.get("global_merge_vars"))
        if global_vars:
            message["global_merge_vars"] = global_vars
        settings = self.settings
        for key, value in (
            ("subject", payload.get("subject")),
            ("from_email", payload.get("from_email") or settings.from_email),
            ("from_name", payload.get("from_name") or settings.from_name),
            ("subaccount", settings.subaccount),
            ("merge_language", settings.merge_language),
        ):
            if value:
                message[key] = str(value)
        if payload.get("tags"):
            message["tags"] = [str(t) for t in payload["tags"]]
        return {
            "key": self.keys.key,
            "template_name": template,
            "template_content": [],
            "message": message,
        }

    def _fail(self, response: httpx.Response) -> None:
        error = _json(response)
        name = error.get("name") if isinstance(error, dict) else None
        if not isinstance(name, str):
            self.check(response)
            return
        text = f"{name}: {error.get('message', '')}".rstrip(": ")
        detail = f"{self.kind} answered {response.status_code}: {text}"
        if name == "Invalid_Key":
            raise DestinationAuthError(detail, status=response.status_code)
        if name in _PERMANENT:
            raise PermanentDeliveryError(detail, status=response.status_code)
        self.check(response, error_text=text)
        raise PermanentDeliveryError(detail, status=response.status_code)  # a 2xx "error"


def _refused(response: httpx.Response) -> bool:
    """Mandrill's answer to a key it does not accept: `Invalid_Key`, with any HTTP status."""
    if response.status_code in (401, 403):
        return True
    error = _json(response) if response.status_code >= 300 else None
    return isinstance(error, dict) and error.get("name") == "Invalid_Key"


def _merged(*groups: list[dict[str, str]]) -> list[dict[str, str]]:
    """Merge vars by name, later groups winning, in first-seen order."""
    out: dict[str, dict[str, str]] = {}
    for group in groups:
        for var in group:
            out[var["name"]] = var
    return list(out.values())


def _vars(value: Any) -> list[dict[str, str]]:
    """`{NAME: value}` (or Mandrill's own `[{name, content}]`) as merge vars with text content."""
    if isinstance(value, dict):
        items = [{"name": str(k), "content": v} for k, v in value.items()]
    elif isinstance(value, list):
        items = [dict(v) for v in value if isinstance(v, dict) and "name" in v]
    else:
        return []
    return [{"name": str(v["name"]), "content": _text(v.get("content"))} for v in items]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _result_for(response: httpx.Response, email: str) -> dict[str, Any]:
    results = _json(response)
    if not isinstance(results, list) or not results:
        raise PermanentDeliveryError(
            f"mailchimp-transactional: a 200 without a result per recipient: {response.text[:200]}",
            status=response.status_code,
        )
    for result in results:
        if isinstance(result, dict) and str(result.get("email", "")).lower() == email.lower():
            return result
    first = results[0]
    return first if isinstance(first, dict) else {}
