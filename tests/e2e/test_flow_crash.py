"""Flow timers survive SIGKILL: thousands of runs wait in a real `tidings serve`, the process is
killed while their timers fire, and after a restart on the same store every wait fires once.

A run's state is its timer row, and firing it (claim, steps, the send's outbox row, the journal)
is one transaction; so a kill can lose no fired send and a restart can fire none twice. Checked
on SQLite (FULL) and PostgreSQL, in the outbox, in the journal and at the receiver.

The one thing the test does to the store itself: an outbox row in flight when the process died
is retried only once its lease (`tidings.delivery.dispatcher.LEASE`, five minutes) has run out,
so after the kill the test moves those leases into the past, as five minutes passing would.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Connection, Engine, create_engine, func, select, update

from tests.e2e.conftest import Server
from tidings.delivery.effects import TRACK_EVENT
from tidings.flows.runs import ACTIVE, COMPLETED
from tidings.store.engine import normalise_url
from tidings.store.schema import flow_runs, flow_steps, outbox
from tidings.testing import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WRITE_KEY = "wk_crash"
CHECKOUTS = 3000
PER_BATCH = 500  # checkouts per POST /v1/batch
WAIT_SECONDS = 8  # each run's wait, on the real clock
KILL_AT = CHECKOUTS // 3  # sends fired (committed) when the SIGKILL comes
DEADLINE = 45.0  # seconds for any one stage to be reached
POLL = 0.02  # seconds between looks at the store

T = TypeVar("T")


def config(store_url: str, sink_url: str) -> str:
    return f"""
storage:
  url: "{store_url}"
  sqlite_synchronous: FULL
sources:
  web:
    kind: segment
    write_keys: ["{WRITE_KEY}"]
destinations:
  sink:
    kind: webhook
    url: "{sink_url}/hook"
    secret: "{SECRET}"
flows:
  reminder:
    trigger:
      event: Checkout Started
    run_key: event.properties.checkout_id
    guards: {{consent: none}}
    steps:
      - id: pause
        wait: {WAIT_SECONDS}s
      - id: remind
        send:
          destination: sink
          action: track_event
          event: Checkout Reminder
          properties:
            checkout_id: "{{{{ run.key }}}}"
"""


def checkout_id(n: int) -> str:
    return f"co_{n:05d}"


CHECKOUT_IDS = frozenset(checkout_id(n) for n in range(CHECKOUTS))


def post_checkouts(server: Server) -> None:
    """One `Checkout Started` per customer (with the address the send needs), as Segment batches."""
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"authorization": f"Basic {auth}", "content-type": "application/json"}
    stamp = datetime.now(UTC).isoformat()
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        for first in range(0, CHECKOUTS, PER_BATCH):
            calls = [
                {
                    "type": "track",
                    "messageId": f"co-{n}",
                    "userId": f"u_{n:05d}",
                    "event": "Checkout Started",
                    "properties": {"checkout_id": checkout_id(n), "value": 25.0},
                    "context": {"traits": {"email": f"c{n}@example.com"}},
                    "timestamp": stamp,
                }
                for n in range(first, min(first + PER_BATCH, CHECKOUTS))
            ]
            response = client.post("/v1/batch", content=json.dumps({"batch": calls}), headers=headers)
            assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- reading the store


@contextmanager
def reader(store_url: str) -> Iterator[Engine]:
    args: dict[str, Any] = {"timeout": 30} if store_url.startswith("sqlite") else {"connect_timeout": 5}
    engine = create_engine(normalise_url(store_url), connect_args=args)
    try:
        yield engine
    finally:
        engine.dispose()


def query(engine: Engine, fn: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return fn(conn)


def count_runs(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(flow_runs)).scalar_one())


def count_sends(conn: Connection) -> int:
    stmt = select(func.count()).select_from(outbox).where(outbox.c.action == TRACK_EVENT)
    return int(conn.execute(stmt).scalar_one())


def progress(conn: Connection) -> dict[str, int]:
    """Runs by status and sends by outbox status."""
    runs = conn.execute(select(flow_runs.c.status, func.count()).group_by(flow_runs.c.status))
    sends = conn.execute(
        select(outbox.c.status, func.count()).where(outbox.c.action == TRACK_EVENT).group_by(outbox.c.status)
    )
    return {**{f"runs {s}": int(n) for s, n in runs}, **{f"sends {s}": int(n) for s, n in sends}}


def in_flight(conn: Connection) -> set[str]:
    stmt = select(outbox.c.idempotency_key).where(
        outbox.c.action == TRACK_EVENT, outbox.c.status == "in_flight"
    )
    return set(conn.execute(stmt).scalars())


def let_leases_run_out(conn: Connection) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    conn.execute(update(outbox).where(outbox.c.status == "in_flight").values(lease_until=past))


def wait_until(what: str, probe: Callable[[], T], done: Callable[[T], bool], server: Server) -> T:
    """Poll `probe` until `done` holds of its value; fail naming `what` and the last value seen."""
    until = time.monotonic() + DEADLINE
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > until:
            raise AssertionError(f"{what}: not within {DEADLINE}s (last: {value})\n{server.output()[-3000:]}")
        time.sleep(POLL)  # polling interval, not a wait for a condition


# --------------------------------------------------------------------------- the scenario


@dataclass
class Crash:
    fired: int  # sends committed by the killed process
    pending: int  # runs still waiting then
    interrupted: set[str]  # webhook-ids of the sends it had in flight
    timings: dict[str, float]


def crash_while_firing(server: Server, db: Engine) -> Crash:
    """Start, post every checkout, kill once a third of the timers fired, restart, wait for all."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def mark(name: str) -> None:
        timings[name] = round(time.monotonic() - t0, 1)

    server.start()
    post_checkouts(server)
    mark("posted")
    wait_until(
        "every checkout started a run", lambda: query(db, count_runs), lambda n: n == CHECKOUTS, server
    )
    mark("all waiting")
    wait_until("a third of the timers fired", lambda: query(db, count_sends), lambda n: n >= KILL_AT, server)
    server.kill()
    mark("killed")
    at_kill = query(db, progress)
    fired = query(db, count_sends)
    pending = at_kill.get(f"runs {ACTIVE}", 0)
    assert KILL_AT <= fired < CHECKOUTS, f"no timer was left to fire at the kill: {at_kill}"
    assert pending == CHECKOUTS - fired, at_kill  # a run ends in the transaction of its send
    interrupted = query(db, in_flight)
    with db.begin() as conn:
        let_leases_run_out(conn)

    server.start()
    mark("restarted")
    finished = {f"runs {COMPLETED}": CHECKOUTS, "sends delivered": CHECKOUTS}
    wait_until(
        "every run completed and its send was delivered", lambda: query(db, progress), finished.__eq__, server
    )
    mark("all delivered")
    return Crash(fired, pending, interrupted, timings)


