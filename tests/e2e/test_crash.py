"""Durability, end to end through a real `tidings serve` process, on SQLite (FULL) and PostgreSQL.

A 2xx from tidings is a promise: the sender will not retry, so the event must be in the store
even if the process is killed right after answering. And since a sender that got no answer
retries, a re-delivery after restart must be recognised, never stored twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import ADMIN_TOKEN, Server

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOTAL = 300
KILL_AFTER = 60  # acknowledged answers before the SIGKILL; the other requests are still in flight
BURST = 200  # concurrent requests against max_pending_writes: 1
RETRIED = 25  # refused senders that retry (one at a time, so the test stays short)
TIMEOUT = httpx.Timeout(15.0)


def config(store_url: str, max_pending_writes: int = 20000) -> str:
    return f"""
server:
  max_pending_writes: {max_pending_writes}
  admin_tokens:
    - {{name: e2e, token: "{ADMIN_TOKEN}", scopes: [read]}}
storage:
  url: "{store_url}"
  sqlite_synchronous: FULL
sources:
  app:
    kind: standard-webhooks
    secrets: ["{SECRET}"]
"""


def body_of(msg_id: str) -> bytes:
    return json.dumps({"type": "order.created", "data": {"order": msg_id}}).encode()


def signed(body: bytes, msg_id: str) -> dict[str, str]:
    """Signed now, by the official standardwebhooks library, as a sender would on each attempt."""
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


async def deliver(
    client: httpx.AsyncClient,
    ids: Iterable[str],
    on_answer: Callable[[str, httpx.Response], None] = lambda _id, _r: None,
) -> tuple[dict[str, httpx.Response], set[str]]:
    """POST every id concurrently: (answers by id, ids whose connection failed without an answer)."""
    answers: dict[str, httpx.Response] = {}
    unanswered: set[str] = set()

    async def one(msg_id: str) -> None:
        body = body_of(msg_id)
        try:
            response = await client.post("/hooks/app", content=body, headers=signed(body, msg_id))
        except httpx.TransportError:
            unanswered.add(msg_id)
            return
        answers[msg_id] = response
        on_answer(msg_id, response)

    await asyncio.gather(*(one(i) for i in ids))
    return answers, unanswered


async def stored_keys(server: Server) -> list[str]:
    """Every stored dedupe key of source `app`, through the admin API, paging to the end."""
    keys: list[str] = []
    params: dict[str, str | int] = {"source": "app", "limit": 500}
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        while True:
            response = await client.get("/api/v1/events", params=params, headers=auth)
            assert response.status_code == 200, response.text
            page = response.json()
            keys += [event["dedupe_key"] for event in page["events"]]
            if page["next_before_id"] is None:
                return keys
            params["before_id"] = page["next_before_id"]


def client_for(server: Server, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits)


async def test_acknowledged_webhooks_survive_sigkill_and_are_not_stored_twice(serve, store_url) -> None:
    server: Server = serve(config(store_url))
    server.start()
    ids = [f"msg_{i:04d}" for i in range(TOTAL)]
    acked: set[str] = set()
    answered_before_kill: dict[str, int] = {}
    killed = False

    def on_answer(msg_id: str, response: httpx.Response) -> None:
        nonlocal killed
        if killed:
            return
        answered_before_kill[msg_id] = response.status_code
        if response.is_success:
            acked.add(msg_id)
        if len(acked) >= KILL_AFTER:
            killed = True
            server.kill()  # SIGKILL, with the remaining requests in flight or not yet sent

    async with client_for(server, 64) as client:
        answers, unanswered = await deliver(client, ids, on_answer)
    assert killed, "the server was never killed: fewer than KILL_AFTER acknowledgements"
    assert {s for s in answered_before_kill.values()} == {200}, answered_before_kill
    assert unanswered, "every request was answered: the kill did not happen with requests in flight"
    # An answer read off the socket after the kill was still sent by tidings: a promise too.
    acked |= {i for i, r in answers.items() if r.is_success}

    server.start()  # a new process on the same store
    keys = await stored_keys(server)
    assert sorted(set(keys)) == sorted(keys), "a webhook was stored twice"
    missing = acked - set(keys)
    assert not missing, f"{len(missing)} acknowledged webhooks were lost: {sorted(missing)[:10]}"

    # Every sender that got no answer retries; those already stored must be recognised.
    async with client_for(server, 64) as client:
        answers, unanswered = await deliver(client, ids)
    assert not unanswered
    assert {r.status_code for r in answers.values()} == {200}
    for msg_id in acked:
        assert answers[msg_id].json() == {"status": "accepted", "accepted": 0, "duplicates": 1}
    keys = await stored_keys(server)
    assert sorted(keys) == sorted(ids), "after re-delivery, each webhook must be stored exactly once"


async def test_overload_answers_only_200_or_503_with_retry_after_and_every_200_is_stored(
    serve, store_url
) -> None:
    server: Server = serve(config(store_url, max_pending_writes=1))
    server.start()
    ids = [f"load_{i:04d}" for i in range(BURST)]
    async with client_for(server, BURST) as client:
        answers, unanswered = await deliver(client, ids)
    assert not unanswered
    statuses = {i: r.status_code for i, r in answers.items()}
    assert set(statuses.values()) <= {200, 503}, sorted(set(statuses.values()))
    refused = {i for i, s in statuses.items() if s == 503}
    accepted = {i for i, s in statuses.items() if s == 200}
    assert refused, f"max_pending_writes: 1 under {BURST} concurrent requests should refuse some"
    assert accepted
    for msg_id in refused:
        response = answers[msg_id]
        assert response.json()["error"] == "overloaded"
        assert response.headers["retry-after"].isdigit()
    keys = await stored_keys(server)
    assert sorted(keys) == sorted(accepted), "exactly the acknowledged webhooks are stored"

    # Refused senders retry (one at a time here, so nothing is waiting) and are then stored.
    retrying = sorted(refused)[:RETRIED]
    async with client_for(server, 1) as client:
        for msg_id in retrying:
            retried, unanswered = await deliver(client, [msg_id])
            assert not unanswered
            assert retried[msg_id].status_code == 200, retried[msg_id].text
    keys = await stored_keys(server)
    assert sorted(keys) == sorted(accepted | set(retrying))
