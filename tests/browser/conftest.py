"""A real `tidings serve` with data in it, and Chromium (Debian's, offline) to look at /ui.

One server per module: customers identified and tracked through the Segment endpoint, two flows
(one that sends or skips within seconds, one that keeps its runs waiting), a webhook destination
that accepts (WebhookSink) and one that answers 422 until told otherwise, so dead letters exist.
The fixture returns once the store shows all of it settled; the tests only read and click.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server
from tidings.testing import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WRITE_KEY = "wk_dashboard"
READ = "dash-read-token-0123456789"
WRITE = "dash-write-token-0123456789"
DEADLINE = 30.0  # seconds for the server to settle what the fixture sent
CHROMIUM = os.environ.get("TIDINGS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def config(store: Path, esp: str, crm: str) -> str:
    return f"""
server:
  admin_tokens:
    - {{name: viewer, token: "{READ}", scopes: [read]}}
    - {{name: operator, token: "{WRITE}", scopes: [read, write]}}
storage:
  url: "sqlite:///{store}"
sources:
  web:
    kind: segment
    write_keys: ["{WRITE_KEY}"]
destinations:
  esp:
    kind: webhook
    url: "{esp}/hook"
    secret: "{SECRET}"
    profile_sync:
      fields: {{email: profile.traits.email, first_name: profile.traits.first_name}}
  crm:
    kind: webhook
    url: "{crm}/contacts"
    secret: "{SECRET}"
    profile_sync:
      fields: {{email: profile.traits.email}}
flows:
  abandoned_cart:
    trigger:
      event: Checkout Started
    run_key: event.properties.checkout_id
    exit_on:
      - event: Order Completed
        when: event.properties.checkout_id == run.key
    steps:
      - id: pause
        wait: 1s
      - id: remind
        send:
          destination: esp
          action: track_event
          event: Abandoned Cart
          properties:
            checkout_id: "{{{{ run.key }}}}"
  browse_followup:
    trigger:
      event: Product Viewed
    steps:
      - id: linger
        wait: 1h
      - id: nudge
        send:
          destination: esp
          action: track_event
          event: Still Thinking
"""


@dataclass
class Site:
    url: str
    server: Server
    esp: WebhookSink
    crm: WebhookSink
    dead: list[int]  # dead letters (crm profile syncs), oldest first

    def api(self, path: str) -> Any:
        response = httpx.get(self.url + path, headers={"authorization": f"Bearer {READ}"}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


def segment(client: httpx.Client, kind: str, body: dict[str, Any]) -> None:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    body = {"timestamp": datetime.now(UTC).isoformat(), **body}
    response = client.post(
        f"/v1/{kind}",
        content=json.dumps(body),
        headers={"authorization": f"Basic {auth}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text


def wait_until(what: str, check: Callable[[], Any], server: Server) -> Any:
    until = time.monotonic() + DEADLINE
    while time.monotonic() < until:
        found = check()
        if found:
            return found
        time.sleep(0.1)  # polling interval, not a wait for a condition
    pytest.fail(f"not within {DEADLINE}s: {what}\n{server.output()}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("dashboard")
    esp, crm = WebhookSink(SECRET), WebhookSink(SECRET)
    crm.fail_next(1000, status=422, body={"error": "field email_2 is unknown"})
    with esp.running(), crm.running():
        path = work / "tidings.yaml"
        path.write_text(config(work / "tidings.db", esp.url, crm.url))
        server = Server(path, work)
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for user, email, consent, name in [
                    ("u1", "ann@example.com", "subscribed", "Ann"),
                    ("u2", "bob@example.com", "unsubscribed", "Bob"),
                ]:
                    segment(
                        client,
                        "identify",
                        {
                            "messageId": f"id-{user}",
                            "userId": user,
                            "traits": {"email": email, "email_consent": consent, "first_name": name},
                        },
                    )
                for n, user in enumerate(["u1", "u2"]):
                    props = {"checkout_id": f"co_{user}", "value": 25.0}
                    segment(
                        client,
                        "track",
                        {
                            "messageId": f"co-{n}",
                            "userId": user,
                            "event": "Checkout Started",
                            "properties": props,
                        },
                    )
                    segment(
                        client,
                        "track",
                        {"messageId": f"pv-{n}", "userId": user, "event": "Product Viewed", "properties": {}},
                    )
            site = Site(server.url, server, esp, crm, [])
            wait_until("both carts settled", lambda: _settled(site), server)
            site.dead = wait_until("the crm syncs are dead letters", lambda: _dead(site), server)
            yield site
        finally:
            server.kill()


def _settled(site: Site) -> bool:
    flows = {f["name"]: f for f in site.api("/api/v1/flows")}
    cart, browse = flows["abandoned_cart"], flows["browse_followup"]
    sent = site.api("/api/v1/deliveries?destination=esp&status=delivered")
    return (
        cart["sends"].get("sent") == 1
        and cart["sends"].get("skipped") == 1
        and browse["runs"].get("active") == 2
        and any(d["action"] == "track_event" for d in sent)
    )


def _dead(site: Site) -> list[int]:
    dead = site.api("/api/v1/deliveries?destination=crm&status=dead")
    pending = site.api("/api/v1/deliveries?destination=crm&status=pending")
    return sorted(d["id"] for d in dead) if len(dead) >= 2 and not pending else []


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def signed_in(browser: Any, site: Site) -> Iterator[Callable[[str], Any]]:
    """`page = signed_in(token)`: a fresh browser context, signed in through the login form."""
    contexts: list[Any] = []

    def open_(token: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.goto(site.url + "/ui/")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(site.url + "/ui/")
        return page

    yield open_
    for context in contexts:
        context.close()
