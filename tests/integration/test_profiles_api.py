"""GET /api/v1/profiles/{ref} and its timeline: tokens, refs, merges, consent, order."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

READ = "read-token-0123456789"
WRITE_ONLY = "write-token-0123456789"
CONFIG = f"""
server:
  admin_tokens:
    - {{name: dashboards, token: "{READ}", scopes: [read]}}
    - {{name: robot, token: "{WRITE_ONLY}", scopes: [write]}}
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
    mappings:
      - topic: "track:Loyalty Updated"
        event: Loyalty Updated
        occurred_at: payload.timestamp
        identities:
          "shopify:customer": payload.properties.customer_id
          user_id: payload.userId
        traits:
          loyalty_points: payload.properties.points
"""
SEGMENT = {"authorization": "Basic d2tfdGVzdDo=", "content-type": "application/json"}  # wk_test:
AUTH = {"authorization": f"Bearer {READ}"}


def unique() -> str:
    """Identities of this test only (the PostgreSQL database is shared by the session)."""
    return uuid.uuid4().hex[:10]


async def send(client, call: str, body: dict[str, Any]) -> None:
    response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=SEGMENT)
    assert response.status_code == 200, response.text


def identify(msg: str, user: str, at: str, **traits: Any) -> dict[str, Any]:
    return {"messageId": msg, "userId": user, "timestamp": at, "traits": traits}


async def get(client, path: str, headers: dict[str, str] = AUTH) -> Any:
    return await client.get(f"/api/v1/profiles/{path}", headers=headers)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"authorization": "Bearer not-a-token-at-all"}, 401, "unauthorized"),
        ({"authorization": f"Bearer {WRITE_ONLY}"}, 403, "forbidden"),
    ],
    ids=["none", "wrong", "lacks-read"],
)
async def test_profiles_need_a_read_token(running, headers, status, code) -> None:
    u = unique()
    async with running(CONFIG) as (tidings, client):
        await send(client, "identify", identify("m0", u, "2026-03-01T10:00:00Z", email=f"{u}@example.com"))
        await tidings.processor.drain()
        for path in (f"{u}@example.com", f"{u}@example.com/timeline"):
            response = await get(client, path, headers)
            assert response.status_code == status
            assert response.json()["error"] == code
            assert "traits" not in response.text
        assert (await get(client, f"{u}@example.com")).status_code == 200


async def test_a_profile_by_email_id_and_any_identity(running) -> None:
    u = unique()
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "identify",
            identify(
                "m0",
                u,
                "2026-03-01T10:00:00Z",
                email=f"Ann.{u}@Example.com",
                first_name="Ann",
                email_consent="subscribed",
            ),
        )
        await send(
            client,
            "track",
            {
                "messageId": "m1",
                "userId": u,
                "event": "Loyalty Updated",
                "timestamp": "2026-03-01T11:00:00Z",
                "properties": {"customer_id": 7001, "points": 120},
            },
        )
        await tidings.processor.drain()

        by_email = await get(client, f"ann.{u}@example.com")
        assert by_email.status_code == 200, by_email.text
        profile = by_email.json()
        assert profile["traits"]["first_name"] == "Ann"
        assert profile["traits"]["loyalty_points"] == 120
        assert {(i["kind"], i["value"]) for i in profile["identities"]} == {
            ("email", f"ann.{u}@example.com"),
            ("user_id", u),
            ("shopify:customer", "7001"),
        }
        assert profile["consent"]["email"] == {
            "state": "subscribed",
            "at": "2026-03-01T10:00:00Z",
            "source": "web",
        }
        assert profile["merged_from"] == []
        assert profile["redirected_from"] is None
        assert profile["created_at"] and profile["updated_at"]

        # the same profile, whichever way it is asked for
        for ref in (
            str(profile["id"]),
            f"ANN.{u}@example.com",
            f"email:ann.{u}@example.com",
            f"user_id:{u}",
            "shopify:customer:7001",  # a kind holding a colon itself
        ):
            again = await get(client, ref)
            assert again.status_code == 200, ref
            assert again.json() == profile, ref


@pytest.mark.parametrize(
    "ref", ["nobody@example.com", "999999999", "user_id:no-such-user", "shopify:customer:0", "not an email"]
)
async def test_an_unknown_profile_is_a_404(running, ref) -> None:
    async with running(CONFIG) as (_, client):
        for path in (ref, f"{ref}/timeline"):
            response = await get(client, path)
            assert response.status_code == 404
            body = response.json()
            assert body["error"] == "not_found"
            assert ref in body["detail"]


async def test_a_merged_profile_answers_with_the_one_it_was_merged_into(running) -> None:
    u = unique()
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "track",
            {
                "messageId": "m1",
                "anonymousId": f"anon-{u}",
                "event": "Product Viewed",
                "timestamp": "2026-03-01T10:00:00Z",
                "properties": {"name": "Mug"},
            },
        )
        await send(client, "identify", identify("m2", u, "2026-03-01T09:00:00Z", email=f"{u}@x.io"))
        await tidings.processor.drain()
        anon = (await get(client, f"anonymous_id:anon-{u}")).json()["id"]
        known = (await get(client, f"{u}@x.io")).json()["id"]
        assert anon != known
        await send(
            client,
            "identify",
            {"messageId": "m3", "userId": u, "anonymousId": f"anon-{u}", "timestamp": "2026-03-01T11:00:00Z"},
        )
        await tidings.processor.drain()

        kept, gone = min(anon, known), max(anon, known)
        response = await get(client, str(gone))
        assert response.status_code == 200
        profile = response.json()
        assert profile["id"] == kept
        assert profile["redirected_from"] == gone
        assert profile["merged_from"] == [gone]
        assert profile["traits"]["last_product_viewed"]["name"] == "Mug"
        assert (await get(client, str(kept))).json()["redirected_from"] is None

        timeline = (await get(client, f"{gone}/timeline")).json()
        assert timeline["profile_id"] == kept
        assert timeline["redirected_from"] == gone
        [merge] = [e for e in timeline["entries"] if e["kind"] == "merge"]
        assert merge["merged_profile"] == gone
        moved = {f"anonymous_id:anon-{u}"} if gone == anon else {f"email:{u}@x.io", f"user_id:{u}"}
        assert set(merge["identities"]) == moved


async def test_the_timeline_is_newest_first_with_trait_and_consent_changes(running) -> None:
    u = unique()
    async with running(CONFIG) as (tidings, client):
        await send(
            client,
            "identify",
            identify("m0", u, "2026-03-01T10:00:00Z", email=f"{u}@x.io", first_name="Ann"),
        )
        await send(
            client,
            "identify",
            identify("m2", u, "2026-03-01T10:10:00Z", first_name="Annie", email_consent="unsubscribed"),
        )
        await tidings.processor.drain()
        # arrives last, happened in between: it sits between them
        await send(
            client,
            "track",
            {
                "messageId": "m1",
                "userId": u,
                "event": "Product Viewed",
                "timestamp": "2026-03-01T10:05:00Z",
                "properties": {"name": "Mug", "sku": "S-1"},
            },
        )
        await tidings.processor.drain()

        page = (await get(client, f"user_id:{u}/timeline")).json()
        entries = page["entries"]
        assert page["next_offset"] is None
        stamps = [e["at"] for e in entries]
        assert stamps == sorted(stamps, reverse=True)
        happened = [(e["name"], e["at"]) for e in entries if e["kind"] == "event"]
        assert happened == [
            ("Identify", "2026-03-01T10:10:00Z"),
            ("Product Viewed", "2026-03-01T10:05:00Z"),
            ("Identify", "2026-03-01T10:00:00Z"),
        ]
        assert {e["source"] for e in entries if e["kind"] == "event"} == {"web"}

        changes = {(e["field"], e["at"]): e for e in entries if e["kind"] == "trait"}
        renamed = changes[("first_name", "2026-03-01T10:10:00Z")]
        assert (renamed["old"], renamed["new"]) == ("Ann", "Annie")
        newest_event = next(e for e in entries if e["kind"] == "event")
        assert renamed["event_id"] == newest_event["event_id"]
        assert renamed["name"] == "Identify"
        viewed = changes[("last_product_viewed", "2026-03-01T10:05:00Z")]
        assert viewed["old"] is None
        assert viewed["new"]["sku"] == "S-1"

        [consent] = [e for e in entries if e["kind"] == "consent"]
        assert (consent["field"], consent["old"], consent["new"]) == ("email", "unknown", "unsubscribed")
        assert consent["event_id"] == newest_event["event_id"]

        # paging walks the same list
        first = (await get(client, f"user_id:{u}/timeline?limit=2")).json()
        assert first["entries"] == entries[:2]
        assert first["next_offset"] == 2
        rest = (await get(client, f"user_id:{u}/timeline?limit=100&offset=2")).json()
        assert rest["entries"] == entries[2:]

        bad = await get(client, f"user_id:{u}/timeline?limit=0")
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_request"


async def test_openapi_documents_the_profile_documents(running) -> None:
    async with running(CONFIG) as (_, client):
        spec = (await client.get("/openapi.json")).json()
    profile_get = spec["paths"]["/api/v1/profiles/{ref}"]["get"]
    timeline_get = spec["paths"]["/api/v1/profiles/{ref}/timeline"]["get"]
    assert profile_get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProfileOut"
    )
    assert timeline_get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/TimelinePage"
    )
    assert {"401", "403", "404"} <= set(profile_get["responses"])
    schemas = spec["components"]["schemas"]
    assert {"id", "identities", "traits", "consent", "merged_from", "redirected_from"} <= set(
        schemas["ProfileOut"]["properties"]
    )
    assert {"state", "at", "source"} <= set(schemas["ConsentOut"]["properties"])
