"""Sandbox mode: the user's config, every destination a local simulator, what it was sent readable."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from typer.testing import CliRunner

from tidings.app import Tidings
from tidings.cli import app as cli
from tidings.config import parse_settings
from tidings.delivery.effects import SEND_TEMPLATE, TRACK_EVENT, UPSERT_CONTACT, Effect
from tidings.destinations.registry import destination_class
from tidings.sandbox import MASK, Sandbox
from tidings.store.schema import outbox

TOKEN = "sandbox-test-token-0123456789"
WRITE_ONLY = "sandbox-write-only-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SEGMENT = {"authorization": "Basic d2tfdGVzdDo=", "content-type": "application/json"}  # wk_test:
SECRET = "whsec_" + "dGlkaW5ncy10ZXN0LXNlY3JldC0zMi1ieXRlcyEhISE="


def config(store: Path) -> str:
    # Keys that look real: in sandbox mode they are accepted by the simulators, sent nowhere else.
    return f"""
server:
  admin_tokens:
    - {{name: ops, token: "{TOKEN}", scopes: [read]}}
    - {{name: ci, token: "{WRITE_ONLY}", scopes: [write]}}
storage:
  url: "sqlite:///{store}"
sources:
  web: {{kind: segment, write_keys: ["wk_test"]}}
destinations:
  klaviyo:
    kind: klaviyo
    api_key: pk_3f9c2d1e0b8a7f6e5d4c3b2a19080706
  sendgrid:
    kind: sendgrid
    api_key: SG.live-looking-key.0123456789abcdef
    from_email: shop@example.com
    profile_sync:
      fields:
        first_name: profile.traits.first_name
flows:
  nudge:
    trigger: {{event: Checkout Started}}
    run_key: event.properties.checkout_id
    guards: {{consent: none}}
    steps:
      - send:
          destination: klaviyo
          action: track_event
          event: Abandoned Cart
          properties:
            checkout: "{{{{ event.properties.checkout_id }}}}"
            value: "{{{{ event.properties.value }}}}"
