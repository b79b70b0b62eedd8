"""Mailchimp audience webhooks: keyed URL, form bodies, consent on profiles (SQLite, PostgreSQL)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import inbox_rows
from tidings.config import parse_settings
from tidings.exceptions import ConfigurationError
from tidings.ingest.base import InboundRequest
from tidings.profiles.read import load, resolve

KEY = "k3y-0f-at-least-16-chars"
OLD_KEY = "an-older-key-still-accepted"
CONFIG = f"""
sources:
  mc:
    kind: mailchimp-webhooks
    keys: ["{KEY}", "{OLD_KEY}"]
"""
FORM = {"content-type": "application/x-www-form-urlencoded"}


def form(kind: str, fired_at: str, **data: str) -> bytes:
    """A body as Mailchimp sends it: PHP-style bracketed fields, form-encoded."""
    fields = [("type", kind), ("fired_at", fired_at)] + [(f"data[{k}]", v) for k, v in data.items()]
    return urlencode(fields).encode()


def profile_of(tidings, ref: str) -> Any:
    def read(conn):
        pid = resolve(conn, ref)
        return load(conn, pid) if pid is not None else None

    return tidings.store.read_sync(read)


async def post(client, body: bytes, key: str | None = KEY):
    url = "/hooks/mc" if key is None else f"/hooks/mc?key={key}"
    return await client.post(url, content=body, headers=FORM)


async def test_unsubscribe_and_cleaned_unsubscribe_the_profile(running) -> None:
    subscribe = urlencode(
        [
            ("type", "subscribe"),
            ("fired_at", "2026-03-01 09:00:00"),
            ("data[email]", "Ann@Example.com"),
            ("data[list_id]", "a6b5da1054"),
            ("data[merges][FNAME]", "Ann"),
        ]
    ).encode()
    async with running(CONFIG) as (tidings, client):
        assert (await post(client, subscribe)).status_code == 200
        await tidings.processor.drain()
        ann = profile_of(tidings, "ann@example.com")
        assert ann.consent["email"]["state"] == "subscribed"
        assert ann.traits["first_name"] == "Ann"

        unsub = form(
            "unsubscribe", "2026-03-02 10:00:00", email="ann@example.com", action="unsub", reason="manual"
        )
        cleaned = form("cleaned", "2026-03-02 10:00:00", email="bob@example.com", reason="hard", list_id="a6")
        for body in (unsub, cleaned):
            response = await post(client, body)
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
        await tidings.processor.drain()
        ann_consent = profile_of(tidings, "ann@example.com").consent["email"]
        assert ann_consent["state"] == "unsubscribed"
        assert ann_consent["at"].startswith("2026-03-02T10:00:00")  # fired_at, read as UTC
        assert profile_of(tidings, "bob@example.com").consent["email"]["state"] == "unsubscribed"
        assert [r.topic for r in inbox_rows(tidings)] == ["subscribe", "unsubscribe", "cleaned"]


async def test_an_old_subscribe_arriving_late_does_not_resubscribe(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(
            client, form("unsubscribe", "2026-03-02 10:00:00", email="ann@example.com", action="unsub")
        )
        await post(client, form("subscribe", "2026-03-01 10:00:00", email="ann@example.com"))
        await tidings.processor.drain()
        assert profile_of(tidings, "ann@example.com").consent["email"]["state"] == "unsubscribed"


async def test_a_retried_body_is_a_duplicate(running) -> None:
    body = form("unsubscribe", "2026-03-02 10:00:00", email="ann@example.com", action="unsub")
    async with running(CONFIG) as (tidings, client):
        first = await post(client, body)
        again = await post(client, body, OLD_KEY)  # the old key still works while rotating
        assert first.status_code == again.status_code == 200
        assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
        [row] = inbox_rows(tidings)
        assert row.dedupe_key.startswith("sha256:")


async def test_missing_or_wrong_key_is_refused_and_nothing_is_stored(running) -> None:
    body = form("unsubscribe", "2026-03-02 10:00:00", email="ann@example.com")
    async with running(CONFIG) as (tidings, client):
        missing = await post(client, body, key=None)
        assert missing.status_code == 401
        assert missing.json()["error"] == "missing_key"
        wrong = await post(client, body, key="k3y-0f-at-least-16-chart")
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_key"
        json_body = await client.post(
            f"/hooks/mc?key={KEY}", content=b"{}", headers={"content-type": "application/json"}
        )
        assert json_body.status_code == 415
        assert inbox_rows(tidings) == []


async def test_authentic_form_without_type_is_stored_flagged(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await post(client, b"data[email]=ann%40example.com")
        assert response.status_code == 200
        assert response.json()["status"] == "flagged"
        [row] = inbox_rows(tidings)
        assert row.status == "flagged"


async def test_email_change_merges_old_and_new_profiles(running) -> None:
    async with running(CONFIG) as (tidings, client):
        await post(client, form("cleaned", "2026-03-01 10:00:00", email="old@example.com", reason="hard"))
        await post(
            client,
            form("upemail", "2026-03-02 10:00:00", old_email="old@example.com", new_email="new@example.com"),
        )
        await tidings.processor.drain()
        old, new = profile_of(tidings, "old@example.com"), profile_of(tidings, "new@example.com")
        assert old is not None and new is not None and old.id == new.id
        assert {"email:old@example.com", "email:new@example.com"} <= set(new.identities)


async def test_get_validation_answers_200_only_with_the_key(running) -> None:
    async with running(CONFIG) as (tidings, client):
        receiver = tidings.receivers["mc"]

        def get(url: str) -> InboundRequest:
            return InboundRequest(
                source="mc", method="GET", url=url, headers={}, body=b"", received_at=tidings.clock.now()
            )

        assert receiver.validation(get(f"http://tidings.test/hooks/mc?key={KEY}")).status == 200
        from tidings.exceptions import AuthenticationFailed

        with pytest.raises(AuthenticationFailed):
            receiver.validation(get("http://tidings.test/hooks/mc?key=nope-nope-nope-nope"))


def test_short_keys_are_refused_at_config_time() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_settings("sources:\n  mc:\n    kind: mailchimp-webhooks\n    keys: ['short']\n", "t.yaml", {})
    assert "16 characters" in str(info.value)


async def test_the_key_in_the_url_is_not_kept_in_the_store(running) -> None:
    from sqlalchemy import select

    from tidings.store.schema import requests

    async with running(CONFIG) as (tidings, client):
        await post(client, form("subscribe", "2026-03-01 10:00:00", email="ann@example.com"))
        [url] = tidings.store.read_sync(lambda c: list(c.execute(select(requests.c.url)).scalars()))
        assert KEY not in url
        assert "key=***" in url


async def test_mailchimps_get_on_saving_the_webhook_is_answered(running) -> None:
    async with running(CONFIG) as (_, client):
        assert (await client.get(f"/hooks/mc?key={KEY}")).status_code == 200
        wrong = await client.get("/hooks/mc?key=nope-nope-nope-nope")
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_key"
