"""Sandbox mode: the user's own config, with every destination replaced by its local simulator.

`sandbox: true` in tidings.yaml (or `tidings serve --sandbox`) runs everything as configured,
sources, mappings, profiles, flows, the outbox and the dispatcher, but each destination's
`base_url` (or `url`, `events_url`, SMTP host) points at a simulator from `tidings.testing`
served on 127.0.0.1, which accepts the configured credentials. Nothing reaches a vendor; every
request the simulators receive is kept here (destination, method, path, body, status, time), to
be read with `recorded(...)` by `GET /api/v1/sandbox/requests` and the dashboard.

The simulators' ports are taken when the settings are rewritten (so destinations are built with
their final URLs) and served from `start()` to `stop()`, which `Tidings` calls with its own
lifecycle. The recordings live in the memory of the process that delivers (the last
`MAX_RECORDED`); with `--role ingest` and `--role worker` apart, ask the worker.

Credentials never appear in a recording: headers are not kept, and body fields that carry a key
(Mandrill's `key`, ActiveCampaign's event `key`, OAuth's `client_secret`, ...) are masked.
"""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import uvicorn
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.clock import Clock, SystemClock
from tidings.config import Settings
from tidings.destinations.activecampaign import ActiveCampaignSettings
from tidings.destinations.base import DestinationSettings
from tidings.destinations.klaviyo import KlaviyoSettings
from tidings.destinations.mailchimp import MailchimpSettings
from tidings.destinations.mailchimp_transactional import MailchimpTransactionalSettings
from tidings.destinations.sendgrid import SendGridSettings
from tidings.destinations.smtp import SmtpSettings
from tidings.destinations.webhook import WebhookSettings
from tidings.exceptions import TidingsError
from tidings.testing import (
    ActiveCampaignSimulator,
    KlaviyoSimulator,
    MailchimpSimulator,
    MandrillSimulator,
    SendGridSimulator,
    Simulator,
    WebhookSink,
)

if TYPE_CHECKING:
    from tidings.app import Tidings

MAX_RECORDED = 10_000  # per process; the oldest are dropped first
MAX_BODY = 256 * 1024  # characters of a body kept as text
MASK = "********"
# Body fields that carry a credential (top level of a JSON or form body).
SECRET_FIELDS = frozenset(
    {"key", "api_key", "apikey", "client_secret", "refresh_token", "access_token", "code", "password"}
)


class SandboxError(TidingsError):
    """The sandbox cannot answer that."""


class NotInSandbox(SandboxError):
    """tidings is not running in sandbox mode."""


class UnknownSandboxDestination(SandboxError):
    """No such destination in the sandbox."""


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """One request a simulator received in place of a vendor."""

    id: int
    destination: str  # its name in tidings.yaml
    kind: str  # klaviyo, sendgrid, ..., smtp
    method: str  # HTTP method; SMTP for a mail
    path: str  # with the query string, if any; DATA for a mail
    body: Any  # parsed JSON, form fields as a dict, else text; a mail as from/to/subject/text/html
    status: int | None  # the simulator's answer (250 for an accepted mail); None if none was sent
    at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "destination": self.destination,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "status": self.status,
            "at": self.at.isoformat(),
        }


class Tape:
    """What the simulators received, in order; written from their threads."""

    def __init__(self, clock: Clock, size: int = MAX_RECORDED) -> None:
        self.clock = clock
        self._entries: deque[SandboxRequest] = deque(maxlen=size)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, destination: str, kind: str, method: str, path: str, body: Any, status: int | None) -> None:
        with self._lock:
            self._entries.append(
                SandboxRequest(
                    next(self._ids), destination, kind, method, path, body, status, self.clock.now()
                )
            )

    def entries(self) -> list[SandboxRequest]:
        with self._lock:
            return list(self._entries)


# --------------------------------------------------------------------------- stand-ins


def _reserve() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1, served later (the port is known now)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class _HttpStandIn:
    """A simulator served on a port reserved up front, its traffic taped."""

    def __init__(self, name: str, kind: str, simulator: Simulator, tape: Tape) -> None:
        self.name, self.kind, self.simulator, self.tape = name, kind, simulator, tape
        self._sock = _reserve()
        simulator.port = self._sock.getsockname()[1]  # its `url` is right from now on
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        app = _taped(self.simulator.app(), self._record)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"tidings-sandbox-{self.name}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TidingsError(f"sandbox: the {self.kind} simulator for {self.name!r} did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _record(self, method: str, path: str, content_type: str, body: bytes, status: int | None) -> None:
        self.tape.add(self.name, self.kind, method, path, _body(content_type, body), status)


