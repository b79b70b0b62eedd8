"""Any SMTP server: renders a template from the configuration and sends it with aiosmtplib.

Templates are Jinja2 (`{{ first_name }}`, `{% for item in cart_items %}`), sandboxed, filled from
the effect's variables; in the HTML part every value is HTML-escaped. A variable the template
uses but the effect lacks is a permanent error, not a blank in a customer's mail.

The Message-ID is derived from the effect's idempotency key, so a repeated send is recognisable
(mail clients and some servers collapse duplicates with one Message-ID), but SMTP has no
idempotency: `send_template` is not idempotent, and one whose outcome is unknown after a crash
goes to the dead letters for an operator instead of being sent again.

Errors: a 4xx reply is temporary (retried), a 5xx reply permanent, a refused login pauses the
destination, a refused or dropped connection and timeouts are retried. With `starttls: true`
(the default) a server that does not offer STARTTLS is refused: credentials and mail are never
sent in the clear unless `starttls: false` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Any, Literal

import aiosmtplib
import httpx
from pydantic import Field, SecretStr, model_validator

from tidings import templating
from tidings.clock import Clock
from tidings.configmodel import ConfigModel
from tidings.delivery.effects import SEND_TEMPLATE, Effect, Receipt
from tidings.destinations.base import Destination, DestinationSettings, handles
from tidings.exceptions import (
    DestinationAuthError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)


class SmtpTemplate(ConfigModel):
    subject: str
    text: str
    html: str | None = None


class SmtpSettings(DestinationSettings):
    kind: Literal["smtp"]
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    starttls: bool = True
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None  # PEM bundle to trust (a private CA); the system's by default
    from_address: str
    templates: dict[str, SmtpTemplate] = {}

    @model_validator(mode="after")
    def _consistent(self) -> SmtpSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        for name, template in self.templates.items():
            for part, text in (
                ("subject", template.subject),
                ("text", template.text),
                ("html", template.html),
            ):
                if text is not None:
                    try:
                        templating.check(text)
                    except templating.TemplateProblem as exc:
                        raise ValueError(f"template {name!r}: {part}: {exc}") from exc
        return self


class SmtpDestination(Destination[SmtpSettings]):
    kind = "smtp"
    settings_model = SmtpSettings
    idempotent_actions = frozenset[str]()  # SMTP cannot tell a repeat from a new mail

    def __init__(
        self, name: str, settings: SmtpSettings, http: httpx.AsyncClient, *, clock: Clock | None = None
    ) -> None:
        super().__init__(name, settings, http, clock=clock)  # the HTTP client is unused: this is SMTP

    @handles(SEND_TEMPLATE)
    async def _send(self, effect: Effect) -> Receipt:
        message = self.compose(effect)
        recipient = parseaddr(str(message["To"]))[1]
        settings = self.settings
        try:
            refused, reply = await self._transmit(message)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DestinationAuthError(
                f"smtp login refused: {exc.code} {exc.message}", status=exc.code
            ) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise _classified(first.code, f"refused {first.recipient}: {first.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _classified(exc.code, exc.message) from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise RetryableDeliveryError(f"smtp: timed out ({exc})") from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as exc:
            raise RetryableDeliveryError(f"smtp: {exc}") from exc
        except aiosmtplib.SMTPException as exc:
            if settings.starttls and "STARTTLS" in str(exc).upper():
                raise PermanentDeliveryError(
                    f"smtp: {settings.host}:{settings.port} does not offer STARTTLS, and starttls is "
                    "on; use a server that does, or set starttls: false if the link is trusted"
                ) from exc
            raise PermanentDeliveryError(f"smtp: {exc}") from exc
        except ssl.SSLError as exc:
            raise PermanentDeliveryError(f"smtp: TLS failed: {exc}") from exc
        except OSError as exc:  # refused, unreachable, reset
            raise RetryableDeliveryError(f"smtp: {type(exc).__name__}: {exc}") from exc
        if recipient in refused:  # only possible with several recipients; kept for completeness
            rejected = refused[recipient]
            raise _classified(rejected.code, f"refused {recipient}: {rejected.message}")
        return Receipt(remote_id=str(message["Message-ID"]), detail={"reply": reply})

    async def _transmit(self, message: EmailMessage) -> tuple[dict[str, Any], str]:
        """One SMTP session for one message: connect (STARTTLS), log in, send, say goodbye."""
        settings = self.settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            start_tls=settings.starttls,
            timeout=settings.timeout.total_seconds(),
            cert_bundle=settings.ca_file,
        )
        await client.connect()  # on failure aiosmtplib closes the (still plain) connection
        connection = client.transport  # the TLS one, after STARTTLS
        try:
            if settings.username and settings.password:
                await client.login(settings.username, settings.password.get_secret_value())
            refused, reply = await client.send_message(message)
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()  # the message is accepted: a failed goodbye changes nothing
            return refused, reply
        finally:
            # Cut the line rather than wait for the server's TLS close_notify: the session is over,
            # and a graceful TLS close can outlive the task that opened it (a socket left open).
            if isinstance(connection, asyncio.Transport):
                connection.abort()

    def compose(self, effect: Effect) -> EmailMessage:
        """The mail for a send_template payload.

        {email (or to), name?, template, variables, subject?, from_email?, from_name?}: a
        `subject` replaces the template's (as given, not rendered); `from_*` replace the
        configured sender (the relay must allow that address).
        """
        payload = effect.payload
        name = payload.get("template")
        template = self.settings.templates.get(str(name))
        if template is None:
            known = ", ".join(sorted(self.settings.templates)) or "none"
            raise PermanentDeliveryError(f"smtp: no template {name!r} (configured: {known})")
        to = payload.get("to") or payload.get("email")
        if not isinstance(to, str) or "@" not in to:
            raise PermanentDeliveryError("smtp: the effect names no recipient address (to)")
        variables = payload.get("variables") or {}
        if not isinstance(variables, dict):
            raise PermanentDeliveryError("smtp: variables must be a mapping")
        sender = self.settings.from_address
        if payload.get("from_email") or payload.get("from_name"):
            configured_name, configured_address = parseaddr(sender)
            sender = formataddr(
                (
                    str(payload.get("from_name") or configured_name),
                    str(payload.get("from_email") or configured_address),
                )
            )
        subject = payload.get("subject") or render(template.subject, variables, what=f"{name}.subject")
        message = EmailMessage()
        try:
            message["From"] = sender
            message["To"] = Address(str(payload["name"]), addr_spec=to) if payload.get("name") else to
        except (ValueError, IndexError, HeaderParseError) as exc:
            raise PermanentDeliveryError(f"smtp: an address is malformed: {exc}") from exc
        message["Subject"] = str(subject).replace("\n", " ")
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id(effect.idempotency_key, sender)
        message.set_content(render(template.text, variables, what=f"{name}.text"))
        if template.html is not None:
            message.add_alternative(
                render(template.html, variables, what=f"{name}.html", escape=True), subtype="html"
            )
        return message


def render(text: str, variables: dict[str, Any], *, what: str, escape: bool = False) -> str:
    """Fill the template; in HTML every value is escaped."""
    try:
        return templating.render(text, variables, html=escape)
    except templating.TemplateProblem as exc:
        raise PermanentDeliveryError(f"smtp: template {what}: {exc}") from exc


def message_id(idempotency_key: str, from_address: str) -> str:
    """The same key always gives the same Message-ID (a hash: keys may hold any characters)."""
    domain = from_address.rpartition("@")[2].strip(" >") or "tidings.invalid"
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}.tidings@{domain}>"


def _classified(code: int, text: str) -> RetryableDeliveryError | PermanentDeliveryError:
    detail = f"smtp answered {code}: {text}"
    if 400 <= code < 500:
        return RetryableDeliveryError(detail, status=code)
    return PermanentDeliveryError(detail, status=code)
