"""The outbox and the dispatcher, against a real HTTP receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import select, update

from tests.integration.test_processing import AUTH, track
from tidings.delivery import outbox
from tidings.delivery.effects import Effect, Receipt
from tidings.destinations.base import Destination
from tidings.store.schema import delivery_attempts, destination_state
from tidings.store.schema import outbox as outbox_table
from tidings.testing import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def config(url: str) -> str:
    return f"""
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
destinations:
  crm:
    kind: webhook
    url: "{url}/hooks/contacts"
    secret: "{SECRET}"
    profile_sync:
      fields:
        FNAME: profile.traits.first_name
        CART: profile.traits.cart_value
        SUBSCRIBED: profile.consent.email
"""


@pytest.fixture
def sink():
    with WebhookSink(SECRET).running() as server:
        yield server


async def post(client, call: str, body: dict[str, Any]) -> None:
    import json

    response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=AUTH)
    assert response.status_code == 200, response.text


def rows(tidings, table=outbox_table):
    order = next(iter(table.primary_key.columns))
    return tidings.store.read_sync(lambda c: list(c.execute(select(table).order_by(order))))


async def test_profile_changes_reach_the_destination_once_with_the_freshest_values(running, sink) -> None:
    async with running(config(sink.url)) as (tidings, client):
        await post(
            client,
            "identify",
            {
                "messageId": "a",
                "userId": "u1",
                "timestamp": "2026-03-01T10:00:00Z",
                "traits": {"email": "ann@example.com", "first_name": "Ann"},
            },
        )
        await tidings.processor.drain()
        for n, value in enumerate((10, 20, 30)):  # a burst before anything was sent
            await post(
                client,
                "track",
                track(
                    n,
                    "Checkout Started",
                    f"2026-03-01T10:0{n + 1}:00Z",
                    {"checkout_id": "c1", "value": value},
                ),
            )
            await tidings.processor.drain()
        assert len([r for r in rows(tidings) if r.status == "pending"]) == 1  # coalesced
        await tidings.dispatcher.drain()
        [(msg_id, received)] = sink.received.items()
        assert received["type"] == "upsert_contact"
        assert received["data"]["email"] == "ann@example.com"
        assert received["data"]["fields"] == {"FNAME": "Ann", "CART": 30}
        [row] = rows(tidings)
        assert (row.status, row.attempts, row.idempotency_key) == ("delivered", 1, msg_id)
        text = (await client.get("/metrics")).text
        assert 'tidings_deliveries_total{destination="crm",outcome="delivered"} 1.0' in text


async def push(tidings, clock) -> None:
    tidings.store.write_sync(
        lambda c: outbox.enqueue(
            c,
            destination="crm",
            action="upsert_contact",
            idempotency_key="k1",
            payload={"email": "x@example.com", "fields": {}},
            now=clock.now(),
        )
    )


async def test_a_5xx_is_retried_later_and_delivered_once(running, sink, clock) -> None:
    async with running(config(sink.url)) as (tidings, _):
        await push(tidings, clock)
        sink.fail_next(2, status=503)
        await tidings.dispatcher.run_once()
        [row] = rows(tidings)
        assert row.status == "pending"
        assert row.next_attempt_at >= clock.now() + timedelta(seconds=3)  # 5 s +-20 %
        assert await tidings.dispatcher.run_once() == 0  # not due yet
        clock.advance(10)
        await tidings.dispatcher.run_once()
        clock.advance(60)
        await tidings.dispatcher.run_once()
        [row] = rows(tidings)
        assert (row.status, row.attempts) == ("delivered", 3)
        assert [a.outcome for a in rows(tidings, delivery_attempts)] == ["retry", "retry", "delivered"]
        assert len(sink.received) == 1


async def test_retry_after_is_honoured(running, sink, clock) -> None:
    async with running(config(sink.url)) as (tidings, _):
        await push(tidings, clock)
        sink.fail_next(status=429, headers={"Retry-After": "120"})
        await tidings.dispatcher.run_once()
        [row] = rows(tidings)
        assert row.next_attempt_at >= clock.now() + timedelta(seconds=120)


async def test_a_permanent_error_goes_to_the_dead_letters_with_the_vendors_words(
    running, sink, clock
) -> None:
    import io
    import json
    import logging

    from tidings.logging import JsonFormatter

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("tidings").addHandler(handler)
    async with running(config(sink.url)) as (tidings, _):
        await push(tidings, clock)
        sink.fail_next(status=422, body={"error": "field FNAME is unknown"})
        try:
            await tidings.dispatcher.run_once()
        finally:
            logging.getLogger("tidings").removeHandler(handler)
        [dead] = [json.loads(x) for x in lines.getvalue().splitlines() if '"delivery_dead"' in x]
        [row] = rows(tidings)
        assert (dead["outbox_id"], dead["destination"], dead["effect"]) == (row.id, "crm", "upsert_contact")
        assert "FNAME" not in lines.getvalue()  # the vendor's words stay in the store
        assert row.status == "dead"
        assert "422" in row.last_error and "field FNAME is unknown" in row.last_error
        assert tidings.store.write_sync(lambda c: outbox.retry_dead(c, clock.now())) == 1
        await tidings.dispatcher.run_once()
        assert rows(tidings)[0].status == "delivered"


async def test_rejected_credentials_pause_the_destination(running, sink, clock) -> None:
    async with running(config(sink.url)) as (tidings, _):
        await push(tidings, clock)
        sink.fail_next(status=401)
        await tidings.dispatcher.run_once()
        [state] = rows(tidings, destination_state)
        assert "credentials rejected" in state.paused_reason
        assert rows(tidings)[0].status == "pending"
        clock.advance(60)
        assert await tidings.dispatcher.run_once() == 0  # paused: nothing is claimed
        clock.advance(300)
        await tidings.dispatcher.run_once()  # the pause is over: the next effect probes it
        assert rows(tidings)[0].status == "delivered"
        assert rows(tidings, destination_state)[0].paused_until is None


async def test_failures_in_a_row_open_the_circuit(running, sink, clock) -> None:
    async with running(config(sink.url)) as (tidings, _):
        for n in range(5):
            tidings.store.write_sync(
                lambda c, n=n: outbox.enqueue(
                    c,
                    destination="crm",
                    action="upsert_contact",
                    idempotency_key=f"k{n}",
                    payload={"email": "x@example.com", "fields": {}},
                    now=clock.now(),
                )
            )
        sink.fail_next(5, status=500)
        await tidings.dispatcher.run_once()
        [state] = rows(tidings, destination_state)
        assert state.consecutive_failures == 5
        assert state.paused_until > clock.now()
        assert "circuit open" in state.paused_reason


class OneShot(Destination[Any]):
    """A vendor whose send cannot be repeated safely (no idempotency key of any kind)."""

    kind: ClassVar[str] = "oneshot"
    actions = frozenset({"send_template"})
    idempotent_actions = frozenset()

    async def deliver(self, effect: Effect) -> Receipt:
        return Receipt()


async def test_a_send_whose_outcome_a_crash_left_unknown_is_not_repeated(running, sink, clock) -> None:
    async with running(config(sink.url)) as (tidings, _):
        tidings.dispatcher.destinations = {
            **tidings.destinations,
            "mailer": OneShot("mailer", None, tidings.http),
        }
        for name, action in (("mailer", "send_template"), ("crm", "upsert_contact")):
            tidings.store.write_sync(
                lambda c, name=name, action=action: outbox.enqueue(
                    c,
                    destination=name,
                    action=action,
                    idempotency_key=f"{name}-1",
                    payload={"email": "x@example.com", "fields": {}},
                    now=clock.now(),
                )
            )
        # both were taken by a process that died before settling them: in flight, lease run out
        tidings.store.write_sync(
            lambda c: c.execute(
                update(outbox_table).values(
                    status="in_flight", lease_until=clock.now() - timedelta(seconds=1), attempts=1
                )
            )
        )
        tidings.dispatcher.limiters["mailer"] = tidings.dispatcher.limiters["crm"]
        await tidings.dispatcher.run_once()
        by_name = {r.destination: r for r in rows(tidings)}
        assert by_name["crm"].status == "delivered"  # an upsert is safe to repeat
        assert by_name["mailer"].status == "dead"
        assert "outcome unknown" in by_name["mailer"].last_error


async def test_dead_letters_are_listed_and_retried_through_the_api_and_the_cli(running, sink, clock) -> None:
    from typer.testing import CliRunner

    from tidings.cli import app

    read, write = "read-token-0123456789", "write-token-0123456789"
    yaml_text = (
        config(sink.url)
        + f"""