def _taped(app: ASGIApp, record: Callable[[str, str, str, bytes, int | None], None]) -> ASGIApp:
    """`app`, noting each request's body and the status it was answered with."""

    async def taped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        status: int | None = None

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, receiving, sending)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope["path"] + (f"?{query}" if query else "")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            record(scope["method"], path, headers.get("content-type", ""), b"".join(chunks), status)

    return taped


class _SmtpStandIn:
    """An SMTP server (aiosmtpd) in this event loop, taking every mail."""

    def __init__(self, name: str, tape: Tape) -> None:
        try:
            import aiosmtpd.smtp  # noqa: F401  (checked now: the config is refused early, not at start)
        except ImportError as exc:
            raise TidingsError(
                f"sandbox mode for the smtp destination {name!r} needs aiosmtpd (pip install aiosmtpd)"
            ) from exc
        self.name, self.tape = name, tape
        self._sock = _reserve()
        self.port: int = self._sock.getsockname()[1]
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        from aiosmtpd.smtp import SMTP

        self._server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(self, hostname="tidings-sandbox"), sock=self._sock
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.close()

    def close(self) -> None:
        self._sock.close()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook
        raw = envelope.original_content or envelope.content or b""
        parser = BytesParser(_class=EmailMessage, policy=email.policy.default)
        message = parser.parsebytes(raw if isinstance(raw, bytes) else raw.encode())
        body: dict[str, Any] = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(message.get("Subject", "")),
            "message_id": str(message.get("Message-ID", "")),
        }
        for subtype in ("plain", "html"):
            part = message.get_body(preferencelist=(subtype,))
            if part is not None:
                body["text" if subtype == "plain" else "html"] = str(part.get_content())[:MAX_BODY]
        self.tape.add(self.name, "smtp", "SMTP", "DATA", body, 250)
        return "250 Message accepted for delivery"


# --------------------------------------------------------------------------- the rewrite


def _secrets(*values: SecretStr | None) -> list[str]:
    return [v.get_secret_value() for v in values if v is not None]


class Sandbox:
    """The simulators for every destination of `settings`, and `settings` pointed at them."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.tape = Tape(clock or SystemClock())
        self.kinds: dict[str, str] = {}
        self.simulators: dict[str, Simulator] = {}  # destination name -> its simulator (HTTP ones)
        self._http: list[_HttpStandIn] = []
        self._smtp: list[_SmtpStandIn] = []
        self._started = False
        destinations: dict[str, DestinationSettings] = {}
        try:
            for name, cfg in settings.destinations.items():
                destinations[name] = self._stand_in(name, cfg)
                self.kinds[name] = cfg.kind
        except BaseException:
            self._close_sockets()
            raise
        self.settings = settings.model_copy(update={"destinations": destinations, "sandbox": True})

    def _stand_in(self, name: str, cfg: DestinationSettings) -> DestinationSettings:
        """The simulator for one destination, and the destination's settings pointed at it."""
        if isinstance(cfg, SmtpSettings):
            smtp = _SmtpStandIn(name, self.tape)
            self._smtp.append(smtp)
            smtp_update: dict[str, Any] = {
                "host": "127.0.0.1",
                "port": smtp.port,
                "starttls": False,
                "username": None,
                "password": None,
                "ca_file": None,
            }
            return cfg.model_copy(update=smtp_update)
        simulator = _simulator_for(name, cfg)
        stand_in = _HttpStandIn(name, cfg.kind, simulator, self.tape)
        self._http.append(stand_in)
        self.simulators[name] = simulator
        if isinstance(cfg, WebhookSettings):
            update: dict[str, Any] = {"url": simulator.url + (urlsplit(cfg.url).path or "/")}
        elif isinstance(cfg, ActiveCampaignSettings):
            update = {"base_url": simulator.url, "events_url": simulator.url + "/event"}
        else:
            update = {"base_url": simulator.url}
        return cfg.model_copy(update=update)

    @property
    def destinations(self) -> list[str]:
        return list(self.kinds)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for smtp in self._smtp:
            await smtp.start()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, s.start) for s in self._http))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, s.stop) for s in self._http))
        for smtp in self._smtp:
            await smtp.stop()
        self._started = False

    def _close_sockets(self) -> None:
        for http in self._http:
            http.close()
        for smtp in self._smtp:
            smtp.close()

    def requests(
        self, *, destination: str | None = None, after_id: int = 0, before_id: int | None = None
    ) -> list[SandboxRequest]:
        """Recorded requests, oldest first; only `destination`'s, only ids in (after_id, before_id)."""
        if destination is not None and destination not in self.kinds:
            known = ", ".join(sorted(self.kinds)) or "none"
            raise UnknownSandboxDestination(
                f"no destination {destination!r} in the sandbox (its destinations: {known})"
            )
        return [
            r
            for r in self.tape.entries()
            if (destination is None or r.destination == destination)
            and r.id > after_id
            and (before_id is None or r.id < before_id)
        ]


