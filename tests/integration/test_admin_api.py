"""GET /api/v1/events: bearer tokens with scopes, listing and paging what arrived."""

from __future__ import annotations

import base64
import json

import pytest

from tests.integration.test_standard_webhooks import CONFIG, signed

READ = "read-token-0123456789"
WRITE_ONLY = "write-token-0123456789"
ADMIN = (
    f"""
server:
  admin_tokens:
    - {{name: dashboards, token: "{READ}", scopes: [read]}}
    - {{name: robot, token: "${{ROBOT_TOKEN}}", scopes: [write]}}
"""
    + CONFIG
)


async def store_some(client, clock, n: int) -> None:
    for i in range(n):
        body = json.dumps({"type": f"t{i}", "email": "ann@example.com"}).encode()
        response = await client.post("/hooks/app", content=body, headers=signed(body, f"id{i}", clock.now()))
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"authorization": "Bearer not-a-token-at-all"}, 401, "unauthorized"),
        ({"authorization": f"Basic {READ}"}, 401, "unauthorized"),
        ({"authorization": f"Bearer {WRITE_ONLY}"}, 403, "forbidden"),
    ],
    ids=["none", "wrong", "not-bearer", "lacks-read"],
)
async def test_events_need_a_read_token(running, headers, status, code) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        response = await client.get("/api/v1/events", headers=headers)
        assert response.status_code == status
        assert response.json()["error"] == code


async def test_events_newest_first_with_paging_and_filters(running, clock) -> None:
    auth = {"authorization": f"Bearer {READ}"}
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        await store_some(client, clock, 5)
        page = (await client.get("/api/v1/events?limit=3", headers=auth)).json()
        assert [e["topic"] for e in page["events"]] == ["t4", "t3", "t2"]
        assert page["events"][0]["payload_base64"] is None
        assert page["events"][0]["headers"]["webhook-id"] == "id4"
        rest = (await client.get(f"/api/v1/events?before_id={page['next_before_id']}", headers=auth)).json()
        assert [e["topic"] for e in rest["events"]] == ["t1", "t0"]
        assert rest["next_before_id"] is None
        tail = (await client.get("/api/v1/events?after_id=3", headers=auth)).json()
        assert [e["topic"] for e in tail["events"]] == ["t3", "t4"]
        assert (await client.get("/api/v1/events?source=other", headers=auth)).json()["events"] == []
        flagged = (await client.get("/api/v1/events?status=flagged", headers=auth)).json()
        assert flagged["events"] == []
        full = (await client.get("/api/v1/events?limit=1&include_payload=true", headers=auth)).json()
        assert json.loads(base64.b64decode(full["events"][0]["payload_base64"]))["type"] == "t4"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "status=lost", "before_id=abc"])
async def test_bad_query_is_400_naming_the_parameter(running, query) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        response = await client.get(f"/api/v1/events?{query}", headers={"authorization": f"Bearer {READ}"})
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert query.split("=")[0] in response.json()["detail"]