"""


@pytest.fixture
def hosts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host name this process resolves."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host.decode() if isinstance(host, bytes) else str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return asked


def serve(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """`tidings serve ...` as the CLI runs it, up to the point where uvicorn would take over."""
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    result = CliRunner().invoke(cli, ["serve", *args, "--log-level", "warning"])
    assert result.exit_code == 0, result.output
    [app] = served
    return app


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


def settled(tidings: Tidings) -> bool:
    rows = tidings.store.read_sync(lambda c: list(c.execute(select(outbox.c.status))))
    return bool(rows) and all(r.status == "delivered" for r in rows)


async def test_serve_sandbox_delivers_to_simulators_and_lists_what_they_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hosts: list[str]
) -> None:
    path = tmp_path / "tidings.yaml"
    path.write_text(config(tmp_path / "t.db"))
    app = serve(["-c", str(path), "--sandbox"], monkeypatch)
    tidings: Tidings = app.state.tidings
    assert tidings.sandbox is not None and tidings.settings.sandbox
    for destination in tidings.destinations.values():  # every base_url replaced before the first send
        assert destination.base_url.startswith("http://127.0.0.1:"), destination.base_url

    urls: list[httpx.URL] = []

    async def note(request: httpx.Request) -> None:
        urls.append(request.url)

    tidings.http.event_hooks["request"].append(note)  # the one client every destination uses
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings.test") as client:
            traits = {"email": "ann@example.com", "first_name": "Ann"}
            identify = {"messageId": "i1", "userId": "u1", "traits": traits}
            track = {
                "messageId": "t1",
                "userId": "u1",
                "event": "Checkout Started",
                "properties": {"checkout_id": "c1", "value": 25.0},
            }
            for call, body in (("identify", identify), ("track", track)):
                response = await client.post(f"/v1/{call}", content=json.dumps(body), headers=SEGMENT)
                assert response.status_code == 200, response.text
            await until(lambda: settled(tidings) and len(tidings.sandbox.tape.entries()) >= 2)

            response = await client.get("/api/v1/sandbox/requests", headers=AUTH)
            assert response.status_code == 200, response.text
            found = response.json()["requests"]
            by_destination: dict[str, list[dict[str, Any]]] = {}
            for r in found:
                by_destination.setdefault(r["destination"], []).append(r)
            assert set(by_destination) == {"klaviyo", "sendgrid"}

            [event] = by_destination["klaviyo"]  # the flow's one send
            assert (event["kind"], event["method"], event["path"], event["status"]) == (
                "klaviyo",
                "POST",
                "/api/events",
                202,
            )
            attributes = event["body"]["data"]["attributes"]
            assert attributes["metric"]["data"]["attributes"]["name"] == "Abandoned Cart"
            assert attributes["profile"]["data"]["attributes"]["email"] == "ann@example.com"
            assert attributes["properties"] == {"checkout": "c1", "value": 25.0}

            contact = by_destination["sendgrid"][0]  # newest first: the profile as it is now
            assert (contact["method"], contact["path"], contact["status"]) == (
                "PUT",
                "/v3/marketing/contacts",
                202,
            )
            assert contact["body"]["contacts"] == [{"email": "ann@example.com", "first_name": "Ann"}]
            # what the simulators themselves hold agrees with the recording
            assert tidings.sandbox is not None
            klaviyo = tidings.sandbox.simulators["klaviyo"]
            assert len(klaviyo.accepted_events) == 1  # type: ignore[attr-defined]
            sendgrid = tidings.sandbox.simulators["sendgrid"]
            assert list(sendgrid.contacts) == ["ann@example.com"]  # type: ignore[attr-defined]
            assert len(sendgrid.requests) == len(by_destination["sendgrid"])

            only = await client.get("/api/v1/sandbox/requests?destination=sendgrid", headers=AUTH)
            assert {r["destination"] for r in only.json()["requests"]} == {"sendgrid"}
            one = await client.get("/api/v1/sandbox/requests?limit=1", headers=AUTH)
            assert one.json()["next_before_id"] == one.json()["requests"][0]["id"]
            older = await client.get(
                f"/api/v1/sandbox/requests?before_id={one.json()['next_before_id']}", headers=AUTH
            )
            assert len(older.json()["requests"]) == len(found) - 1

            unknown = await client.get("/api/v1/sandbox/requests?destination=mailgun", headers=AUTH)
            assert unknown.status_code == 404
            assert unknown.json()["error"] == "not_found"
            assert "'mailgun'" in unknown.json()["detail"] and "klaviyo, sendgrid" in unknown.json()["detail"]

            anonymous = await client.get("/api/v1/sandbox/requests")
            assert anonymous.status_code == 401
            wrong_scope = await client.get(
                "/api/v1/sandbox/requests", headers={"authorization": f"Bearer {WRITE_ONLY}"}
            )
            assert wrong_scope.status_code == 403

            # The dashboard's sandbox page shows the same requests.
            signed_in = await client.post(
                "/ui/login",
                data={"token": TOKEN, "next": "/ui/sandbox"},
                headers={"origin": "http://tidings.test"},
            )
            assert signed_in.status_code == 303, signed_in.text
            page = await client.get("/ui/sandbox")
            assert page.status_code == 200
            assert page.text.count("<code>POST /api/events</code>") == 1
            assert "PUT /v3/marketing/contacts" in page.text
    assert urls and {url.host for url in urls} == {"127.0.0.1"}, urls  # every request went to a simulator
    assert set(hosts) <= {"127.0.0.1", "localhost"}, hosts  # no vendor's name was even looked up


async def test_without_sandbox_mode_the_requests_are_404_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tidings.yaml"
    path.write_text(config(tmp_path / "t.db"))
    app = serve(["-c", str(path)], monkeypatch)
    assert app.state.tidings.sandbox is None
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings.test") as client:
            assert (await client.get("/api/v1/sandbox/requests")).status_code == 401
            response = await client.get("/api/v1/sandbox/requests", headers=AUTH)
            await client.post(
                "/ui/login", data={"token": TOKEN, "next": "/ui/"}, headers={"origin": "http://tidings.test"}
            )
            page = await client.get("/ui/sandbox")
    assert page.status_code == 200 and 'id="sandbox-off"' in page.text
    assert "not running in sandbox mode" in page.text
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "not running in sandbox mode" in response.json()["detail"]
    assert "--sandbox" in response.json()["detail"]


async def test_sandbox_true_in_the_config_is_sandbox_mode_in_the_process_that_delivers(
    tmp_path: Path,
) -> None:
    settings = parse_settings(config(tmp_path / "t.db") + "sandbox: true\n", "t.yaml", {})
    worker = Tidings(settings)
    assert worker.sandbox is not None
    assert all(d.base_url.startswith("http://127.0.0.1:") for d in worker.destinations.values())
    ingest = Tidings(settings, process=False)  # receives only: nothing to stand in for
    assert ingest.sandbox is None
    from tidings.sandbox import NotInSandbox, recorded

    with pytest.raises(NotInSandbox, match="does not deliver"):
        recorded(ingest)
    for t in (worker, ingest):
        await t.http.aclose()
        t.store.close()
    worker.sandbox._close_sockets()


ALL_KINDS = f"""
sandbox: true
destinations:
  klaviyo: {{kind: klaviyo, api_key: pk_real_looking_0123456789}}
  mailchimp: {{kind: mailchimp, api_key: 0123456789abcdef0123456789abcdef-us21, list_id: l1}}
  mandrill: {{kind: mailchimp-transactional, api_key: md-real-looking-key}}
  sendgrid: {{kind: sendgrid, api_key: SG.real.looking, from_email: shop@example.com}}
  activecampaign:
    kind: activecampaign
    base_url: https://acme.api-us1.com
    api_key: ac-real-looking
    actid: "223344"
    event_key: ek-real-looking
  hook: {{kind: webhook, url: "https://hooks.example.com/tidings/in", secret: "{SECRET}"}}
  mail:
    kind: smtp
    host: smtp.example.com
    username: shop
    password: hunter2-hunter2
    from_address: Shop <shop@example.com>
    templates:
      welcome: {{subject: "Hi {{{{ first_name }}}}", text: "Hello {{{{ first_name }}}}"}}
