"""What every source kind shares: refusals with a status and a JSON body, overload, group commit."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import inbox_rows
from tests.integration.test_standard_webhooks import CONFIG, signed


async def test_unknown_source_is_404(running) -> None:
    async with running(CONFIG) as (tidings, client):
        response = await client.post(
            "/hooks/nope", content=b"{}", headers={"content-type": "application/json"}
        )
        assert response.status_code == 404
        assert response.json() == {
            "error": "unknown_source",
            "detail": "no source named 'nope' is configured",
        }


async def test_wrong_content_type_is_415(running, clock) -> None:
    body = b'{"type":"x"}'
    headers = {**signed(body, "m1", clock.now()), "content-type": "text/plain"}
    async with running(CONFIG) as (tidings, client):
        response = await client.post("/hooks/app", content=body, headers=headers)
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"
        assert "text/plain" in response.json()["detail"]
        assert inbox_rows(tidings) == []


async def test_body_over_the_limit_is_413_by_declared_length(running, clock) -> None:
    config = CONFIG + "    max_body_bytes: 100\n"
    body = json.dumps({"type": "x", "pad": "a" * 200}).encode()
    async with running(config) as (tidings, client):
        response = await client.post("/hooks/app", content=body, headers=signed(body, "m2", clock.now()))
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        assert inbox_rows(tidings) == []


async def test_body_over_the_limit_is_413_while_streaming(running, clock) -> None:
    """A chunked body with no Content-Length is cut off as soon as it passes the limit."""
    config = CONFIG.replace("sources:", "server:\n  max_body_bytes: 1000\nsources:")
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # would be 1 MB
            sent += 1000
            yield b"x" * 1000

    async with running(config) as (tidings, client):
        response = await client.post("/hooks/app", content=chunks(), headers=signed(b"", "m3", clock.now()))
        assert response.status_code == 413
        assert sent < 10_000  # stopped reading early, not after the whole megabyte
        assert inbox_rows(tidings) == []


async def test_unparseable_content_length_is_400(running, clock) -> None:
    async with running(CONFIG) as (_, client):
        request = client.build_request(
            "POST", "/hooks/app", content=b"{}", headers=signed(b"{}", "m4", clock.now())
        )
        request.headers["content-length"] = "12x"
        response = await client.send(request)
        assert response.status_code == 400
        assert response.json()["error"] == "bad_content_length"


async def test_refusals_leave_other_requests_alone(running, clock) -> None:
    """Bad requests mixed into good ones: every good one is stored, every bad one refused."""
    async with running(CONFIG) as (tidings, client):

        async def good(i: int) -> httpx.Response:
            body = json.dumps({"type": "t", "n": i}).encode()
            return await client.post("/hooks/app", content=body, headers=signed(body, f"g{i}", clock.now()))

        async def bad(i: int) -> httpx.Response:
            return await client.post(
                "/hooks/app", content=b"{}", headers={"content-type": "application/json"}
            )

        answers = await asyncio.gather(*(good(i) if i % 2 else bad(i) for i in range(40)))
        assert [a.status_code for a in answers] == [200 if i % 2 else 401 for i in range(40)]
        assert sorted(r.dedupe_key for r in inbox_rows(tidings)) == sorted(f"g{i}" for i in range(1, 40, 2))


@contextmanager
def store_locked(tidings) -> Iterator[None]:
    """Hold the inbox's write lock from another connection, as a slow disk or a busy peer would."""
    engine = tidings.store.engine
    conn = engine.connect()
    if tidings.store.dialect == "sqlite":
        conn = conn.execution_options(tidings_write=True)
        transaction = conn.begin()
    else:
        transaction = conn.begin()
        conn.execute(text("LOCK TABLE dedupe_keys IN ACCESS EXCLUSIVE MODE"))
    try:
        yield
    finally:
        transaction.rollback()
        conn.close()


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_overload_answers_503_with_retry_after_and_loses_nothing(running, clock) -> None:
    config = CONFIG.replace("sources:", "server:\n  max_pending_writes: 5\nsources:")
    async with running(config) as (tidings, client):

        async def send(i: int) -> httpx.Response:
            body = json.dumps({"type": "t", "n": i}).encode()
            return await client.post("/hooks/app", content=body, headers=signed(body, f"o{i}", clock.now()))

        lock = store_locked(tidings)
        lock.__enter__()
        released = False
        try:
            first = asyncio.create_task(send(0))  # taken by the committer, which now waits on the lock
            await wait_until(lambda: tidings.committer.committing == 1)
            queued = [asyncio.create_task(send(i)) for i in range(1, 6)]
            await wait_until(lambda: tidings.committer.pending == 5)
            refused = await asyncio.gather(*(send(i) for i in range(6, 12)))
            assert {r.status_code for r in refused} == {503}
            assert refused[0].headers["retry-after"] == "1"
            assert refused[0].json()["error"] == "overloaded"
            threading.Thread(target=lock.__exit__, args=(None, None, None)).start()
            released = True
            accepted = [await first, *await asyncio.gather(*queued)]
        finally:
            if not released:
                lock.__exit__(None, None, None)
        assert {r.status_code for r in accepted} == {200}
        assert sorted(r.dedupe_key for r in inbox_rows(tidings)) == sorted(f"o{i}" for i in range(6))


