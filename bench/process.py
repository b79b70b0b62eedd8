"""Processing benchmark: stored raw webhooks to updated profiles, on SQLite.

Two measurements, each run --runs times and reported as the median:

1. drain: --events Segment calls (a storefront's mix over --customers customers: Product Viewed,
   identify with traits and email consent, Checkout Started with items, Order Completed) are
   stored in a fresh SQLite file through the Segment receiver and `commit_batch` (the ingest
   path without HTTP), then the processor, wired as `tidings serve` wires it, drains them:
   events/s from stored raw webhook to updated profile (mapping, identity resolution, traits,
   computed traits, timeline, all committed).
2. steady: `tidings serve` as a real process on 127.0.0.1 with a fresh SQLite file, wrk sending
   --rate calls/s (bench/segment.lua, same mix) for --duration s after a --warmup. The
   processing delay (applied minus received) of every event received in the measured window
   is read from the `events` table afterwards: exact percentiles. `applied_at` is when its
   processing transaction started; the `tidings_event_processing_delay_seconds` histogram is
   observed after the commit, so its interpolated p50/p99 are reported beside (target: p99 < 50 ms).

3. flows: --flow-events Shopify `checkouts/create` webhooks (bench/e2e.py's payload, one checkout
   token each, over --flow-customers customers) are stored through the Shopify receiver and
   `commit_batch`, with bench/e2e.py's flow (trigger `Checkout Started`, run key the checkout
   token, one `send` step); `Processor.drain()` is timed in CPU (time.process_time) and its SQL
   statements counted, at each --flow-batch size (the live server sees small batches).

    .venv/bin/python bench/process.py --runs 3
    .venv/bin/python bench/process.py --phases flows --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import ingest as ib  # noqa: E402  (bench/ingest.py: server process, wrk and /metrics helpers)

LUA = BENCH / "segment.lua"
WRITE_KEY = "bench-segment-write-key"
AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
SOURCE = "web"
TARGET_P99_MS = 50.0


def config_yaml(db: Path, port: int | None = None) -> str:
    server = f"server:\n  listen: 127.0.0.1:{port}\n" if port else ""
    return (
        "# written by bench/process.py\n"
        f"{server}"
        "storage:\n"
        f"  url: sqlite:///{db}\n"
        "sources:\n"
        f"  {SOURCE}:\n"
        "    kind: segment\n"
        f'    write_keys: ["{WRITE_KEY}"]\n'
    )


# --------------------------------------------------------------------------- 1. drain


def segment_call(n: int, customers: int, at: datetime) -> tuple[str, dict[str, Any]]:
    """The n-th call of the mix (the same mix bench/segment.lua sends)."""
    user = (n * 7919) % customers
    head: dict[str, Any] = {"messageId": f"d-{n}", "userId": f"u{user}", "timestamp": at.isoformat()}
    kind = n % 10
    if kind <= 3:
        p = n % 50
        props = {"product_id": f"p{p}", "sku": f"SKU-{p}", "name": f"Mug {p}", "price": 12.5}
        return "track", {**head, "event": "Product Viewed", "properties": props}
    if kind <= 5:
        traits = {
            "email": f"user{user}@example.com",
            "first_name": f"Ann{n % 13}",
            "plan": f"p{n % 3}",
            "email_consent": "unsubscribed" if n % 20 == 4 else "subscribed",
        }
        return "identify", {**head, "traits": traits}
    if kind <= 8:
        items = [
            {"product_id": "p1", "sku": "SKU-1", "name": "Mug", "price": 12.5, "quantity": 1},
            {"product_id": "p2", "sku": "SKU-2", "name": "Teapot", "price": 25, "quantity": 1},
        ]
        props = {"checkout_id": f"co{n}", "value": 37.5, "currency": "EUR", "products": items}
        return "track", {**head, "event": "Checkout Started", "properties": props}
    props = {"order_id": f"o{n}", "total": 37.5, "currency": "EUR"}
    return "track", {**head, "event": "Order Completed", "properties": props}


async def drain_once(workdir: Path, events: int, customers: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from tidings.app import Tidings
    from tidings.config import parse_settings
    from tidings.ingest.base import InboundRequest
    from tidings.store.inbox import Submission, commit_batch
    from tidings.store.schema import events as events_table
    from tidings.store.schema import inbox, profiles

    db = workdir / "tidings.db"
    settings = parse_settings(config_yaml(db), "bench.yaml", {})
    async with Tidings(settings, process=False) as tidings:
        receiver = tidings.receivers[SOURCE]
        start = datetime(2026, 3, 1, tzinfo=UTC)
        t0 = time.perf_counter()
        for first in range(0, events, 500):
            batch = []
            for n in range(first, min(first + 500, events)):
                call, body = segment_call(n, customers, start + timedelta(seconds=n))
                request = InboundRequest(
                    source=SOURCE,
                    method="POST",
                    url=f"http://127.0.0.1/v1/{call}",
                    headers={"authorization": AUTH, "content-type": "application/json"},
                    body=json.dumps(body).encode(),
                    received_at=datetime.now(UTC),
                )
                batch.append(Submission(request, receiver.receive(request)))
            now, window = datetime.now(UTC), settings.storage.dedupe_window
            tidings.store.write_sync(
                functools.partial(commit_batch, batch=batch, now=now, dedupe_window=window)
            )
        preload_s = time.perf_counter() - t0

        cpu0, t0 = time.process_time(), time.perf_counter()
        await tidings.processor.drain()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0

        def counts(conn: Any) -> dict[str, Any]:
            statuses = dict(conn.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status)).all())
            return {
                "inbox": {k: int(v) for k, v in statuses.items()},
                "events": conn.execute(select(func.count()).select_from(events_table)).scalar_one(),
                "profiles": conn.execute(
                    select(func.count()).select_from(profiles).where(profiles.c.merged_into.is_(None))
                ).scalar_one(),
            }

        seen = tidings.store.read_sync(counts)
    if seen["inbox"] != {"processed": events} or seen["events"] != events:
        raise RuntimeError(f"not every stored call became an applied event: {seen}")
    return {
        "events": events,
        "preload_s": round(preload_s, 3),
        "drain_s": round(elapsed, 3),
        "events_per_s": round(events / elapsed, 1),
        "cpu_s": round(cpu, 3),
        **seen,
    }


# --------------------------------------------------------------------------- 3. flows

SHOP_SECRET = "bench-shopify-client-secret-not-a-real-one"


def flows_config_yaml(db: Path) -> str:
    """bench/e2e.py's source, destination and flow (the destination is never called here)."""
    import e2e

    text = e2e.config_yaml(db, 1, "http://127.0.0.1:9")
    return text.replace("server:\n  listen: 127.0.0.1:1\n", "")