server:
  admin_tokens:
    - {{name: r, token: "{read}", scopes: [read]}}
    - {{name: w, token: "{write}", scopes: [read, write]}}
"""
    )
    async with running(yaml_text) as (tidings, client):
        await push(tidings, clock)
        sink.fail_next(status=400, body={"error": "bad field"})
        await tidings.dispatcher.run_once()
        dead = (
            await client.get("/api/v1/deliveries?status=dead", headers={"authorization": f"Bearer {read}"})
        ).json()
        assert [(d["destination"], d["status"]) for d in dead] == [("crm", "dead")]
        assert "bad field" in dead[0]["error"]
        refused = await client.post(
            "/api/v1/deliveries/retry", json={}, headers={"authorization": f"Bearer {read}"}
        )
        assert refused.status_code == 403
        queued = await client.post(
            "/api/v1/deliveries/retry",
            json={"ids": [dead[0]["id"]]},
            headers={"authorization": f"Bearer {write}"},
        )
        assert queued.json() == {"queued": 1}
        await tidings.dispatcher.run_once()
        assert rows(tidings)[0].status == "delivered"
        if tidings.store.dialect == "sqlite":  # the CLI reads the same store
            path = tidings.settings.storage.url.removeprefix("sqlite:///")
            cfg = f"{path}.yaml"
            with open(cfg, "w") as f:
                f.write(f"storage:\n  url: sqlite:///{path}\n")
            listed = CliRunner().invoke(app, ["deliveries", "list", "--json", "-c", cfg])
            assert listed.exit_code == 0, listed.output
            assert '"status": "delivered"' in listed.output


async def test_the_background_dispatcher_sends_what_the_processor_queues(running, sink) -> None:
    """tidings serve's own loops: ingest -> processor -> outbox -> dispatcher, nobody driving them."""
    import asyncio

    async with running(config(sink.url), process=True) as (tidings, client):
        await post(
            client,
            "identify",
            {
                "messageId": "a",
                "userId": "u1",
                "timestamp": "2026-03-01T10:00:00Z",
                "traits": {"email": "ann@example.com", "first_name": "Ann"},
            },
        )
        for _ in range(500):  # wait for the condition, up to 10 s
            if sink.received:
                break
            await asyncio.sleep(0.02)
        [received] = sink.received.values()
        assert received["data"]["fields"]["FNAME"] == "Ann"