async def test_concurrent_requests_share_commits(running, clock) -> None:
    async with running(CONFIG) as (tidings, client):
        bodies = [json.dumps({"type": "t", "n": i}).encode() for i in range(200)]
        answers = await asyncio.gather(
            *(
                client.post("/hooks/app", content=b, headers=signed(b, f"c{i}", clock.now()))
                for i, b in enumerate(bodies)
            )
        )
        assert all(a.status_code == 200 for a in answers)
        assert len(inbox_rows(tidings)) == 200
        batches = tidings.metrics.commit_batch_size.collect()[0]
        count = next(s.value for s in batches.samples if s.name.endswith("_count"))
        assert count < 100  # 200 requests in far fewer transactions


async def test_same_id_twice_in_one_commit_is_stored_once(running, clock) -> None:
    body = b'{"type":"t"}'
    async with running(CONFIG) as (tidings, client):
        answers = await asyncio.gather(
            *(
                client.post("/hooks/app", content=body, headers=signed(body, "same", clock.now()))
                for _ in range(5)
            )
        )
        assert sorted(a.json()["accepted"] for a in answers) == [0, 0, 0, 0, 1]
        assert len(inbox_rows(tidings)) == 1


async def test_dedupe_keys_expire_after_the_window(running, clock) -> None:
    from tidings.store.inbox import purge_dedupe_keys

    config = CONFIG.replace("sources:", "storage:\n  dedupe_window: 1h\nsources:")
    body = b'{"type":"t"}'
    async with running(config) as (tidings, client):
        await client.post("/hooks/app", content=body, headers=signed(body, "w1", clock.now()))
        clock.advance(3599)
        assert tidings.store.write_sync(lambda c: purge_dedupe_keys(c, clock.now())) == 0
        again = await client.post("/hooks/app", content=body, headers=signed(body, "w1", clock.now()))
        assert again.json()["duplicates"] == 1
        clock.advance(2)
        assert tidings.store.write_sync(lambda c: purge_dedupe_keys(c, clock.now())) == 1
        late = await client.post("/hooks/app", content=body, headers=signed(body, "w1", clock.now()))
        assert late.json()["accepted"] == 1


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health(running, path) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.get(path)
        assert response.status_code == 200


async def test_readyz_fails_when_the_store_is_gone(running) -> None:
    async with running(CONFIG) as (tidings, client):
        tidings.store.engine.dispose()
        original = tidings.store.engine.url
        from sqlalchemy import create_engine

        tidings.store.engine = create_engine(
            original.set(database="/nonexistent/dir/x.db")
            if tidings.store.dialect == "sqlite"
            else original.set(port=1),
            connect_args={"connect_timeout": 1} if tidings.store.dialect != "sqlite" else {},
        )
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"] == "store_unavailable"


async def test_metrics_count_outcomes(running, clock) -> None:
    body = b'{"type":"t"}'
    async with running(CONFIG) as (_, client):
        await client.post("/hooks/app", content=body, headers=signed(body, "x1", clock.now()))
        await client.post("/hooks/app", content=body, headers=signed(body, "x1", clock.now()))
        await client.post("/hooks/app", content=body, headers={"content-type": "application/json"})
        await client.post("/hooks/ghost", content=body, headers={"content-type": "application/json"})
        text_ = (await client.get("/metrics")).text
        assert 'tidings_ingest_requests_total{outcome="accepted",source="app"} 1.0' in text_
        assert 'tidings_ingest_requests_total{outcome="duplicate",source="app"} 1.0' in text_
        assert 'tidings_ingest_rejections_total{reason="missing_signature",source="app"} 1.0' in text_
        assert 'tidings_ingest_rejections_total{reason="unknown_source",source="unknown"} 1.0' in text_
        assert 'tidings_ingest_duplicates_total{source="app"} 1.0' in text_
        assert 'tidings_ingest_ack_seconds_count{source="app"} 2.0' in text_


async def test_openapi_describes_ingest_and_admin(running) -> None:
    async with running(CONFIG) as (_, client):
        spec = (await client.get("/openapi.json")).json()
        assert {"/hooks/{source}", "/v1/{call}", "/api/v1/events", "/healthz", "/readyz"} <= set(
            spec["paths"]
        )


async def test_bodies_and_secrets_never_reach_the_logs(running, clock, caplog) -> None:
    import logging

    from tests.integration.test_standard_webhooks import SECRET
    from tidings.logging import JsonFormatter

    caplog.set_level(logging.DEBUG, logger="tidings")
    marker = "ann.secret-address@example.com"
    good = json.dumps({"type": "t", "email": marker}).encode()
    broken = b'{"type": "t", "email": "' + marker.encode() + b'"'
    async with running(CONFIG) as (_, client):
        await client.post("/hooks/app", content=good, headers=signed(good, "l1", clock.now()))
        await client.post("/hooks/app", content=broken, headers=signed(broken, "l2", clock.now()))
        await client.post(
            "/hooks/app",
            content=good,
            headers={**signed(good, "l3", clock.now()), "webhook-signature": "v1,AAAA"},
        )
    assert caplog.records  # the refusal and the flag were logged
    formatter = JsonFormatter()
    text_ = "\n".join(formatter.format(r) for r in caplog.records)
    assert marker not in text_
    assert SECRET.removeprefix("whsec_") not in text_


async def test_a_get_on_a_post_only_source_is_405(running) -> None:
    async with running(CONFIG) as (_, client):
        response = await client.get("/hooks/app")
        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"