async def flows_once(workdir: Path, events: int, customers: int, batch_size: int) -> dict[str, Any]:
    from sqlalchemy import event, func, select

    import e2e
    from tidings.app import Tidings
    from tidings.config import parse_settings
    from tidings.ingest.base import InboundRequest
    from tidings.store.inbox import Submission, commit_batch
    from tidings.store.schema import flow_runs, flow_steps, inbox

    db = workdir / "tidings.db"
    settings = parse_settings(flows_config_yaml(db), "bench.yaml", {})
    async with Tidings(settings, process=False) as tidings:
        receiver = tidings.receivers[e2e.SOURCE]
        for first in range(0, events, 500):
            batch = []
            for n in range(first, min(first + 500, events)):
                _, body, headers = e2e.shopify_request(n, "flow", customers)
                request = InboundRequest(
                    source=e2e.SOURCE,
                    method="POST",
                    url=f"http://127.0.0.1/hooks/{e2e.SOURCE}",
                    headers=headers,
                    body=body,
                    received_at=datetime.now(UTC),
                )
                batch.append(Submission(request, receiver.receive(request)))
            now, window = datetime.now(UTC), settings.storage.dedupe_window
            tidings.store.write_sync(
                functools.partial(commit_batch, batch=batch, now=now, dedupe_window=window)
            )
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        tidings.processor.batch_size = batch_size
        event.listen(tidings.store.engine, "before_cursor_execute", count)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await tidings.processor.drain()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        event.remove(tidings.store.engine, "before_cursor_execute", count)

        def counts(conn: Any) -> dict[str, Any]:
            statuses = dict(conn.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status)).all())
            return {
                "inbox": {k: int(v) for k, v in statuses.items()},
                "runs": conn.execute(select(func.count()).select_from(flow_runs)).scalar_one(),
                "journal": conn.execute(select(func.count()).select_from(flow_steps)).scalar_one(),
            }

        seen = tidings.store.read_sync(counts)
    if seen["inbox"] != {"processed": events} or seen["runs"] != events:
        raise RuntimeError(f"not every stored checkout started a run: {seen}")
    return {
        "events": events,
        "batch_size": batch_size,
        "drain_s": round(elapsed, 3),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_event": round(1000 * cpu / events, 4),
        "statements": statements,
        "statements_per_event": round(statements / events, 3),
        **seen,
    }


