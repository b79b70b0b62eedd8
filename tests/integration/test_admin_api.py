"""The admin API: what arrived, deliveries and their attempts, destinations, backfills, dead letters.

Each endpoint's happy path and its bad input (400 naming the parameter), on SQLite and
PostgreSQL, against the webhook sink and the Mailchimp simulator. Authentication on every route
is in test_api_auth.py.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.integration.test_processing import AUTH as SEGMENT
from tests.integration.test_standard_webhooks import CONFIG, signed
from tidings.delivery import outbox
from tidings.store.schema import outbox as outbox_table
from tidings.testing import WebhookSink
from tidings.testing.mailchimp import MailchimpSimulator

READ = "read-token-0123456789"
WRITE_ONLY = "write-token-0123456789"
OPERATOR = "operator-token-0123456789"
TOKENS = f"""
server:
  admin_tokens:
    - {{name: dashboards, token: "{READ}", scopes: [read]}}
    - {{name: robot, token: "${{ROBOT_TOKEN}}", scopes: [write]}}
    - {{name: operator, token: "{OPERATOR}", scopes: [read, write]}}
"""
ADMIN = TOKENS + CONFIG
R = {"authorization": f"Bearer {READ}"}
RW = {"authorization": f"Bearer {OPERATOR}"}

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MC_KEY = "0123456789abcdef0123456789abcdef-us14"
LIST = "a1b2c3d4e5"


def delivery_config(sink_url: str, mailchimp_url: str) -> str:
    return (
        TOKENS.replace("${ROBOT_TOKEN}", WRITE_ONLY)
        + f"""
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
destinations:
  crm:
    kind: webhook
    url: "{sink_url}/hooks/contacts"
    secret: "{SECRET}"
    profile_sync:
      fields:
        FNAME: profile.traits.first_name
  mc:
    kind: mailchimp
    api_key: "{MC_KEY}"
    list_id: "{LIST}"
    base_url: "{mailchimp_url}"
    tags: [tidings]
    profile_sync:
      fields:
        FNAME: profile.traits.first_name
  plain:
    kind: webhook
    url: "{sink_url}/hooks/plain"
    secret: "{SECRET}"
  mandrill:
    kind: mailchimp-transactional
    api_key: "md-0123456789"
