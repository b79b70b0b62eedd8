"""The dashboard's sign-in and guards over plain HTTP: cookies, scopes, CSRF, never the token.

In process (httpx over ASGI) on a real store; the browser tests beside this file drive the same
pages in Chromium against `tidings serve`.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from tidings.delivery import outbox
from tidings.store.schema import outbox as outbox_table

READ = "ui-read-token-0123456789"
WRITE = "ui-write-token-0123456789"
WRITE_ONLY = "ui-robot-token-0123456789"
HASHED = "ui-hashed-token-0123456789"  # configured by its SHA-256 only
CONFIG = f"""
server:
  admin_tokens:
    - {{name: viewer, token: "{READ}", scopes: [read]}}
    - {{name: operator, token: "{WRITE}", scopes: [read, write]}}
    - {{name: robot, token: "{WRITE_ONLY}", scopes: [write]}}
    - {{name: vault, token_sha256: "{hashlib.sha256(HASHED.encode()).hexdigest()}", scopes: [read]}}
destinations:
  esp:
    kind: webhook
    url: "http://127.0.0.1:9/never"
    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""
ORIGIN = {"origin": "http://tidings.test"}


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/ui/login", data={"token": token, "next": "/ui/deliveries"}, headers=ORIGIN)


def text(response: httpx.Response) -> str:
    """The page as a reader sees it (entities such as &#39; undone)."""
    return html.unescape(response.text)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def dead_letter(tidings) -> int:
    now = tidings.clock.now()

    def write(conn) -> int:
        outbox.enqueue(
            conn,
            destination="esp",
            action="track_event",
            idempotency_key="ui-test-1",
            payload={"email": "ann@example.com", "event": "Test"},
            now=now,
            profile_id=None,
        )
        row_id = int(conn.execute(select(outbox_table.c.id)).scalar_one())
        dead = outbox.Settlement(
            effect_id=row_id,
            action="track_event",
            attempt=1,
            outcome="dead",
            error="webhook answered 422: nope",
        )
        outbox.settle(conn, [dead], now + timedelta(seconds=1))
        return row_id

    return int(tidings.store.write_sync(write))


def status_of(tidings, row_id: int) -> str:
    return str(
        tidings.store.read_sync(
            lambda conn: conn.execute(
                select(outbox_table.c.status).where(outbox_table.c.id == row_id)
            ).scalar_one()
        )
    )


@pytest.mark.parametrize("path", ["/ui/", "/ui/customers?q=ann@example.com", "/ui/flows", "/ui/deliveries/1"])
async def test_without_a_cookie_every_page_redirects_to_the_login(running, path) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=/ui/")
        assert "next=" + path.split("?")[0] in response.headers["location"]
        login = await client.get(response.headers["location"])
        assert login.status_code == 200
        assert 'name="token"' in text(login)
        assert "content-security-policy" in login.headers