def _simulator_for(name: str, cfg: DestinationSettings) -> Simulator:
    """A simulator that accepts the credentials `cfg` holds."""
    if isinstance(cfg, KlaviyoSettings):
        oauth = cfg.oauth
        return KlaviyoSimulator(
            _secrets(cfg.api_key, cfg.next_api_key),
            revision=cfg.revision,
            oauth_clients={oauth.client_id: oauth.client_secret.get_secret_value()} if oauth else None,
            refresh_tokens=_secrets(oauth.refresh_token) if oauth else (),
        )
    if isinstance(cfg, MailchimpSettings):
        return MailchimpSimulator(
            _secrets(cfg.api_key, cfg.next_api_key), access_tokens=_secrets(cfg.access_token)
        )
    if isinstance(cfg, MailchimpTransactionalSettings):
        return MandrillSimulator(_secrets(cfg.api_key, cfg.next_api_key))
    if isinstance(cfg, SendGridSettings):
        return SendGridSimulator(
            _secrets(cfg.api_key, cfg.next_api_key), custom_fields=dict(cfg.custom_field_ids)
        )
    if isinstance(cfg, ActiveCampaignSettings):
        events: dict[str, Any] = {}
        if cfg.actid is not None and cfg.event_key is not None:
            events = {"actid": cfg.actid, "event_key": cfg.event_key.get_secret_value()}
        return ActiveCampaignSimulator(_secrets(cfg.api_key, cfg.next_api_key), **events)
    if isinstance(cfg, WebhookSettings):
        return WebhookSink(cfg.secret.get_secret_value())
    raise TidingsError(
        f"sandbox mode has no simulator for the destination {name!r} (kind {cfg.kind}); "
        "remove it or run without sandbox"
    )


def _body(content_type: str, raw: bytes) -> Any:
    """A body as data when it is JSON or a form, else as text; credentials masked."""
    if not raw:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    text = raw.decode("utf-8", errors="replace")
    if kind == "application/x-www-form-urlencoded":
        return _masked(dict(parse_qsl(text, keep_blank_values=True)))
    if kind.endswith("json") or kind.endswith("+json") or text.lstrip()[:1] in ("{", "["):
        try:
            return _masked(json.loads(text))
        except ValueError:
            pass
    return text[:MAX_BODY]


def _masked(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (MASK if k.lower() in SECRET_FIELDS and v else v) for k, v in data.items()}
    return data


# --------------------------------------------------------------------------- reading


def recorded(
    tidings: Tidings,
    *,
    destination: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[SandboxRequest]:
    """What the sandbox's simulators received, newest first (at most `limit`, ids below
    `before_id`). NotInSandbox when tidings runs for real; UnknownSandboxDestination for a
    destination the config does not have."""
    sandbox = tidings.sandbox
    if sandbox is None:
        if tidings.settings.sandbox:
            raise NotInSandbox(
                "sandbox mode is on, but this process does not deliver (it runs with --role ingest): "
                "the process that delivers records the requests"
            )
        raise NotInSandbox(
            "tidings is not running in sandbox mode (start it with `tidings serve --sandbox` "
            "or set `sandbox: true` in the config)"
        )
    found = sandbox.requests(destination=destination, before_id=before_id)
    found.reverse()
    return found[:limit]
