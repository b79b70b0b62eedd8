"""Delivery benchmark: how close the dispatcher runs to each destination's documented limit.

For each destination kind with a documented limit, and the generic webhook (no limit: raw
throughput), one run is:
1. start the kind's simulator from tidings.testing in a CHILD PROCESS (so this process's CPU is
   tidings' alone), on 127.0.0.1, answering every request after --latency (50 ms) of delay;
2. enqueue N `upsert_contact` effects ({"email", "fields"}) straight into the outbox of a fresh
   SQLite store (FULL, as the default) with tidings.delivery.outbox.enqueue;
3. start a `Tidings(settings, process=False)` configured by YAML through parse_settings, and time
   `dispatcher.drain()` (looped until every effect is delivered: a 429 is retried after its
   Retry-After, so a throttled effect would show up as a longer run);
4. ask the simulator what it saw: every request's arrival and finish (its own clock:
   CLOCK_MONOTONIC, shared by both processes), its status, the simulator's own counters.

Measured per run: deliveries/s (N / drain wall time), the fraction of the limit used, limit
violations as seen at the simulator, and this process's CPU (time.process_time, all threads)
per delivery. Each kind runs --runs times (fresh simulator, store and Tidings each time, rounds
interleaved); the report gives medians.

    .venv/bin/python bench/deliver.py                      # all four kinds, 3 runs, ~3 minutes
    .venv/bin/python bench/deliver.py --kinds mailchimp --runs 5

With `--workers N`, the effects go into a fresh PostgreSQL database (`--pg-url`, created and dropped
per run) and N worker PROCESSES, each a `Tidings(settings, process=False)` on that database as
`tidings serve --role worker` would be, run their dispatchers at once against the one simulator:
the limit is then the account's, shared through the database (tidings.delivery.budget). The
figures are the same, measured at the simulator over all workers; CPU is summed over the workers.

    .venv/bin/python bench/deliver.py --workers 3 --kinds klaviyo,mailchimp,activecampaign
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

WEBHOOK_SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtbm90LWEtcmVhbC1vbmU="  # base64 of a bench phrase
DESTINATION = "esp"


@dataclass(frozen=True)
class Kind:
    name: str
    n: int  # effects per run (default)
    limit: str  # "rate" (requests per 1 s window), "concurrency", or "none"
    value: float | None  # the documented limit: requests/s, or connections
    documented: str  # what the vendor documents

    def yaml(self, url: str) -> str:
        if self.name == "activecampaign":
            return f"    kind: activecampaign\n    base_url: {url}\n    api_token: ac-test-token\n"
        if self.name == "mailchimp":
            return (
                "    kind: mailchimp\n"
                f"    base_url: {url}\n"
                "    api_key: 0123456789abcdef0123456789abcdef-us14\n"
                "    list_id: benchlist\n"
            )
        if self.name == "klaviyo":
            return f"    kind: klaviyo\n    base_url: {url}\n    api_key: pk_test_simulator\n"
        return f"    kind: webhook\n    url: {url}/hook\n    secret: {WEBHOOK_SECRET}\n"

    def payload(self, i: int) -> dict[str, Any]:
        email = f"bench.contact.{i}@example.com"
        if self.name == "activecampaign":
            fields: dict[str, Any] = {"firstName": "Ana", "lastName": f"Lima {i}"}
        elif self.name == "mailchimp":
            fields = {"FNAME": "Ana", "LNAME": f"Lima {i}", "PLAN": "pro"}
        elif self.name == "klaviyo":
            fields = {"first_name": "Ana", "last_name": f"Lima {i}", "plan": "pro", "orders": i % 7}
        else:
            fields = {"first_name": "Ana", "last_name": f"Lima {i}", "plan": "pro", "orders": i % 7}
        return {"email": email, "fields": fields}


KINDS = {
    "activecampaign": Kind("activecampaign", 75, "rate", 5, "5 requests/s per account"),
    "mailchimp": Kind("mailchimp", 2000, "concurrency", 10, "10 simultaneous connections"),
    # 750/min caps a run at 750 requests at the 75/s burst (~10 s); more would wait for the minute.
    "klaviyo": Kind("klaviyo", 750, "rate", 75, "profile import: 75/s burst, 750/min steady"),
    "webhook": Kind("webhook", 2000, "none", None, "no limit (raw throughput)"),
}


# --------------------------------------------------------------------------- the simulator process


def _simulator(kind: str, latency: float) -> Any:
    """The kind's simulator, made to answer after `latency` s, recording (start, end, status)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tidings.testing import (
        ActiveCampaignSimulator,
        KlaviyoSimulator,
        MailchimpSimulator,
        WebhookSink,
    )

    base: Any = {
        "activecampaign": ActiveCampaignSimulator,
        "mailchimp": MailchimpSimulator,
        "klaviyo": KlaviyoSimulator,
        "webhook": WebhookSink,
    }[kind]

    class Timed(base):  # type: ignore[misc, valid-type]
        """Every request's arrival, finish and status; `latency` added where the class lacks it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.log: list[tuple[float, float, int]] = []
            self.added_latency = 0.0

        def routes(self) -> list[Route]:
            routes = super().routes()
            if not self.added_latency:
                return routes

            def slow(endpoint: Any) -> Any:
                async def answer(request: Request) -> Response:
                    response: Response = await endpoint(request)  # checks, limits, state first
                    await asyncio.sleep(self.added_latency)
                    return response

                return answer

            return [Route(r.path, slow(r.endpoint), methods=list(r.methods or ())) for r in routes]

        def app(self) -> Any:
            inner = super().app()

            async def timed(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] != "http":
                    await inner(scope, receive, send)
                    return
                start = time.monotonic()
                status = [0]

                async def send_status(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                try:
                    await inner(scope, receive, send_status)
                finally:
                    self.log.append((start, time.monotonic(), status[0]))

            return timed

    # MailchimpSimulator has its own latency option; Klaviyo counts violations without refusing
    # (enforce_limits=False); ActiveCampaign answers the excess with 429 + Retry-After, as the vendor.
    made: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "mailchimp": ((), {"latency": latency}),
        "klaviyo": ((), {"enforce_limits": False}),
        "webhook": ((WEBHOOK_SECRET,), {}),
        "activecampaign": ((), {}),
    }
    positional, named = made[kind]
    sim = Timed(*positional, **named)
    sim.added_latency = 0.0 if kind == "mailchimp" else latency
    return sim


def simulator_main(kind: str, latency: float, conn: Any) -> None:
    sim = _simulator(kind, latency)
    sim.start()
    url = sim.url
    conn.send(url)
    conn.recv()  # "stop"
    cpu = time.process_time()
    sim.stop()
    counters = {
        k: getattr(sim, k)
        for k in ("rate_limited", "throttled", "limit_violations", "max_in_flight")
        if hasattr(sim, k)
    }
    if kind == "webhook":
        counters["verified"] = len(sim.received)
    if kind == "klaviyo":
        counters["invalid"] = len(sim.invalid)
        counters["profiles"] = len(sim.profiles)
    if kind == "mailchimp":
        counters["members"] = len(sim.members)
    if kind == "activecampaign":
        counters["rejected"] = len(sim.rejected)
        counters["contacts"] = len(sim.contacts)
    conn.send({"log": sim.log, "counters": counters, "cpu_s": cpu})
    conn.close()


class SimulatorProcess:
    def __init__(self, kind: str, latency: float) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=simulator_main, args=(kind, latency, child), daemon=True)

    def __enter__(self) -> SimulatorProcess:
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("simulator did not start")
        self.url: str = self.conn.recv()
        assert self.url.startswith("http://127.0.0.1:")
        return self

    def finish(self) -> dict[str, Any]:
        self.conn.send("stop")
        if not self.conn.poll(30):
            raise RuntimeError("simulator did not report")
        result: dict[str, Any] = self.conn.recv()
        return result

    def __exit__(self, *exc: Any) -> None:
        self.proc.join(timeout=15)
        if self.proc.is_alive():  # only the process this script started, by its handle
            self.proc.terminate()
            self.proc.join(timeout=5)


# --------------------------------------------------------------------------- one run


async def drive(kind: Kind, url: str, n: int, workdir: Path, batch_size: int | None) -> dict[str, Any]:
    from sqlalchemy import func, select

    from tidings.app import Tidings
    from tidings.config import parse_settings
    from tidings.delivery import outbox
    from tidings.store.schema import outbox as outbox_table

    db = workdir / "tidings.db"
    text = f"storage:\n  url: sqlite:///{db}\ndestinations:\n  {DESTINATION}:\n{kind.yaml(url)}"
    settings = parse_settings(text, "bench.yaml", environ={})
    async with Tidings(settings, process=False) as tidings:
        if batch_size:
            tidings.dispatcher.batch_size = batch_size
        now = datetime.now(UTC)

        def fill(conn: Any) -> None:
            for i in range(n):
                outbox.enqueue(
                    conn,
                    destination=DESTINATION,
                    action="upsert_contact",
                    idempotency_key=f"bench-{kind.name}-{i}",
                    payload=kind.payload(i),
                    now=now,
                )

        await tidings.store.write(fill)

        def statuses(conn: Any) -> dict[str, int]:
            rows = conn.execute(
                select(outbox_table.c.status, func.count()).group_by(outbox_table.c.status)
            ).all()
            return {status: count for status, count in rows}

        rounds = 0
        cpu0, t0 = time.process_time(), time.monotonic()
        tidings.dispatcher.start()  # the loop `tidings serve` runs: claims as sends settle
        while True:
            rounds += 1
            left = await tidings.store.read(statuses)
            if left.get("delivered", 0) + left.get("dead", 0) >= n:
                break
            if time.monotonic() - t0 > 300:
                break
            await asyncio.sleep(0.02)  # polling for the end, not waiting for the work
        t1, cpu1 = time.monotonic(), time.process_time()
        await tidings.dispatcher.stop()
        final = await tidings.store.read(statuses)
    return {
        "start": t0,
        "end": t1,
        "wall_s": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "outbox": final,
        "drain_rounds": rounds,
    }


def analyse(kind: Kind, n: int, drove: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    log = sorted(seen["log"])
    starts = [s for s, _, _ in log]
    statuses = Counter(str(status) for _, _, status in log)
    delivered = drove["outbox"].get("delivered", 0)
    wall = drove["wall_s"]
    out: dict[str, Any] = {
        "n": n,
        "delivered": delivered,
        "outbox": drove["outbox"],
        "requests": len(log),
        "statuses": dict(statuses),
        "wall_s": round(wall, 3),
        "deliveries_per_s": round(delivered / wall, 2),
        "cpu_s": round(drove["cpu_s"], 3),
        "cpu_ms_per_delivery": round(1000 * drove["cpu_s"] / max(delivered, 1), 3),
        "simulator_cpu_ms_per_request": round(1000 * seen["cpu_s"] / max(len(log), 1), 3),
        "simulator": seen["counters"],
        "drain_rounds": drove["drain_rounds"],
    }
    if not log:
        return out
    latencies = sorted(e - s for s, e, _ in log)
    out["server_time_ms_p50"] = round(1000 * latencies[len(latencies) // 2], 2)
    # concurrency: exact from the intervals
    events = sorted([(s, 1) for s, _, _ in log] + [(e, -1) for _, e, _ in log], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    span = max(e for _, e, _ in log) - starts[0]
    busy = sum(e - s for s, e, _ in log)
    out["max_concurrent"] = peak
    out["mean_concurrent"] = round(busy / span, 2) if span > 0 else None
    # rates: the busiest sliding 1 s window (ending at each arrival), strictly and with 50 ms grace
    for label, width in (("1s", 1.0), ("0.95s", 0.95)):
        counts = [i - bisect_right(starts, s - width, 0, i) + 1 for i, s in enumerate(starts)]
        out[f"max_per_sliding_{label}"] = max(counts)
        if kind.limit == "rate" and kind.value:
            out[f"violations_sliding_{label}"] = sum(1 for c in counts if c > kind.value)
    # steady rate: full 1 s windows anchored on the first request (the last, partial one left out)
    whole = int(starts[-1] - starts[0])
    if whole >= 1:
        per_window = [
            bisect_left(starts, starts[0] + k + 1) - bisect_left(starts, starts[0] + k) for k in range(whole)
        ]
        out["requests_per_full_second"] = round(statistics.mean(per_window), 2)
        out["full_windows"] = whole
    if kind.limit == "rate" and kind.value:
        out["arrivals_ms"] = [round(1000 * (s - starts[0]), 1) for s in starts]  # at the simulator
        rate = out.get("requests_per_full_second")
        out["limit_used"] = round(rate / kind.value, 3) if rate else None
        out["violations"] = out["violations_sliding_1s"]
    elif kind.limit == "concurrency" and kind.value:
        out["limit_used"] = round(out["mean_concurrent"] / kind.value, 3) if out["mean_concurrent"] else None
        out["violations"] = sum(1 for _, _, st in log if st == 429) + max(0, peak - int(kind.value))
    else:
        out["limit_used"] = None
        out["violations"] = 0
    return out


def one_run(kind: Kind, n: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tidings-deliver-", dir=args.workdir))
    try:
        with SimulatorProcess(kind.name, args.latency) as sim:
            drove = asyncio.run(drive(kind, sim.url, n, workdir, args.batch_size))
            seen = sim.finish()
        return analyse(kind, n, drove, seen)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- several workers


def default_pg_url() -> str:
    return (
        os.environ.get("TIDINGS_BENCH_PG_URL")
        or os.environ.get("TIDINGS_TEST_PG_URL")
        or "postgresql://postgres@127.0.0.1:5432/test"
    )


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A database of this run's own on the server, migrated; dropped afterwards."""
    from sqlalchemy import create_engine, text

    from tidings.store import Store
    from tidings.store.engine import normalise_url

    name = f"tidings_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = normalise_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        store = Store(url)
        try:
            store.upgrade()
        finally:
            store.close()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def worker_yaml(kind: Kind, url: str, db_url: str) -> str:
    return (
        f"storage:\n  url: {db_url}\n  auto_migrate: false\ndestinations:\n  {DESTINATION}:\n{kind.yaml(url)}"
    )


