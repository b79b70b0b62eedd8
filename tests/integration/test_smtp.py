"""The SMTP destination against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from tidings.delivery.effects import Effect
from tidings.destinations.smtp import SmtpDestination, SmtpSettings, message_id
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError

TEMPLATES = {
    "welcome": {
        "subject": "Welcome, {{ first_name }}",
        "text": "Hello {{ first_name }},\nyour code is {{ code }}. Costs $5.",
        "html": "<p>Hello <b>{{ first_name }}</b>, code {{ code }}</p>",
    },
    "plain": {"subject": "Hi", "text": "Just text for {{ first_name }}"},
}


class Recorder:
    """Takes every mail; or answers RCPT / DATA with a given reply, or slowly."""

    def __init__(
        self, rcpt_reply: str | None = None, data_reply: str | None = None, delay: float = 0
    ) -> None:
        self.rcpt_reply, self.data_reply, self.delay = rcpt_reply, data_reply, delay
        self.messages: list[Any] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply:
            return self.data_reply
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(handler: Recorder, **kwargs: Any) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


@pytest.fixture
def server() -> Iterator[tuple[Controller, Recorder]]:
    handler = Recorder()
    controller = serve(handler)
    yield controller, handler
    controller.stop()


def settings(port: int, **overrides: Any) -> SmtpSettings:
    raw: dict[str, Any] = {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "from_address": "Shop <shop@example.com>",
        "templates": TEMPLATES,
        "timeout": "5s",
    }
    raw.update(overrides)
    return SmtpSettings.model_validate(raw)


def send(
    template: str = "welcome", to: str = "ann@example.com", key: str = "effect-1", **variables: Any
) -> Effect:
    variables = variables or {"first_name": "Ann", "code": "A1"}
    payload = {"template": template, "to": to, "variables": variables}
    return Effect(
        id=1, destination="mail", action="send_template", idempotency_key=key, payload=payload, attempt=1
    )


async def deliver(s: SmtpSettings, effect: Effect):
    async with httpx.AsyncClient() as http:
        return await SmtpDestination("mail", s, http).deliver(effect)


async def test_renders_the_template_and_sends_it_with_a_message_id_from_the_key(server) -> None:
    controller, handler = server
    receipt = await deliver(settings(controller.port), send(first_name="Ann & Bo", code="<A1>"))

    [envelope] = handler.messages
    assert envelope.mail_from == "shop@example.com" and envelope.rcpt_tos == ["ann@example.com"]
    mail = message_from_bytes(envelope.content, policy=policy.default)
    assert mail["Subject"] == "Welcome, Ann & Bo"
    assert mail["Message-ID"] == message_id("effect-1", "shop@example.com") == receipt.remote_id
    assert mail["Message-ID"].endswith("@example.com>")
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = mail.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert text == "Hello Ann & Bo,\nyour code is <A1>. Costs $5.\n"
    assert html == "<p>Hello <b>Ann &amp; Bo</b>, code &lt;A1&gt;</p>\n"  # values escaped in HTML only


async def test_the_same_key_gives_the_same_message_id_and_another_key_another(server) -> None:
    controller, handler = server
    for key in ("k1", "k1", "k2"):
        await deliver(settings(controller.port), send("plain", key=key, first_name="Ann"))
    ids = [message_from_bytes(m.content)["Message-ID"] for m in handler.messages]
    assert ids[0] == ids[1] != ids[2]


async def test_a_missing_variable_or_template_is_permanent_and_nothing_is_sent(server) -> None:
    controller, handler = server
    with pytest.raises(PermanentDeliveryError, match="'code' is undefined"):
        await deliver(settings(controller.port), send(first_name="Ann"))
    with pytest.raises(PermanentDeliveryError, match="no template 'nope'"):
        await deliver(settings(controller.port), send("nope"))
    with pytest.raises(PermanentDeliveryError, match="recipient"):
        await deliver(settings(controller.port), send(to="not-an-address"))
    assert handler.messages == []


def test_settings_refuse_a_malformed_placeholder_and_half_a_login() -> None:
    with pytest.raises(ValidationError, match="malformed"):
        settings(25, templates={"bad": {"subject": "Hi {{ name", "text": "x"}})
    with pytest.raises(ValidationError, match="username and password"):
        settings(25, username="user")


@pytest.mark.parametrize(
    ("where", "reply", "error"),
    [
        ("rcpt", "451 4.7.1 Greylisted, try again later", RetryableDeliveryError),
        ("data", "451 4.3.0 Temporary local problem", RetryableDeliveryError),
        ("rcpt", "550 5.1.1 No such user here", PermanentDeliveryError),
        ("data", "554 5.7.1 Message rejected as spam", PermanentDeliveryError),
    ],
)
async def test_smtp_replies_decide_the_error_class(where: str, reply: str, error: type[Exception]) -> None:
    handler = Recorder(**{f"{where}_reply": reply})
    controller = serve(handler)
    try:
        with pytest.raises(error) as caught:
            await deliver(settings(controller.port), send())
    finally:
        controller.stop()
    assert type(caught.value) is error  # a 5xx is not retryable, a 4xx not permanent
    code = int(reply[:3])
    assert caught.value.status == code  # type: ignore[attr-defined]
    assert reply[4:] in str(caught.value)  # the server's own words


async def test_a_refused_connection_and_a_timeout_are_retryable() -> None:
    with pytest.raises(RetryableDeliveryError):
        await deliver(settings(free_port()), send())

    controller = serve(Recorder(delay=2.0))
    try:
        with pytest.raises(RetryableDeliveryError, match="timed out"):
            await deliver(settings(controller.port, timeout="300ms"), send())
    finally:
        controller.stop()


async def test_starttls_required_against_a_server_without_it_fails_clearly(server) -> None:
    controller, handler = server
    with pytest.raises(PermanentDeliveryError, match="does not offer STARTTLS") as caught:
        await deliver(settings(controller.port, starttls=True), send())
    assert not isinstance(caught.value, RetryableDeliveryError)
    assert handler.messages == []


# STARTTLS and login over it, with a certificate made for 127.0.0.1 ---------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"shop",
        b"s3cret",
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def tls_server(certificate) -> Iterator[tuple[Controller, Recorder]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    handler = Recorder()
    controller = serve(
        handler, tls_context=context, require_starttls=True, authenticator=authenticator, auth_required=True
    )
    yield controller, handler
    controller.stop()


async def test_starttls_and_login(tls_server, certificate) -> None:
    controller, handler = tls_server
    s = settings(
        controller.port, starttls=True, ca_file=str(certificate[0]), username="shop", password="s3cret"
    )
    await deliver(s, send())
    [envelope] = handler.messages
    assert envelope.rcpt_tos == ["ann@example.com"]


async def test_a_refused_login_is_an_auth_error(tls_server, certificate) -> None:
    controller, handler = tls_server
    s = settings(
        controller.port, starttls=True, ca_file=str(certificate[0]), username="shop", password="wrong"
    )
    with pytest.raises(DestinationAuthError, match="535"):
        await deliver(s, send())
    assert handler.messages == []


async def test_an_untrusted_certificate_is_refused(tls_server) -> None:
    controller, handler = tls_server
    with pytest.raises(PermanentDeliveryError, match=r"TLS|certificate|SSL"):
        await deliver(settings(controller.port, starttls=True, username="shop", password="s3cret"), send())
    assert handler.messages == []


def connections_to(port: int) -> list[socket.socket]:
    """This process's open sockets whose peer is 127.0.0.1:port (the client ends)."""
    found = []
    for thing in gc.get_objects():
        if isinstance(thing, socket.socket) and thing.family == socket.AF_INET and thing.fileno() != -1:
            with contextlib.suppress(OSError):
                if thing.getpeername()[1] == port:
                    found.append(thing)
    return found


async def test_after_a_refused_login_the_line_is_cut_even_if_the_server_stalls(certificate) -> None:
    """A graceful TLS close waits for the server's close_notify; the session is over, so the
    destination hangs up at once rather than leave a socket open on a slow relay."""

    def stalling(server, session, envelope, mechanism, auth_data) -> AuthResult:
        result = authenticator(server, session, envelope, mechanism, auth_data)
        # After its answer the server's loop sleeps: no close_notify comes back for a while.
        asyncio.get_running_loop().call_soon(time.sleep, 1.5)
        return result

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    controller = serve(
        Recorder(), tls_context=context, require_starttls=True, authenticator=stalling, auth_required=True
    )
    try:
        s = settings(
            controller.port, starttls=True, ca_file=str(certificate[0]), username="shop", password="wrong"
        )
        with pytest.raises(DestinationAuthError):
            await deliver(s, send())
        await asyncio.sleep(0.01)  # the abort's close runs on the loop's next turn
        assert connections_to(controller.port) == []
    finally:
        controller.stop()