def enqueue_many(tidings, destination: str, count: int, now, prefix: str = "") -> None:
    def write(c) -> None:
        for n in range(count):
            outbox.enqueue(
                c,
                destination=destination,
                action="upsert_contact",
                idempotency_key=f"{destination}-{prefix}{n}",
                payload={"email": f"c{n}@example.com", "fields": {}},
                now=now,
            )

    tidings.store.write_sync(write)


def statuses(tidings) -> dict[str, dict[str, int]]:
    return tidings.store.read_sync(outbox.counts)


async def test_a_backlog_of_one_destination_does_not_hold_back_another(running, sink, clock) -> None:
    """Destinations share a claim in turn, and a paused one is not even looked at."""
    erp = f'  erp:\n    kind: webhook\n    url: "{sink.url}/hooks/erp"\n    secret: "{SECRET}"\n'
    two = config(sink.url) + erp
    async with running(two) as (tidings, _):
        enqueue_many(tidings, "crm", 150, clock.now())
        clock.advance(timedelta(seconds=1))
        enqueue_many(tidings, "erp", 1, clock.now())  # queued after all of crm's
        assert await tidings.dispatcher.run_once() == 100
        assert statuses(tidings) == {"crm": {"delivered": 99, "pending": 51}, "erp": {"delivered": 1}}

        tidings.store.write_sync(
            lambda c: outbox.pause(c, "crm", clock.now(), clock.now() + timedelta(minutes=5), "test")
        )
        enqueue_many(tidings, "erp", 1, clock.now(), prefix="b")
        assert await tidings.dispatcher.run_once() == 1
        assert statuses(tidings)["crm"] == {"delivered": 99, "pending": 51}
        clock.advance(timedelta(minutes=6))  # the pause is over
        await tidings.dispatcher.drain()
        assert statuses(tidings) == {"crm": {"delivered": 150}, "erp": {"delivered": 2}}


async def test_effects_of_a_destination_no_longer_configured_are_dead_letters(running, sink, clock) -> None:
    async with running(config(sink.url)) as (tidings, _):
        enqueue_many(tidings, "removed", 2, clock.now())
        enqueue_many(tidings, "crm", 1, clock.now())
        assert await tidings.dispatcher.run_once() == 3
        [dead, _, delivered] = rows(tidings)
        assert (dead.status, delivered.status) == ("dead", "delivered")
        assert dead.last_error == "destination 'removed' is not configured"


@pytest.mark.parametrize("syncs", [True, False])
async def test_the_dispatcher_is_woken_for_profile_pushes_only(running, sink, syncs) -> None:
    """An idle dispatcher woken for nothing would spend a write transaction looking."""
    yaml_text = config(sink.url) if syncs else config(sink.url).split("    profile_sync:")[0]
    async with running(yaml_text) as (tidings, client):
        woken: list[bool] = []
        tidings.processor.on_enqueued = lambda: woken.append(True)
        identify = {"messageId": "a", "userId": "u1", "traits": {"email": "ann@example.com"}}
        await post(client, "identify", identify)
        await tidings.processor.drain()
        assert woken == ([True] if syncs else [])
        assert len(rows(tidings)) == (1 if syncs else 0)