# --------------------------------------------------------------------------- 2. steady


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style: linear interpolation within the bucket holding the q-th observation."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return math.nan


def delay_buckets(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    name = "tidings_event_processing_delay_seconds_bucket"
    out = []
    for key, value in after.items():
        if key.startswith(name + "{") and f'source="{SOURCE}"' in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            out.append((float(le.replace("+Inf", "inf")), value - before.get(key, 0.0)))
    return sorted(out)


def run_wrk(url: str, *, rate: float, duration: float, connections: int, threads: int, customers: int) -> Any:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    env = dict(
        os.environ,
        BENCH_AUTH=AUTH,
        BENCH_PREFIX=f"{time.time_ns() & 0xFFFFFFFF:08x}",
        BENCH_CUSTOMERS=str(customers),
        BENCH_THREADS=str(threads),
        BENCH_RATE=str(rate),
    )
    argv = [exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(LUA), url]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    return json.loads(line.removeprefix("BENCH_JSON "))


def stored_delays(db: Path, since: datetime, until: datetime) -> tuple[list[float], dict[str, int]]:
    """Processing delay (ms) of each event received in [since, until), straight from the file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT received_at, applied_at FROM events").fetchall()
        statuses = dict(conn.execute("SELECT status, count(*) FROM inbox GROUP BY status").fetchall())
    finally:
        conn.close()

    def parse(text: str) -> datetime:
        value = datetime.fromisoformat(text)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    delays = []
    for received, applied in rows:
        r = parse(received)
        if since <= r < until:
            delays.append((parse(applied) - r).total_seconds() * 1000)
    return sorted(delays), statuses


def steady_once(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = ib.free_port()
    db = workdir / "tidings.db"
    config = workdir / "tidings.yaml"
    config.write_text(config_yaml(db, port))
    role = ["--role", "ingest"] if args.split else []
    server = ib.Server(
        [ib.venv_bin("tidings"), "serve", "-c", str(config), *role],
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=workdir / "server.log",
        env=dict(os.environ),
    )
    base = f"http://127.0.0.1:{port}"
    wrk = {"rate": args.rate, "connections": args.connections, "threads": args.threads}
    worker = None
    metrics_base = base
    if args.split:  # a second process applies what the first one stores: two cores for tidings
        worker_port = ib.free_port()
        worker = ib.Server(
            [
                ib.venv_bin("tidings"),
                "serve",
                "-c",
                str(config),
                "--role",
                "worker",
                "--listen",
                f"127.0.0.1:{worker_port}",
            ],
            ready_url=f"http://127.0.0.1:{worker_port}/readyz",
            log_path=workdir / "worker.log",
            env=dict(os.environ),
        )
        metrics_base = f"http://127.0.0.1:{worker_port}"
    server.start()
    if worker is not None:
        worker.start()
    try:
        if args.warmup > 0:
            run_wrk(f"{base}/v1/track", duration=args.warmup, customers=args.customers, **wrk)
        time.sleep(1.0)
        before = ib.scrape(metrics_base)
        since = datetime.now(UTC)
        cpu0 = server.cpu_seconds() + (worker.cpu_seconds() if worker else 0.0)
        load = run_wrk(f"{base}/v1/track", duration=args.duration, customers=args.customers, **wrk)
        until = datetime.now(UTC)
        cpu = server.cpu_seconds() + (worker.cpu_seconds() if worker else 0.0) - cpu0
        time.sleep(2.0)  # the last calls of the window are applied
        after = ib.scrape(metrics_base)
    finally:
        code = server.stop()
        if worker is not None:
            worker.stop()
    delays, statuses = stored_delays(db, since, until)
    buckets = delay_buckets(before, after)
    ok = sum(n for s, n in load["statuses"].items() if s.startswith("2"))
    return {
        "sent": load["sent"],
        "acked": ok,
        "acked_per_s": round(ok / (load["duration_us"] / 1e6), 1),
        "statuses": load["statuses"],
        "socket_errors": load["socket_errors"],
        "late_sends": load["late"],
        "ack_p50_ms": load["ack_p50_us"] / 1000,
        "ack_p99_ms": load["ack_p99_us"] / 1000,
        "server_cpu_share": round(cpu / args.duration, 3),
        "measured_events": len(delays),
        "delay_ms": {
            "p50": round(percentile(delays, 50), 2),
            "p90": round(percentile(delays, 90), 2),
            "p99": round(percentile(delays, 99), 2),
            "p99.9": round(percentile(delays, 99.9), 2),
            "max": round(delays[-1], 2) if delays else None,
        },
        "histogram_ms": {
            "count": int(buckets[-1][1]) if buckets else 0,
            "p50": round(1000 * histogram_quantile(buckets, 0.5), 2),
            "p99": round(1000 * histogram_quantile(buckets, 0.99), 2),
        },
        "inbox": statuses,
        "exit_code": code,
    }


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def report(doc: dict[str, Any]) -> str:
    lines = [f"# processing benchmark, {doc['date']}", "", f"`{doc['command']}`", ""]
    m = doc["machine"]
    lines += [f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}", ""]
    if doc["drain"]:
        d = doc["summary"]["drain"]
        lines += [
            f"drain: {doc['settings']['events']:,} stored calls, {doc['settings']['customers']:,} customers: "
            f"**{d['events_per_s']:,.0f} events/s** (median of {len(doc['drain'])}; runs: "
            + ", ".join(f"{r['events_per_s']:,.0f}" for r in doc["drain"])
            + ")",
            "",
        ]
    if doc.get("flows"):
        lines += [
            f"flows: {doc['settings']['flow_events']:,} Shopify checkouts, each starting a run "
            f"(median of {doc['settings']['runs']}):",
            "",
            "| batch size | CPU ms per event | statements per event | runs (CPU ms per event) |",
            "|---|---|---|---|",
        ]
        for size, f in doc["summary"]["flows"].items():
            runs = ", ".join(
                f"{r['cpu_ms_per_event']:.3f}" for r in doc["flows"] if str(r["batch_size"]) == size
            )
            lines.append(
                f"| {size} | **{f['cpu_ms_per_event']:.3f}** | {f['statements_per_event']:.2f} | {runs} |"
            )
        lines.append("")
    if doc["steady"]:
        s = doc["summary"]["steady"]
        lines += [
            f"steady at {doc['settings']['rate']:,.0f}/s for {doc['settings']['duration']:g} s "
            f"(median of {len(doc['steady'])}): processing delay from the events table "
            f"p50 {s['p50']} ms, p99 **{s['p99']} ms**, p99.9 {s['p99.9']} ms; histogram (after commit) "
            f"p50 {s['hist_p50']} ms, p99 {s['hist_p99']} ms; target p99 < {TARGET_P99_MS:g} ms: "
            f"**{'met' if s['hist_p99'] < TARGET_P99_MS and s['p99'] < TARGET_P99_MS else 'not met'}**",
            "",
            "| run | acked/s | events | p50 | p90 | p99 | p99.9 | max | hist p50 | hist p99 | ack p99 "
            "| CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(doc["steady"], 1):
            d = r["delay_ms"]
            lines.append(
                f"| {i} | {r['acked_per_s']:,.0f} | {r['measured_events']:,} | {d['p50']} | {d['p90']} | "
                f"{d['p99']} | {d['p99.9']} | {d['max']} | {r['histogram_ms']['p50']} | "
                f"{r['histogram_ms']['p99']} | {r['ack_p99_ms']} | {r['server_cpu_share']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def quiet(args: argparse.Namespace) -> None:
    """Other sessions share the machine: wait (up to --quiet-wait s) for it to be idle."""
    if args.quiet_wait > 0:
        busy = ib.wait_until_quiet(args.quiet_wait)
        if busy >= 0.15:
            print(f"  (machine still {busy:.2f} cores busy with other work; running anyway)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default="drain,steady", help="comma-separated: drain, steady, flows")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--events", type=int, default=20_000, help="stored calls drained per run")
    p.add_argument("--customers", type=int, default=2_000)
    p.add_argument("--flow-events", type=int, default=5_000, help="stored checkouts per flows run")
    p.add_argument("--flow-customers", type=int, default=5_000)
    p.add_argument(
        "--flow-batch", default="10,100,500", help="comma-separated processor batch sizes (flows phase)"
    )
    p.add_argument("--rate", type=float, default=1_000.0, help="calls/s in the steady phase")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per steady run")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet-wait", type=float, default=30.0, help="max s to wait for an idle machine")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--tag", default="")
    p.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    p.add_argument(
        "--split",
        action="store_true",
        help="steady phase with two processes on one store: `serve --role ingest` and `--role worker`",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    now = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="tidings-process-", dir=args.workdir))
    drains: list[dict[str, Any]] = []
    steadies: list[dict[str, Any]] = []
    flows: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.runs + 1):
            if "drain" in phases:
                work = root / f"drain-{rnd}"
                work.mkdir()
                quiet(args)
                r = asyncio.run(drain_once(work, args.events, args.customers))
                drains.append(r)
                print(
                    f"drain {rnd}: {r['events_per_s']:,.0f} events/s "
                    f"({r['drain_s']} s, {r['profiles']} profiles)"
                )
                shutil.rmtree(work, ignore_errors=True)
            for size in [int(b) for b in args.flow_batch.split(",")] if "flows" in phases else []:
                work = root / f"flows-{rnd}-{size}"
                work.mkdir()
                quiet(args)
                f = asyncio.run(flows_once(work, args.flow_events, args.flow_customers, size))
                flows.append(f)
                print(
                    f"flows {rnd}, batch {size}: {f['cpu_ms_per_event']:.3f} ms CPU and "
                    f"{f['statements_per_event']:.2f} statements per event ({f['runs']} runs)"
                )
                shutil.rmtree(work, ignore_errors=True)
            if "steady" in phases:
                work = root / f"steady-{rnd}"
                work.mkdir()
                quiet(args)
                s = steady_once(work, args)
                steadies.append(s)
                d, h = s["delay_ms"], s["histogram_ms"]
                print(
                    f"steady {rnd}: {s['acked_per_s']:,.0f} acked/s, {s['measured_events']:,} events, "
                    f"delay p50 {d['p50']} p99 {d['p99']} max {d['max']} ms; histogram p50 {h['p50']} "
                    f"p99 {h['p99']} ms; inbox {s['inbox']}"
                )
                shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary: dict[str, Any] = {}
    if drains:
        summary["drain"] = {"events_per_s": med([r["events_per_s"] for r in drains])}
    if flows:
        summary["flows"] = {
            str(size): {
                key: med([f[key] for f in flows if f["batch_size"] == size])
                for key in ("cpu_ms_per_event", "statements_per_event")
            }
            for size in sorted({f["batch_size"] for f in flows})
        }
    if steadies:
        summary["steady"] = {
            **{k: med([r["delay_ms"][k] for r in steadies]) for k in ("p50", "p90", "p99", "p99.9")},
            "hist_p50": med([r["histogram_ms"]["p50"] for r in steadies]),
            "hist_p99": med([r["histogram_ms"]["p99"] for r in steadies]),
        }
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/process.py", *(argv or sys.argv[1:])]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "drain": drains,
        "steady": steadies,
        "flows": flows,
        "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"process-{now:%Y-%m-%d}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(doc))
    print(report(doc))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
