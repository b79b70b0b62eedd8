"""An ingest process and a worker process on one store: one receives, the other applies."""

from __future__ import annotations

import json
import time

import httpx

from tests.e2e.conftest import ADMIN_TOKEN, Server
from tests.e2e.test_crash import config, signed

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def statuses(server: Server) -> list[str]:
    response = httpx.get(f"{server.url}/api/v1/events", params={"limit": 500}, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return [e["status"] for e in response.json()["events"]]


def test_an_ingest_and_a_worker_process_share_one_store(serve, store_url) -> None:
    ingest: Server = serve(config(store_url), "--role", "ingest")
    worker: Server = serve(config(store_url), "--role", "worker")
    ingest.start()
    worker.start()
    with httpx.Client(timeout=10) as client:
        for n in range(20):
            body = json.dumps({"type": "Product Viewed", "data": {"email": f"c{n}@example.com"}}).encode()
            answer = client.post(f"{ingest.url}/hooks/app", content=body, headers=signed(body, f"r{n}"))
            assert answer.status_code == 200, answer.text
        refused = client.post(f"{worker.url}/hooks/app", content=b"{}", headers=signed(b"{}", "x"))
        assert refused.status_code == 404
        assert refused.json()["error"] == "not_receiving"

    deadline = time.monotonic() + 20
    while statuses(worker).count("processed") < 20:  # the worker applies what the ingest stored
        assert time.monotonic() < deadline, f"not processed in time: {statuses(worker)}"
        time.sleep(0.1)
    profile = httpx.get(f"{ingest.url}/api/v1/profiles/c7@example.com", headers=AUTH, timeout=10)
    assert profile.status_code == 200
    assert profile.json()["identities"] == [{"kind": "email", "value": "c7@example.com"}]

    # ... and it was the worker that applied them, not the ingest process
    def applied_by(server: Server) -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        lines = [
            ln for ln in text.splitlines() if ln.startswith("tidings_event_processing_delay_seconds_count")
        ]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    assert (applied_by(ingest), applied_by(worker)) == (0, 20)