"""
    )


@pytest.fixture
def sink():
    with WebhookSink(SECRET).running() as server:
        yield server


@pytest.fixture
def mailchimp():
    with MailchimpSimulator(MC_KEY, lists={LIST}).running() as server:
        yield server


async def store_some(client, clock, n: int) -> None:
    for i in range(n):
        body = json.dumps({"type": f"t{i}", "email": "ann@example.com"}).encode()
        response = await client.post("/hooks/app", content=body, headers=signed(body, f"id{i}", clock.now()))
        assert response.status_code == 200


async def segment(client, call: str, body: dict[str, Any]) -> None:
    response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=SEGMENT)
    assert response.status_code == 200, response.text


async def identify(client, n: int, traits: dict[str, Any], **ids: str) -> None:
    await segment(
        client,
        "identify",
        {"messageId": f"m{n}", "timestamp": "2026-03-01T10:00:00Z", "traits": traits, **ids},
    )


def outbox_rows(tidings) -> list[Any]:
    return tidings.store.read_sync(
        lambda c: list(c.execute(select(outbox_table).order_by(outbox_table.c.id)))
    )


def assert_bad(response, *named: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] in ("invalid_request", "bad_request"), body
    for name in named:
        assert name in body["detail"], body


# ------------------------------------------------------------------ the OpenAPI description


async def test_openapi_describes_each_admin_route_with_its_models_and_errors(running) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    error = "#/components/schemas/ErrorOut"
    mine = (
        "/api/v1/events",
        "/api/v1/profiles",
        "/api/v1/deliveries",
        "/api/v1/destinations",
        "/api/v1/flows",
    )
    checked = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert {"401", "403"} <= set(op["responses"]), where
            assert op["security"] == [{"HTTPBearer": []}], where
            if not path.startswith(mine):
                continue  # api/flows.py and others: documented by their owners
            checked += 1
            assert "$ref" in json.dumps(op["responses"]["200"]["content"]["application/json"]["schema"]), (
                where
            )
            for status in ("400", "401", "403"):
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": error}, (where, status)
            assert "422" not in op["responses"], where  # bad input is 400, and documented so
    assert checked == 11
    detail = spec["components"]["schemas"]["DeliveryDetailOut"]["properties"]
    assert {"payload", "history", "idempotency_key"} <= set(detail)
    assert spec["paths"]["/api/v1/deliveries/retry"]["post"]["responses"]["409"]["content"]


# ------------------------------------------------------------------ GET /api/v1/events


async def test_events_newest_first_with_paging_and_filters(running, clock) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        await store_some(client, clock, 5)
        page = (await client.get("/api/v1/events?limit=3", headers=R)).json()
        assert [e["topic"] for e in page["events"]] == ["t4", "t3", "t2"]
        assert page["events"][0]["payload_base64"] is None
        assert page["events"][0]["headers"]["webhook-id"] == "id4"
        rest = (await client.get(f"/api/v1/events?before_id={page['next_before_id']}", headers=R)).json()
        assert [e["topic"] for e in rest["events"]] == ["t1", "t0"]
        assert rest["next_before_id"] is None
        tail = (await client.get("/api/v1/events?after_id=3", headers=R)).json()
        assert [e["topic"] for e in tail["events"]] == ["t3", "t4"]
        window = (await client.get("/api/v1/events?after_id=1&before_id=4", headers=R)).json()
        assert [e["topic"] for e in window["events"]] == ["t1", "t2"]
        assert (await client.get("/api/v1/events?source=app&status=flagged", headers=R)).json()[
            "events"
        ] == []
        full = (await client.get("/api/v1/events?limit=1&include_payload=true", headers=R)).json()
        assert json.loads(base64.b64decode(full["events"][0]["payload_base64"]))["type"] == "t4"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("status=lost", "status"),
        ("before_id=abc", "before_id"),
        ("after_id=-1", "after_id"),
        ("include_payload=maybe", "include_payload"),
        ("after_id=5&before_id=6", "after_id"),
        ("source=nosuch", "'nosuch'"),
    ],
)
async def test_bad_event_query_is_400_naming_the_parameter(running, query, named) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        assert_bad(await client.get(f"/api/v1/events?{query}", headers=R), named)


# ------------------------------------------------------------- profiles: bad input (see test_profiles_api)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", "offset=x"])
async def test_bad_timeline_query_is_400_naming_the_parameter(running, query) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        response = await client.get(f"/api/v1/profiles/ann@example.com/timeline?{query}", headers=R)
        assert_bad(response, query.split("=")[0])


async def test_an_unknown_profile_is_404(running) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        response = await client.get("/api/v1/profiles/nobody@example.com", headers=R)
        assert response.status_code == 404
        assert response.json() == {"error": "not_found", "detail": "no profile matches 'nobody@example.com'"}


# ------------------------------------------------------------------ deliveries


async def test_a_delivery_shows_its_payload_and_every_attempt(running, sink, mailchimp, clock) -> None:
    async with running(delivery_config(sink.url, mailchimp.url)) as (tidings, client):
        await identify(client, 1, {"email": "ann@example.com", "first_name": "Ann"}, userId="u1")
        await tidings.processor.drain()
        [crm] = [r for r in outbox_rows(tidings) if r.destination == "crm"]
        sink.fail_next(status=503, body={"error": "down for a moment"})
        await tidings.dispatcher.run_once()
        clock.advance(60)
        await tidings.dispatcher.run_once()

        shown = (await client.get(f"/api/v1/deliveries/{crm.id}", headers=R)).json()
        assert (shown["id"], shown["destination"], shown["action"]) == (crm.id, "crm", "upsert_contact")
        assert (shown["status"], shown["attempts"], shown["error"]) == ("delivered", 2, None)
        assert shown["payload"] == {"profile_id": crm.profile_id}  # rendered when sent
        assert shown["profile_id"] == crm.profile_id
        assert shown["delivered_at"] is not None
        first, second = shown["history"]
        assert (first["outcome"], first["status_code"]) == ("retry", 503)
        assert "down for a moment" in first["error"]
        assert (second["outcome"], second["status_code"], second["error"]) == ("delivered", 200, None)
        assert second["request"] == {"action": "upsert_contact", "attempt": 2}
        assert all(isinstance(a["latency_ms"], int) for a in shown["history"])

        listed = (await client.get("/api/v1/deliveries?destination=crm", headers=R)).json()
        assert [d["id"] for d in listed] == [crm.id]
        missing = await client.get("/api/v1/deliveries/999999", headers=R)
        assert missing.status_code == 404
        assert missing.json() == {"error": "not_found", "detail": "no delivery with id 999999"}


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("/api/v1/deliveries/abc", "delivery_id"),
        ("/api/v1/deliveries/0", "delivery_id"),
        ("/api/v1/deliveries?status=lost", "status"),
        ("/api/v1/deliveries?limit=0", "limit"),
        ("/api/v1/deliveries?destination=nosuch", "'nosuch'"),
    ],
)
async def test_bad_delivery_query_is_400_naming_the_parameter(running, url, named) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        assert_bad(await client.get(url, headers=R), named)


async def test_deliveries_of_a_destination_no_longer_configured_can_still_be_listed(running, clock) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (tidings, client):
        tidings.store.write_sync(
            lambda c: outbox.enqueue(
                c, destination="old", action="track_event", idempotency_key="o1", payload={}, now=clock.now()
            )
        )
        listed = (await client.get("/api/v1/deliveries?destination=old", headers=R)).json()
        assert [d["destination"] for d in listed] == ["old"]
        assert (await client.get("/api/v1/deliveries?destination=old&status=dead", headers=R)).json() == []


async def dead_letters(tidings, clock, n: int) -> list[int]:
    def make(conn) -> None:
        for i in range(n):
            outbox.enqueue(
                conn,
                destination="crm",
                action="track_event",
                idempotency_key=f"d{i}",
                payload={"event": "x"},
                now=clock.now(),
            )
        conn.execute(update(outbox_table).values(status="dead", attempts=5, last_error="gave up"))

    tidings.store.write_sync(make)
    return [r.id for r in outbox_rows(tidings)]


async def test_retry_sends_these_dead_letters_or_all_and_refuses_the_rest_whole(
    running, sink, mailchimp, clock
) -> None:
    async with running(delivery_config(sink.url, mailchimp.url)) as (tidings, client):
        a, b, c = await dead_letters(tidings, clock, 3)
        tidings.store.write_sync(
            lambda conn: conn.execute(
                update(outbox_table).where(outbox_table.c.id == c).values(status="delivered")
            )
        )

        unknown = await client.post("/api/v1/deliveries/retry", json={"ids": [a, 999999]}, headers=RW)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "not_found", "detail": "no delivery with id 999999"}
        alive = await client.post("/api/v1/deliveries/retry", json={"ids": [a, c]}, headers=RW)
        assert alive.status_code == 409
        assert alive.json()["detail"] == f"only dead letters are retried: delivery {c} is delivered"
        assert [r.status for r in outbox_rows(tidings)] == ["dead", "dead", "delivered"]  # nothing moved

        one = await client.post("/api/v1/deliveries/retry", json={"ids": [a, a]}, headers=RW)
        assert one.json() == {"queued": 1}
        rest = await client.post("/api/v1/deliveries/retry", json={}, headers=RW)
        assert rest.json() == {"queued": 1}
        assert [(r.status, r.attempts) for r in outbox_rows(tidings)] == [
            ("pending", 0),
            ("pending", 0),
            ("delivered", 5),
        ]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"ids": []}, "ids"),
        ({"ids": [0]}, "ids"),
        ({"ids": ["x"]}, "ids"),
        ({"ids": 5}, "ids"),
        ({"id": 5}, "id"),  # a typo must not mean "every dead letter"
        ([], "body"),
        (None, "body"),
    ],
    ids=["empty", "zero", "text", "not-a-list", "typo", "array", "no-body"],
)
async def test_bad_retry_body_is_400_and_retries_nothing(running, clock, body, named) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (tidings, client):
        tidings.store.write_sync(
            lambda c: outbox.enqueue(
                c, destination="crm", action="track_event", idempotency_key="d", payload={}, now=clock.now()
            )
        )
        tidings.store.write_sync(lambda c: c.execute(update(outbox_table).values(status="dead")))
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        assert_bad(await client.post("/api/v1/deliveries/retry", headers=RW, **kwargs), named)
        assert [r.status for r in outbox_rows(tidings)] == ["dead"]


async def test_malformed_json_is_400(running) -> None:
    async with running(ADMIN, {"ROBOT_TOKEN": WRITE_ONLY}) as (_, client):
        response = await client.post(
            "/api/v1/deliveries/retry",
            content=b'{"ids": [1,',
            headers={**RW, "content-type": "application/json"},
        )
        assert_bad(response, "body")


# ------------------------------------------------------------------ destinations


async def test_destinations_list_kind_pause_and_counts(running, sink, mailchimp, clock) -> None:
    async with running(delivery_config(sink.url, mailchimp.url)) as (tidings, client):
        await identify(client, 1, {"email": "ann@example.com", "first_name": "Ann"}, userId="u1")
        await tidings.processor.drain()
        await tidings.dispatcher.drain()
        until = clock.now() + timedelta(minutes=5)
        tidings.store.write_sync(
            lambda c: outbox.pause(c, "mc", clock.now(), until, "mailchimp: 401 API key")
        )

        found = {d["name"]: d for d in (await client.get("/api/v1/destinations", headers=R)).json()}
        assert list(found) == ["crm", "mc", "plain", "mandrill"]  # as configured
        crm, mc = found["crm"], found["mc"]
        assert (crm["kind"], crm["profile_sync"], crm["paused_until"]) == ("webhook", True, None)
        assert crm["deliveries"] == {"pending": 0, "in_flight": 0, "delivered": 1, "dead": 0}
        assert "upsert_contact" in crm["actions"] and "send_template" in found["mandrill"]["actions"]
        assert mc["paused_reason"] == "mailchimp: 401 API key"
        assert mc["paused_until"].startswith(until.strftime("%Y-%m-%dT%H:%M:%S"))
        assert found["plain"]["profile_sync"] is False
        assert found["mandrill"]["deliveries"] == {"pending": 0, "in_flight": 0, "delivered": 0, "dead": 0}

        clock.advance(timedelta(minutes=6))  # a pause that has run out is not shown
        later = {d["name"]: d for d in (await client.get("/api/v1/destinations", headers=R)).json()}
        assert (later["mc"]["paused_until"], later["mc"]["paused_reason"]) == (None, None)


async def customers(tidings, client) -> None:
    """Four profiles, three current: Ann (u1, merged with anon-1), Bob (phone only), and one
    anonymous visitor with nothing to key a contact on."""
    await segment(
        client,
        "track",
        {
            "messageId": "t1",
            "anonymousId": "anon-1",
            "event": "Product Viewed",
            "timestamp": "2026-03-01T09:00:00Z",
            "properties": {},
        },
    )
    await identify(client, 2, {"email": "ann@example.com", "first_name": "Ann"}, userId="u1")
    await identify(client, 3, {"phone": "+15005550006", "first_name": "Bob"}, userId="u2")
    await segment(
        client,
        "track",
        {
            "messageId": "t4",
            "anonymousId": "anon-2",
            "event": "Product Viewed",
            "timestamp": "2026-03-01T09:00:00Z",
            "properties": {},
        },
    )
    await tidings.processor.drain()
    await identify(client, 5, {}, userId="u1", anonymousId="anon-1")  # merges two profiles
    await tidings.processor.drain()


async def test_backfill_pushes_every_current_contactable_profile_once_per_run_without_triggers(
    running, sink, mailchimp
) -> None:
    async with running(delivery_config(sink.url, mailchimp.url)) as (tidings, client):
        await customers(tidings, client)
        await tidings.dispatcher.drain()  # the live syncs, sent as usual
        live = [t.body for t in mailchimp.tags]
        assert live and all(body["is_syncing"] is False for body in live)
        mailchimp.tags.clear()

        first = await client.post("/api/v1/destinations/crm/backfill", json={"run": "r1"}, headers=RW)
        assert first.status_code == 200, first.text
        assert first.json() == {"destination": "crm", "run": "r1", "profiles": 2, "queued": 2}
        again = await client.post("/api/v1/destinations/crm/backfill", json={"run": "r1"}, headers=RW)
        assert again.json()["queued"] == 0  # the same run queues nothing twice
        other = await client.post("/api/v1/destinations/crm/backfill", headers=RW)  # no body: a new run
        assert other.json()["queued"] == 0 and other.json()["run"] != "r1"  # still pending: coalesced
        pending = [r for r in outbox_rows(tidings) if r.status == "pending"]
        assert [(r.destination, r.payload["backfill"]) for r in pending] == [("crm", True), ("crm", True)]

        sink.received.clear()
        await tidings.dispatcher.drain()
        pushed = sorted((p["data"]["fields"]["FNAME"], p["data"]["backfill"]) for p in sink.received.values())
        assert pushed == [("Ann", True), ("Bob", True)]  # fresh fields, flag kept through rendering

        # Once sent, a new run pushes again; at Mailchimp in its no-trigger mode (is_syncing).
        mc = (await client.post("/api/v1/destinations/mc/backfill", json={}, headers=RW)).json()
        assert (mc["profiles"], mc["queued"]) == (2, 2)
        await tidings.dispatcher.drain()
        # Bob has no email: Mailchimp refuses him (a dead letter), Ann's tags are synced quietly.
        assert [t.body["is_syncing"] for t in mailchimp.tags] == [True]
        assert mailchimp.member(LIST, "ann@example.com")["merge_fields"]["FNAME"] == "Ann"
        again_crm = await client.post("/api/v1/destinations/crm/backfill", json={"run": "r2"}, headers=RW)
        assert again_crm.json()["queued"] == 2


@pytest.mark.parametrize(
    ("name", "body", "status", "detail"),
    [
        ("nosuch", {}, 404, "no destination named 'nosuch' (configured: crm, mandrill, mc, plain)"),
        ("mandrill", {}, 400, "destination 'mandrill' (mailchimp-transactional) does not keep contacts"),
        ("plain", {}, 400, "destination 'plain' has no profile_sync"),
        ("crm", {"run": "has space"}, 400, "body.run"),
        ("crm", {"run": "x" * 65}, 400, "body.run"),
        ("crm", {"runs": "r1"}, 400, "body.runs"),
        ("crm", [], 400, "body"),
    ],
    ids=["unknown", "no-contacts", "no-sync", "run-space", "run-long", "typo", "array"],
)
async def test_bad_backfill_is_refused_naming_the_problem(
    running, sink, mailchimp, name, body, status, detail
) -> None:
    async with running(delivery_config(sink.url, mailchimp.url)) as (tidings, client):
        response = await client.post(f"/api/v1/destinations/{name}/backfill", json=body, headers=RW)
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
        assert outbox_rows(tidings) == []