def assert_each_run_fired_once(db: Engine) -> None:
    """One run per checkout, each with one trigger, one wait, one send, one end, one outbox row."""
    runs = query(db, lambda c: list(c.execute(select(flow_runs.c.id, flow_runs.c.run_key))))
    assert sorted(r.run_key for r in runs) == sorted(CHECKOUT_IDS)
    lines = query(
        db, lambda c: list(c.execute(select(flow_steps.c.run_id, flow_steps.c.kind, flow_steps.c.outcome)))
    )
    per_run: dict[int, Counter[tuple[str, str]]] = defaultdict(Counter)
    for line in lines:
        per_run[line.run_id][(line.kind, line.outcome)] += 1
    once = Counter(
        {("trigger", "started"): 1, ("wait", "waiting"): 1, ("send", "sent"): 1, ("end", "completed"): 1}
    )
    wrong = {run_id: dict(found) for run_id, found in per_run.items() if found != once}
    assert not wrong, f"{len(wrong)} runs did not go through each step once, e.g. {list(wrong.items())[:3]}"
    assert sorted(per_run) == sorted(r.id for r in runs)

    stmt = select(outbox.c.idempotency_key, outbox.c.payload).where(outbox.c.action == TRACK_EVENT)
    rows = query(db, lambda c: list(c.execute(stmt)))
    assert len({r.idempotency_key for r in rows}) == len(rows) == CHECKOUTS
    per_checkout = Counter(r.payload["properties"]["checkout_id"] for r in rows)
    assert set(per_checkout) == CHECKOUT_IDS and set(per_checkout.values()) == {1}


def assert_each_checkout_received_once(sink: WebhookSink, db: Engine, interrupted: set[str]) -> int:
    """Every checkout under one webhook-id; a request repeated only for a send the kill left in
    flight (its outcome unknown, it is sent again under the same webhook-id). Returns the repeats."""
    got = [
        (json.loads(r.body)["data"]["properties"]["checkout_id"], r.headers["webhook-id"])
        for r in list(sink.requests)
    ]
    ids_of: dict[str, set[str]] = defaultdict(set)
    for checkout, webhook_id in got:
        ids_of[checkout].add(webhook_id)
    assert set(ids_of) == CHECKOUT_IDS
    several = {c: ids for c, ids in ids_of.items() if len(ids) != 1}
    assert not several, f"checkouts sent under several webhook-ids: {list(several.items())[:5]}"
    keys = query(db, lambda c: set(c.execute(select(outbox.c.idempotency_key)).scalars()))
    assert set(sink.received) == keys
    repeated = {w for w, n in Counter(w for _, w in got).items() if n > 1}
    assert repeated <= interrupted, (
        f"sent twice, not in flight at the kill: {sorted(repeated - interrupted)[:5]}"
    )
    return len(got) - CHECKOUTS


# The store fixture's own parameters, with PostgreSQL marked slow: there the processor and the
# runner do about 100 events or runs a second and the dispatcher about 60 sends on the 2-core box
# (per-row statements, one transaction per settled send), so the run takes over a minute.
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])]


@pytest.mark.parametrize("store_url", BACKENDS, indirect=True)
def test_every_pending_wait_fires_exactly_once_across_a_sigkill(serve, store_url) -> None:
    with WebhookSink(SECRET).running() as sink, reader(store_url) as db:
        assert isinstance(sink, WebhookSink)
        crash = crash_while_firing(serve(config(store_url, sink.url)), db)
        assert_each_run_fired_once(db)
        repeats = assert_each_checkout_received_once(sink, db, crash.interrupted)
    print(  # shown with -s
        f"\n{store_url.split(':')[0]}: {crash.timings} s; at the kill {crash.fired} fired, "
        f"{crash.pending} waiting, {len(crash.interrupted)} sends in flight; {repeats} requests repeated"
    )