async def test_a_wrong_token_is_refused_and_sets_no_cookie(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await sign_in(client, "not-a-token-0123456789")
        assert response.status_code == 401
        assert "not one of server.admin_tokens" in text(response)
        assert "set-cookie" not in response.headers
        assert "not-a-token-0123456789" not in text(response)
        assert (await client.get("/ui/")).status_code == 303


async def test_a_token_without_read_cannot_sign_in(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await sign_in(client, WRITE_ONLY)
        assert response.status_code == 403
        assert "lacks the 'read' scope" in text(response)
        assert "set-cookie" not in response.headers
        # a cookie made by hand with that token does not open the pages either
        client.cookies.set("tidings_ui", f"nonce.{WRITE_ONLY}", domain="tidings.test", path="/ui")
        page = await client.get("/ui/")
        assert page.status_code == 403
        assert "lacks the 'read' scope" in text(page)


async def test_signing_in_sets_a_strict_httponly_cookie_and_goes_where_asked(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await sign_in(client, READ)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/deliveries"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("tidings_ui=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert "path=/ui" in cookie.lower()
        assert "secure" not in attributes  # plain http here; see the https test
        page = await client.get("/ui/deliveries")
        assert page.status_code == 200
        assert "viewer" in text(page)
        assert READ not in text(page)


async def test_a_token_configured_by_its_digest_signs_in(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await sign_in(client, HASHED)
        assert response.status_code == 303
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert "vault" in text(page)


async def test_over_https_the_cookie_is_secure(running) -> None:
    async with running(CONFIG) as (tidings, _):
        from tidings.api.app import create_app

        transport = httpx.ASGITransport(app=create_app(tidings, manage_lifecycle=False))
        async with httpx.AsyncClient(transport=transport, base_url="https://tidings.test") as client:
            response = await client.post(
                "/ui/login", data={"token": READ}, headers={"origin": "https://tidings.test"}
            )
            assert response.status_code == 303
            assert "secure" in {p.strip().lower() for p in response.headers["set-cookie"].split(";")}


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/ui/", "/api/v1/events", "/ui/login"]
)
async def test_after_signing_in_only_dashboard_paths_are_followed(running, target) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.post("/ui/login", data={"token": READ, "next": target}, headers=ORIGIN)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/"


async def test_a_login_form_posted_from_another_site_is_refused(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.post(
            "/ui/login", data={"token": READ}, headers={"origin": "https://evil.example"}
        )
        assert response.status_code == 403
        assert "set-cookie" not in response.headers


async def test_retrying_needs_write_and_a_genuine_form(running) -> None:
    async with running(CONFIG) as (tidings, client):
        row = dead_letter(tidings)
        # read-only: the button is disabled and a posted form is refused
        await sign_in(client, READ)
        page = await client.get(f"/ui/deliveries/{row}")
        assert page.status_code == 200
        assert "disabled" in text(page) and "read-only" in text(page)
        refused = await client.post(
            f"/ui/deliveries/{row}/retry", data={"csrf": csrf_of(page.text)}, headers=ORIGIN
        )
        assert refused.status_code == 403
        assert "lacks the 'write' scope" in text(refused)
        assert status_of(tidings, row) == "dead"

        client.cookies.clear()
        await sign_in(client, WRITE)
        page = await client.get(f"/ui/deliveries/{row}")
        csrf = csrf_of(page.text)
        for data, headers, why in [
            ({}, ORIGIN, "CSRF token is missing"),
            ({"csrf": "0" * 64}, ORIGIN, "CSRF token is missing or stale"),
            ({"csrf": csrf}, {"origin": "https://evil.example"}, "from another site"),
            ({"csrf": csrf}, {"origin": "null"}, "from another site"),
        ]:
            response = await client.post(f"/ui/deliveries/{row}/retry", data=data, headers=headers)
            assert response.status_code == 403, why
            assert why in text(response)
            assert status_of(tidings, row) == "dead"

        done = await client.post(f"/ui/deliveries/{row}/retry", data={"csrf": csrf}, headers=ORIGIN)
        assert done.status_code == 303
        assert done.headers["location"] == f"/ui/deliveries/{row}?retried=1"
        assert status_of(tidings, row) == "pending"
        again = await client.post(f"/ui/deliveries/{row}/retry", data={"csrf": csrf}, headers=ORIGIN)
        assert again.status_code == 409
        assert "not a dead letter" in text(again)


async def test_the_csrf_token_belongs_to_one_sign_in(running) -> None:
    async with running(CONFIG) as (tidings, client):
        row = dead_letter(tidings)
        await sign_in(client, WRITE)
        old = csrf_of((await client.get(f"/ui/deliveries/{row}")).text)
        client.cookies.clear()
        await sign_in(client, WRITE)  # a new sign-in: a new nonce
        response = await client.post(f"/ui/deliveries/{row}/retry", data={"csrf": old}, headers=ORIGIN)
        assert response.status_code == 403
        assert status_of(tidings, row) == "dead"


async def test_signing_out_clears_the_cookie(running) -> None:
    async with running(CONFIG) as (_, client):
        await sign_in(client, READ)
        page = await client.get("/ui/")
        assert page.status_code == 200
        response = await client.post("/ui/logout", data={"csrf": csrf_of(page.text)}, headers=ORIGIN)
        assert response.status_code == 303
        assert (
            'tidings_ui=""' in response.headers["set-cookie"]
            or "max-age=0" in response.headers["set-cookie"].lower()
        )
        client.cookies.clear()
        assert (await client.get("/ui/")).status_code == 303


async def test_static_files_need_no_token_and_unknown_ones_are_404(running) -> None:
    async with running(CONFIG) as (_, client):
        css = await client.get("/ui/static/ui.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        js = await client.get("/ui/static/ui.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert (await client.get("/ui/static/..%2Froutes.py")).status_code == 404
        assert (await client.get("/ui/static/routes.py")).status_code == 404


async def test_the_ui_is_not_in_the_openapi_document(running) -> None:
    async with running(CONFIG) as (_, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p.startswith("/ui")]