"""
CONTACT = {"profile_id": 7, "email": "ann@example.com", "fields": {}, "consent": {}}
TRACK = {"email": "ann@example.com", "event": "Placed Order", "properties": {"total": 42.5}}
SEND = {"email": "ann@example.com", "template": "welcome", "variables": {"first_name": "Ann"}}
EFFECTS = {
    "klaviyo": (TRACK_EVENT, TRACK),
    "mailchimp": (UPSERT_CONTACT, CONTACT),
    "mandrill": (SEND_TEMPLATE, SEND),
    "sendgrid": (SEND_TEMPLATE, {**SEND, "template": "d-0123456789abcdef"}),
    "activecampaign": (TRACK_EVENT, TRACK),
    "hook": (TRACK_EVENT, TRACK),
    "mail": (SEND_TEMPLATE, SEND),
}


async def test_every_destination_kind_has_a_simulator_that_takes_the_configured_credentials() -> None:
    settings = parse_settings(ALL_KINDS, "t.yaml", {})
    sandbox = Sandbox(settings)
    rewritten = sandbox.settings.destinations
    assert rewritten["hook"].url.startswith("http://127.0.0.1:") and rewritten["hook"].url.endswith(
        "/tidings/in"
    )
    assert rewritten["activecampaign"].events_url == rewritten["activecampaign"].base_url + "/event"
    assert (rewritten["mail"].host, rewritten["mail"].starttls, rewritten["mail"].password) == (
        "127.0.0.1",
        False,
        None,
    )
    await sandbox.start()
    try:
        async with httpx.AsyncClient() as http:
            for name, (action, payload) in EFFECTS.items():
                cfg = rewritten[name]
                destination = destination_class(cfg.kind)(name, cfg, http)
                key = f"k-{name}"
                effect = Effect(
                    id=1, destination=name, action=action, idempotency_key=key, payload=payload, attempt=1
                )
                await destination.deliver(effect)  # raises on any refusal (a key not accepted: 401/403)
    finally:
        await sandbox.stop()
    found = {r.destination: r for r in sandbox.requests()}
    assert set(found) == set(EFFECTS)
    assert all(r.status in (200, 201, 202, 204, 250) for r in found.values()), found
    assert found["mandrill"].body["key"] == MASK  # Mandrill's key travels in the body: never shown
    assert found["activecampaign"].body["key"] == MASK
    assert found["activecampaign"].body["actid"] == "223344"
    mail = found["mail"]
    assert (mail.method, mail.path, mail.status) == ("SMTP", "DATA", 250)
    assert mail.body["rcpt_tos"] == ["ann@example.com"] and mail.body["subject"] == "Hi Ann"
    assert mail.body["text"].strip() == "Hello Ann"
    assert found["hook"].path == "/tidings/in"
    assert "hunter2" not in json.dumps([r.as_json() for r in sandbox.requests()])