async def worker(kind_name: str, url: str, db_url: str, batch_size: int | None, conn: Any) -> None:
    """One worker process: ready, then send from "go" until "stop"; report CPU and budget use."""
    from tidings.app import Tidings
    from tidings.config import parse_settings

    kind = KINDS[kind_name]
    settings = parse_settings(worker_yaml(kind, url, db_url), "bench.yaml", environ={})
    loop = asyncio.get_running_loop()
    async with Tidings(settings, process=False) as tidings:
        if batch_size:
            tidings.dispatcher.batch_size = batch_size
        conn.send("ready")
        await loop.run_in_executor(None, conn.recv)  # "go"
        cpu0 = time.process_time()
        tidings.dispatcher.start()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        await tidings.dispatcher.stop()
        cpu = time.process_time() - cpu0
        limiter = tidings.dispatcher.limiters[DESTINATION]
        stats = limiter.stats() if hasattr(limiter, "stats") else {}
        shared = tidings.dispatcher.budgets is not None
    conn.send({"cpu_s": cpu, "budget": stats, "shared": shared})
    conn.close()


def worker_main(kind_name: str, url: str, db_url: str, batch_size: int | None, conn: Any) -> None:
    asyncio.run(worker(kind_name, url, db_url, batch_size, conn))


class WorkerProcesses:
    """N worker processes, each ready before any is told to go; stopped together."""

    def __init__(self, count: int, kind: Kind, url: str, db_url: str, batch_size: int | None) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        for _ in range(count):
            here, there = ctx.Pipe()
            self.pipes.append(here)
            self.procs.append(
                ctx.Process(target=worker_main, args=(kind.name, url, db_url, batch_size, there), daemon=True)
            )

    def __enter__(self) -> WorkerProcesses:
        for proc in self.procs:
            proc.start()
        for here in self.pipes:
            if not here.poll(60) or here.recv() != "ready":
                raise RuntimeError("a worker did not start")
        return self

    def go(self) -> None:
        for here in self.pipes:
            here.send("go")

    def stop(self) -> list[dict[str, Any]]:
        for here in self.pipes:
            here.send("stop")
        reports = []
        for here in self.pipes:
            if not here.poll(60):
                raise RuntimeError("a worker did not report")
            reports.append(here.recv())
        return reports

    def __exit__(self, *exc: Any) -> None:
        for proc in self.procs:  # only the processes this script started, by their handles
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def drive_workers(kind: Kind, url: str, n: int, db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill the outbox, run `args.workers` worker processes at once until it is all delivered."""
    from sqlalchemy import func, select

    from tidings.delivery import outbox
    from tidings.store import Store
    from tidings.store.schema import outbox as outbox_table

    now = datetime.now(UTC)

    def fill(conn: Any) -> None:
        for i in range(n):
            outbox.enqueue(
                conn,
                destination=DESTINATION,
                action="upsert_contact",
                idempotency_key=f"bench-{kind.name}-{i}",
                payload=kind.payload(i),
                now=now,
            )

    def statuses(conn: Any) -> dict[str, int]:
        rows = conn.execute(select(outbox_table.c.status, func.count()).group_by(outbox_table.c.status)).all()
        return {status: count for status, count in rows}

    store = Store(db_url)
    try:
        store.write_sync(fill)
        with WorkerProcesses(args.workers, kind, url, db_url, args.batch_size) as workers:
            rounds = 0
            t0 = time.monotonic()
            workers.go()
            while True:
                rounds += 1
                left = store.read_sync(statuses)
                if left.get("delivered", 0) + left.get("dead", 0) >= n or time.monotonic() - t0 > 300:
                    break
                time.sleep(0.02)  # polling for the end, not waiting for the work
            t1 = time.monotonic()
            reports = workers.stop()
        final = store.read_sync(statuses)
    finally:
        store.close()
    return {
        "start": t0,
        "end": t1,
        "wall_s": t1 - t0,
        "cpu_s": sum(r["cpu_s"] for r in reports),
        "outbox": final,
        "drain_rounds": rounds,
        "workers": [{**r, "cpu_s": round(r["cpu_s"], 3)} for r in reports],
    }


def one_run_workers(kind: Kind, n: int, args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database(args.pg_url) as db_url, SimulatorProcess(kind.name, args.latency) as sim:
        drove = drive_workers(kind, sim.url, n, db_url, args)
        seen = sim.finish()
    out = analyse(kind, n, drove, seen)
    out["workers"] = drove["workers"]
    return out


# --------------------------------------------------------------------------- summary and report


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(kind: Kind, runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "deliveries_per_s",
        "requests_per_full_second",
        "limit_used",
        "mean_concurrent",
        "max_concurrent",
        "max_per_sliding_1s",
        "cpu_ms_per_delivery",
        "simulator_cpu_ms_per_request",
        "server_time_ms_p50",
        "wall_s",
    )
    summary: dict[str, Any] = {
        "documented_limit": kind.documented,
        "limit_kind": kind.limit,
        "limit_value": kind.value,
        "n": runs[0]["n"],
        "runs": len(runs),
        "delivered_total": sum(r["delivered"] for r in runs),
        "effects_total": sum(r["n"] for r in runs),
        "violations_total": sum(r["violations"] for r in runs),
        "violations_sliding_0.95s_total": sum(r.get("violations_sliding_0.95s", 0) for r in runs),
        "statuses_total": dict(sum((Counter(r["statuses"]) for r in runs), Counter())),
    }
    for key in keys:
        summary[key] = med([r.get(key) for r in runs])
        values = [r[key] for r in runs if r.get(key) is not None]
        if values and key in ("deliveries_per_s", "limit_used", "cpu_ms_per_delivery"):
            summary[f"{key}_range"] = [min(values), max(values)]
    if kind.limit != "none":
        used = summary["limit_used"] or 0
        summary["target_90pct"] = used >= 0.9
        summary["target_0_violations"] = summary["violations_total"] == 0
    return summary


def fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, s in doc["kinds"].items():
        limit = (
            "-"
            if s["limit_kind"] == "none"
            else f"{s['limit_value']:g} {'/s' if s['limit_kind'] == 'rate' else 'conns'}"
        )
        used = "-" if s["limit_used"] is None else f"{100 * s['limit_used']:.1f}%"
        rows.append(
            [
                name,
                limit,
                str(s["n"]),
                fmt(s["deliveries_per_s"], ".1f"),
                fmt(s["requests_per_full_second"], ".1f"),
                fmt(s["mean_concurrent"], ".2f"),
                str(s["max_concurrent"]),
                str(s["max_per_sliding_1s"]),
                used,
                str(s["violations_total"]),
                fmt(s["cpu_ms_per_delivery"], ".3f"),
                f"{s['delivered_total']}/{s['effects_total']}",
                json.dumps(s["statuses_total"]),
            ]
        )
    return rows


HEADER = [
    "destination",
    "limit",
    "N",
    "deliveries/s",
    "req/s (full 1 s windows)",
    "mean in flight",
    "max in flight",
    "max in 1 s",
    "limit used",
    "violations",
    "CPU ms/delivery",
    "delivered",
    "statuses",
]


def report_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# Delivery benchmark, {doc['date']}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}. "
        f"Simulators answer after {doc['settings']['latency'] * 1000:g} ms, in a separate process; "
        f"medians of {doc['settings']['runs']} runs (fresh simulator, store and Tidings each run"
        + (
            f"; {doc['settings']['workers']} worker processes sharing one PostgreSQL database, "
            "CPU summed over them)."
            if doc["settings"].get("workers")
            else "; one process, SQLite)."
        ),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(doc)]
    lines += [
        "",
        "Violations counted three ways at the simulator (totals over the runs): strict sliding 1 s "
        "window at arrival (the `violations` column); sliding 0.95 s window (ActiveCampaignSimulator's "
        "50 ms grace); the simulator's own counters (ActiveCampaign: 429s; Klaviyo: fixed 1 s/60 s "
        "windows, `limit_violations`; Mailchimp: 429s for > 10 in flight, `throttled`).",
        "",
    ]
    for name, s in doc["kinds"].items():
        own = [r["simulator"] for r in doc["runs"][name]]
        counters = {
            k: sum(o.get(k, 0) for o in own) for k in ("rate_limited", "limit_violations", "throttled")
        }
        lines.append(
            f"- {name}: strict 1 s {s['violations_total']}, 0.95 s {s['violations_sliding_0.95s_total']}, "
            f"simulator's own {json.dumps({k: v for k, v in counters.items() if any(k in o for o in own)})}, "
            f"max in flight at the simulator {max(o.get('max_in_flight', 0) for o in own)}"
        )
    lines += ["", "Targets (at least 90% of the limit used, 0 limit violations):", ""]
    for name, s in doc["kinds"].items():
        if s["limit_kind"] == "none":
            continue
        lines.append(
            f"- {name} ({s['documented_limit']}): limit used {fmt(s['limit_used'])} "
            f"(runs {s.get('limit_used_range')}) -> {'met' if s['target_90pct'] else 'NOT met'}; "
            f"violations {s['violations_total']} -> {'met' if s['target_0_violations'] else 'NOT met'}"
        )
    lines.append("")
    return "\n".join(lines)


def print_table(doc: dict[str, Any]) -> None:
    rows = [HEADER[:-1], *[r[:-1] for r in table_rows(doc)]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for j, r in enumerate(rows):
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if j == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    print()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    import sqlite3

    import httpx
    import uvicorn

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "httpx": httpx.__version__,
        "uvicorn": uvicorn.__version__,
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ", ".join(KINDS))
    p.add_argument("--runs", type=int, default=3, help="runs per kind; medians are reported (default 3)")
    p.add_argument("--latency", type=float, default=0.05, help="simulator answer delay, s (default 0.05)")
    p.add_argument("--n", type=int, default=None, help="effects per run (default: per kind, ~10-15 s)")
    p.add_argument("--batch-size", type=int, default=None, help="dispatcher.batch_size (default: tidings')")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temp dirs (default: system temp)"
    )
    p.add_argument("--tag", default="", help="suffix of the result files: deliver-<date>-<tag>.json")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="N worker processes sharing one PostgreSQL database (default 0: one process on SQLite)",
    )
    p.add_argument(
        "--pg-url",
        default=default_pg_url(),
        help="PostgreSQL server for --workers; a database is created and dropped per run "
        "(default: $TIDINGS_BENCH_PG_URL, $TIDINGS_TEST_PG_URL or the local server)",
    )
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds {sorted(unknown)}")
    if args.workers < 0:
        p.error("--workers must be 0 (one process on SQLite) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = datetime.now(UTC)
    info = machine()
    print(
        f"tidings delivery benchmark: {info['cores']} cores, simulators answer after "
        f"{args.latency * 1000:g} ms, {args.runs} runs per kind, "
        + (f"{args.workers} worker processes on PostgreSQL" if args.workers else "one process on SQLite")
    )
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in args.kinds}
    for rnd in range(1, args.runs + 1):
        for name in args.kinds:
            kind = KINDS[name]
            r = (one_run_workers if args.workers else one_run)(kind, args.n or kind.n, args)
            r["round"] = rnd
            runs[name].append(r)
            print(
                f"  {name:<15} run {rnd}: {r['delivered']}/{r['n']} delivered in {r['wall_s']:.2f} s, "
                f"{r['deliveries_per_s']:.1f}/s, limit used {fmt(r.get('limit_used'))}, "
                f"violations {r['violations']}, CPU {r['cpu_ms_per_delivery']:.3f} ms/delivery, "
                f"statuses {json.dumps(r['statuses'])}"
                + (f", workers {json.dumps(r['workers'])}" if args.workers else "")
            )
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/deliver.py", *(argv or sys.argv[1:])]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "kinds": {name: summarise(KINDS[name], rs) for name, rs in runs.items()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"deliver-{now.strftime('%Y-%m-%d')}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report_markdown(doc))
    print_table(doc)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
