"""Durable-timer benchmark: a million waits pending, how late they fire, memory, and a mass drain.

What runs, all on this machine over loopback (127.0.0.1 only):
- a SQLite store holding --pending (1,000,000) runs of one flow, each standing in its `wait` step
  (context {"waiting": "wait", ...}, wake "timer"), as the flow engine leaves a run that reached a
  wait: inserted in bulk (raw sqlite3) for speed, on a schema made by tidings' migrations, with
  the flow's version registered through FlowCatalog.register, and one customer profile (email,
  consent) per run. The step after the wait is a `send` to a `webhook` destination, so every
  firing writes an outbox row. The template store is built once and copied for every run;
- `tidings serve --role all` as a real process (SystemClock; the FlowRunner, processor and
  dispatcher as deployed); the destination is paused in the store so the dispatcher sends nothing
  (--deliver paused, the default: the runner measured alone), or the dispatcher delivers to
  tidings.testing.WebhookSink in its own process (--deliver sink);
- for the drain, signed Shopify `checkouts/create` webhooks at a steady --ingest-rate from this
  script (asyncio + aiohttp, open loop), to see that ingest keeps acknowledging.

Phases (each --runs times, medians reported):
0. cpu: FlowRunner.drain() in this process on --cpu-runs due runs: CPU ms and SQL statements per
   fired run (CPU time barely depends on other load: the figure to compare runner versions).
1. steady: on top of the pending million, runs falling due at --rate per second (due times spread
   evenly). Lateness of each run due in the measured window = its outbox row's created_at minus its
   due time (p50/p99; targets 20 ms / 250 ms), the tidings_flow_timer_lateness_seconds histogram,
   and the server's resident memory (VmRSS sampled every 0.5 s; target < 300 MB).
2. drain: --drain (100,000) runs all due within the same second (--drain-order: in the order they
   were created, or interleaved, see drain_dues). Drain time = from that second
   to the moment every one of their outbox rows is committed (polled every 0.25 s from a read-only
   connection; target < 30 s), while webhooks keep coming: their ack latency and status codes
   (2xx or 503 only).

    .venv/bin/python bench/timers.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import ingest as ib  # noqa: E402  (bench/ingest.py: server process, /metrics and machine helpers)

import e2e  # noqa: E402  (bench/e2e.py: the sink process, the paced load, percentiles)

FLOW = "reminder"
WAIT_STEP = "wait"
TRIGGER = "Bench Wait Started"  # no webhook maps to it: the bench's runs are the only ones
TARGETS = {"lateness_p50_ms": 20.0, "lateness_p99_ms": 250.0, "rss_mb": 300.0, "drain_s": 30.0}
CHUNK = 20_000


def config_yaml(db: Path, port: int, sink_url: str) -> str:
    return f"""# written by bench/timers.py
server:
  listen: 127.0.0.1:{port}
storage:
  url: sqlite:///{db}
sources:
  {e2e.SOURCE}:
    kind: shopify
    secrets: ["{e2e.SHOP_SECRET}"]
destinations:
  esp:
    kind: webhook
    url: "{sink_url}/reminders"
    secret: "{e2e.SINK_SECRET}"
flows:
  {FLOW}:
    trigger:
      event: {TRIGGER}
    run_key: event.properties.cart_id
    exit_on:
      - event: Order Completed
        when: event.properties.cart_id == run.key
    steps:
      - id: {WAIT_STEP}
        wait: 30m
      - id: remind
        send:
          destination: esp
          action: track_event
          event: Cart Reminder
          properties:
            ref: "{{{{ run.key }}}}"
            cartItems: "{{{{ event.properties.items }}}}"
            cartValue: "{{{{ event.properties.value }}}}"
            checkoutUrl: "{{{{ event.properties.checkout_url }}}}"
"""


# --------------------------------------------------------------------------- the store


def stamp(at: datetime) -> str:
    """A UTC time as tidings' UTCDateTime stores it in SQLite (compared as text)."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


ITEMS = [
    {"product_id": "8123920056453", "sku": "LS-M-SAND", "name": "Linen Shirt", "price": 59.9, "quantity": 1},
    {"product_id": "8123920122117", "sku": "CT-NAT", "name": "Canvas Tote", "price": 25.0, "quantity": 1},
]


def run_row(run_id: int, profiles: int, due: datetime, version: str) -> tuple[Any, ...]:
    """One run standing in its wait step, as the engine leaves it (steps.py: Executor._wait)."""
    started = due - timedelta(minutes=30)
    key = f"cart-{run_id}"
    event = {
        "name": TRIGGER,
        "properties": {
            "cart_id": key,
            "value": 84.9,
            "currency": "EUR",
            "items": ITEMS,
            "checkout_url": f"https://shop.example/cart/{key}",
        },
        "occurred_at": started.isoformat(),
        "source": "web",
        "event_id": run_id,
    }
    context = {
        "event": event,
        "first_occurred_at": started.isoformat(),
        "waiting": WAIT_STEP,
        "matched": None,
    }
    pid = (run_id - 1) % profiles + 1
    return (
        run_id,
        FLOW,
        version,
        key,
        key,
        pid,
        "active",
        WAIT_STEP,
        stamp(due),
        "timer",
        0,
        1,
        json.dumps(context),
        stamp(started),
        stamp(started),
    )


_INSERT_RUN = (
    "INSERT INTO flow_runs (id, flow, version, run_key, active_key, profile_id, status, step, due_at, wake, "
    "claim, visits, context, started_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def add_runs(db: Path, first_id: int, dues: list[datetime], profiles: int, version: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for start in range(0, len(dues), CHUNK):
                conn.executemany(
                    _INSERT_RUN,
                    (
                        run_row(first_id + start + k, profiles, due, version)
                        for k, due in enumerate(dues[start : start + CHUNK])
                    ),
                )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def build_template(path: Path, pending: int, profiles: int) -> dict[str, Any]:
    """The store every run starts from: schema, flow version, profiles, `pending` far-off waits."""
    from tidings.config import parse_settings
    from tidings.flows.catalog import FlowCatalog
    from tidings.store import Store

    t0 = time.perf_counter()
    settings = parse_settings(config_yaml(path, 8000, "http://127.0.0.1:9"), "timers.yaml", {})
    store = Store(settings.storage.url)
    try:
        store.upgrade()
        catalog = FlowCatalog(settings.flows)
        store.write_sync(lambda conn: catalog.register(conn, datetime.now(UTC)))
    finally:
        store.close()
    version = catalog.versions[FLOW]
    now = datetime.now(UTC)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        then = now - timedelta(days=30)
        made = stamp(then)
        # the shapes tidings.profiles.apply writes: versions are [occurred_at as fixed-width text, inbox id]
        seen = [then.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), 0]
        consent = json.dumps(
            {"email": {"state": "subscribed", "version": seen, "source": "shop", "at": then.isoformat()}}
        )
        versions = json.dumps({"email": seen, "first_name": seen})
        with conn:
            for start in range(1, profiles + 1, CHUNK):
                ids = range(start, min(start + CHUNK, profiles + 1))
                conn.executemany(
                    "INSERT INTO profiles (id, created_at, updated_at, merged_into, traits, trait_versions, "
                    "consent, aggregates) VALUES (?,?,?,NULL,?,?,?,'{}')",
                    (
                        (
                            i,
                            made,
                            made,
                            json.dumps({"email": f"customer{i}@example.com", "first_name": f"Ann{i % 97}"}),
                            versions,
                            consent,
                        )
                        for i in ids
                    ),
                )
                conn.executemany(
                    "INSERT INTO identities (kind, value, profile_id, first_seen_at) VALUES ('email',?,?,?)",
                    ((f"customer{i}@example.com", i, made) for i in ids),
                )
        # due a day from now and later, spread at 500/s: pending, never due during a run
        base = now + timedelta(days=1)
        with conn:
            for start in range(1, pending + 1, CHUNK):
                conn.executemany(
                    _INSERT_RUN,
                    (
                        run_row(i, profiles, base + timedelta(seconds=i / 500), version)
                        for i in range(start, min(start + CHUNK, pending + 1))
                    ),
                )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    check_shape(path, version)
    return {
        "pending": pending,
        "profiles": profiles,
        "version": version,
        "build_s": round(time.perf_counter() - t0, 1),
        "size_mb": round(path.stat().st_size / 2**20, 1),
    }


def check_shape(path: Path, version: str) -> None:
    """The bulk rows read back as the runner reads them (tidings.flows.runs.Run)."""
    from sqlalchemy import select

    from tidings.flows.runs import Run
    from tidings.store import Store
    from tidings.store.schema import flow_runs

    store = Store(f"sqlite:///{path}")
    try:
        rows = store.read_sync(lambda c: list(c.execute(select(flow_runs).order_by(flow_runs.c.id).limit(3))))
    finally:
        store.close()
    for row in rows:
        run = Run.from_row(row)
        assert run.version == version and run.step == WAIT_STEP and run.wake == "timer", run
        assert run.context["waiting"] == WAIT_STEP and run.due_at is not None and run.due_at.tzinfo is UTC


def pause_destination(db: Path) -> None:
    """--deliver paused: the dispatcher skips `esp` (tidings' own pause, as a circuit breaker sets)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                "INSERT INTO destination_state (destination, "
                "consecutive_failures, paused_until, paused_reason, "
                "updated_at) VALUES ('esp', 0, ?, 'bench/timers.py: no delivery', ?)",
                (stamp(datetime.now(UTC) + timedelta(days=30)), stamp(datetime.now(UTC))),
            )
    finally:
        conn.close()


def fired(db: Path, first_id: int) -> dict[int, datetime]:
    """Run id -> its outbox row's created_at, for runs with ids from `first_id`."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT idempotency_key, created_at FROM outbox WHERE idempotency_key LIKE ?", (f"flow:{FLOW}:%",)
        ).fetchall()
    finally:
        conn.close()
    out = {}
    for key, created in rows:
        run_id = int(key.split(":")[2])
        if run_id >= first_id:
            out[run_id] = _parse(created)
    return out


def run_statuses(db: Path, first_id: int) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT status, coalesce(end_reason, ''), count(*) FROM flow_runs WHERE id >= ? GROUP BY 1, 2",
            (first_id,),
        ).fetchall()
    finally:
        conn.close()
    return {f"{status}: {reason}" if reason else status: n for status, reason, n in rows}


def _parse(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def outbox_count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


# --------------------------------------------------------------------------- watching the process


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ib.CLK_TCK


def rss_mb(pid: int, key: str = "VmRSS:") -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class Watch:
    """VmRSS of the server every `every` s, in a thread."""

    pid: int
    every: float = 0.5
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watch:
        def loop() -> None:
            while not self._stop.wait(self.every):
                self.samples.append((time.time(), rss_mb(self.pid)))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def max_between(self, since: float, until: float) -> float:
        values = [v for t, v in self.samples if since <= t <= until and not math.isnan(v)]
        return round(max(values), 1) if values else math.nan


def hist_quantiles(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """tidings_flow_timer_lateness_seconds over the window: count, p50, p99 (interpolated), ms."""
    name = "tidings_flow_timer_lateness_seconds_bucket"
    buckets = []
    for key, value in after.items():
        if key.startswith(name + "{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le.replace("+Inf", "inf")), value - before.get(key, 0.0)))
    buckets.sort()

    def q(p: float) -> float:
        if not buckets or buckets[-1][1] <= 0:
            return math.nan
        rank, prev_le, prev_n = p * buckets[-1][1], 0.0, 0.0
        for le, n in buckets:
            if n >= rank:
                if math.isinf(le):
                    return prev_le * 1000
                return 1000 * (prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-12))
            prev_le, prev_n = le, n
        return math.nan

    return {
        "count": int(buckets[-1][1]) if buckets else 0,
        "p50_ms": round(q(0.5), 1),
        "p99_ms": round(q(0.99), 1),
        "buckets": [(le, int(n)) for le, n in buckets],
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Rig:
    """A fresh copy of the template, the sink (or a paused destination) and the server."""

    workdir: Path
    template: Path
    meta: dict[str, Any]
    args: argparse.Namespace
    port: int = 0
    sink: e2e.SinkProcess | None = None
    server: ib.Server | None = None
    watch: Watch | None = None

    @property
    def db(self) -> Path:
        return self.workdir / "tidings.db"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        shutil.copyfile(self.template, self.db)
        self.port = ib.free_port()
        sink_url = "http://127.0.0.1:9"
        if self.args.deliver == "sink":
            self.sink = e2e.SinkProcess(self.workdir)
            self.sink.start()
            sink_url = self.sink.url
        else:
            pause_destination(self.db)
        (self.workdir / "tidings.yaml").write_text(config_yaml(self.db, self.port, sink_url))

    def start(self) -> float:
        self.server = ib.Server(
            [ib.venv_bin("tidings"), "serve", "-c", str(self.workdir / "tidings.yaml"), "--role", "all"],
            ready_url=f"{self.base}/readyz",
            log_path=self.workdir / "server.log",
            env=dict(os.environ),
        )
        self.server.start(timeout=120)
        self.watch = Watch(self.server.pid).start()
        return time.time()

    def stop(self) -> tuple[int | None, dict[str, Any] | None, float]:
        hwm = rss_mb(self.server.pid, "VmHWM:") if self.server else math.nan
        if self.watch is not None:
            self.watch.stop()
        code = self.server.stop() if self.server is not None else None
        arrivals = self.sink.stop() if self.sink is not None else None
        return code, arrivals, hwm


def sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def steady_once(
    workdir: Path, template: Path, meta: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    rig = Rig(workdir, template, meta, args)
    rig.prepare()
    first_id = meta["pending"] + 1
    count = int(args.rate * (args.warmup + args.duration + args.tail))
    t0 = datetime.now(UTC) + timedelta(seconds=args.startup)
    dues = [t0 + timedelta(seconds=k / args.rate) for k in range(count)]
    add_runs(rig.db, first_id, dues, meta["profiles"], meta["version"])
    window = (t0 + timedelta(seconds=args.warmup), t0 + timedelta(seconds=args.warmup + args.duration))
    cpu0 = busy0 = 0.0
    try:
        ready = rig.start()
        assert rig.server is not None
        late_start = ready > window[0].timestamp()
        sleep_until(window[0].timestamp())
        before = ib.scrape(rig.base)
        cpu0, busy0, mine0 = rig.server.cpu_seconds(), ib.machine_busy_seconds(), time.process_time()
        sink_cpu0 = proc_cpu(rig.sink.pid) if rig.sink else 0.0
        sleep_until(window[1].timestamp())
        cpu = rig.server.cpu_seconds() - cpu0
        busy = ib.machine_busy_seconds() - busy0
        others = busy - cpu - (time.process_time() - mine0)
        others -= (proc_cpu(rig.sink.pid) - sink_cpu0) if rig.sink else 0.0
        sleep_until(window[1].timestamp() + args.tail + 2)
        after = ib.scrape(rig.base)
        rss_window = (
            rig.watch.max_between(window[0].timestamp(), window[1].timestamp()) if rig.watch else math.nan
        )
        pending_gauge = after.get("tidings_flow_timers_pending")
    finally:
        code, arrivals, hwm = rig.stop()
    made = fired(rig.db, first_id)
    lateness, missing = [], 0
    for k, due in enumerate(dues):
        if window[0] <= due < window[1]:
            at = made.get(first_id + k)
            if at is None:
                missing += 1
            else:
                lateness.append((at - due).total_seconds() * 1000)
    lateness.sort()
    delivered = []
    if arrivals is not None:
        due_of = {
            f"cart-{first_id + k}": due.timestamp()
            for k, due in enumerate(dues)
            if window[0] <= due < window[1]
        }
        seen = set()
        for a in arrivals["arrivals"]:
            if a["ref"] in due_of and a["ref"] not in seen:
                seen.add(a["ref"])
                delivered.append((a["at"] + arrivals["offset"] - due_of[a["ref"]]) * 1000)
        delivered.sort()
    return {
        "due_in_window": sum(1 for d in dues if window[0] <= d < window[1]),
        "fired_in_window": len(lateness),
        "missing": missing,
        "late_start": late_start,
        "lateness_ms": e2e.pcts(lateness),
        "delivered_ms": e2e.pcts(delivered) if arrivals is not None else None,
        "histogram": hist_quantiles(before, after),
        "rss_mb_window_max": rss_window,
        "rss_mb_peak": round(hwm, 1),
        "server_cpu_share": round(cpu / args.duration, 3),
        "other_cpu_share": round(others / args.duration, 3),
        "timers_pending_gauge": pending_gauge,
        "runs": run_statuses(rig.db, first_id),
        "exit_code": code,
    }


def drain_dues(t1: datetime, n: int, order: str) -> list[datetime]:
    """Due times within the second after t1, for runs in id (creation) order.

    `created`: due in the order the runs were created, as a burst of checkouts followed by the
    same wait leaves them, or a wait until a time of day (equal due times are claimed in id
    order). `interleaved`: consecutive runs due 1 ms apart, wrapping every 1,000 runs, so a round's
    runs (claimed by due time) lie 1,000 ids apart, each on pages of its own: the worst case for the
    store's locality, and this benchmark's only order before session 5.
    """
    if order == "created":
        return [t1 + timedelta(milliseconds=k * 1000 // n) for k in range(n)]
    return [t1 + timedelta(milliseconds=k % 1000) for k in range(n)]


def drain_once(
    workdir: Path, template: Path, meta: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    rig = Rig(workdir, template, meta, args)
    rig.prepare()
    first_id = meta["pending"] + 1
    t1 = (datetime.now(UTC) + timedelta(seconds=args.startup + args.ingest_lead)).replace(microsecond=0)
    dues = drain_dues(t1, args.drain, args.drain_order)
    add_runs(rig.db, first_id, dues, meta["profiles"], meta["version"])
    done_at: list[float] = []
    counts: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            n = outbox_count(rig.db)
            counts.append((time.time(), n))
            if n >= args.drain and not done_at:
                done_at.append(time.time())
            stop.wait(0.25)

    try:
        rig.start()
        assert rig.server is not None
        sleep_until(t1.timestamp() - args.ingest_lead)
        before = ib.scrape(rig.base)
        cpu0, busy0 = rig.server.cpu_seconds(), ib.machine_busy_seconds()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        prefix = f"d{time.time_ns() & 0xFFFFFF:06x}"
        load_stop: asyncio.Event | None = None

        async def load() -> list[e2e.Shot]:
            nonlocal load_stop
            load_stop = asyncio.Event()

            async def until_drained() -> None:
                deadline = time.monotonic() + args.ingest_lead + args.max_drain
                while time.monotonic() < deadline:
                    if done_at and time.time() >= done_at[0] + args.ingest_tail:
                        break
                    await asyncio.sleep(0.1)
                assert load_stop is not None
                load_stop.set()

            watcher = asyncio.create_task(until_drained())
            shots = await e2e.paced_load(
                f"{rig.base}/hooks/{e2e.SOURCE}",
                lambda n: e2e.shopify_request(n, prefix, args.customers),
                rate=args.ingest_rate,
                duration=args.ingest_lead + args.max_drain + args.ingest_tail,
                connections=args.connections,
                stop=load_stop,
            )
            await watcher
            return shots

        shots = e2e.run_async(load())
        stop.set()
        poller.join()
        cpu = rig.server.cpu_seconds() - cpu0
        elapsed = time.time() - (t1.timestamp() - args.ingest_lead)
        busy = ib.machine_busy_seconds() - busy0
        after = ib.scrape(rig.base)
        rss_drain = rig.watch.max_between(t1.timestamp(), time.time()) if rig.watch else math.nan
    finally:
        stop.set()
        code, _arrivals, hwm = rig.stop()
    made = fired(rig.db, first_id)
    lateness = sorted(
        (made[first_id + k] - due).total_seconds() * 1000
        for k, due in enumerate(dues)
        if first_id + k in made
    )
    last_created = max(made.values()) if made else None
    return {
        "drain": args.drain,
        "fired": len(made),
        "drain_s": round(done_at[0] - t1.timestamp(), 2) if done_at else None,
        "drain_s_last_created": round((last_created - t1).total_seconds(), 2) if last_created else None,
        "fired_per_s": round(len(made) / (done_at[0] - t1.timestamp()), 1) if done_at else None,
        "lateness_ms": e2e.pcts(lateness),
        "histogram": hist_quantiles(before, after),
        "ingest": e2e.load_summary(shots),
        "rss_mb_drain_max": rss_drain,
        "rss_mb_peak": round(hwm, 1),
        "server_cpu_share": round(cpu / elapsed, 3),
        "machine_busy_share": round(busy / elapsed, 3),
        "progress": _progress(counts, t1.timestamp()),
        "runs": run_statuses(rig.db, first_id),
        "exit_code": code,
    }


def cpu_once(workdir: Path, template: Path, meta: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """FlowRunner.drain() in this process on --cpu-runs due runs: CPU per fired run and statements.

    CPU time, unlike wall time, hardly depends on what else the machine is doing: the figure to
    compare two versions of the runner on a shared machine.
    """
    from sqlalchemy import event

    from tidings.app import Tidings
    from tidings.config import parse_settings

    db = workdir / "tidings.db"
    shutil.copyfile(template, db)
    due = datetime.now(UTC) - timedelta(seconds=1)
    add_runs(db, meta["pending"] + 1, [due] * args.cpu_runs, meta["profiles"], meta["version"])
    settings = parse_settings(config_yaml(db, 8000, "http://127.0.0.1:9"), "timers.yaml", {})
    statements = [0]

    async def go() -> tuple[int, float, float]:
        async with Tidings(settings, process=False) as tidings:
            event.listen(
                tidings.store.engine,
                "before_cursor_execute",
                lambda *_: statements.__setitem__(0, statements[0] + 1),
            )
            cpu0, t0 = time.process_time(), time.perf_counter()
            n = await tidings.runner.drain()
            return n, time.process_time() - cpu0, time.perf_counter() - t0

    n, cpu, wall = asyncio.run(go())
    if n != args.cpu_runs:
        raise RuntimeError(f"{n} of {args.cpu_runs} due runs fired")
    return {
        "fired": n,
        "cpu_ms_per_run": round(1000 * cpu / n, 3),
        "wall_s": round(wall, 2),
        "fired_per_s": round(n / wall, 1),
        "statements_per_run": round(statements[0] / n, 2),
        "runs": run_statuses(db, meta["pending"] + 1),
    }


def _progress(counts: list[tuple[float, int]], t1: float) -> list[tuple[float, int]]:
    """Outbox rows committed, once per second after the due second."""
    out, next_mark = [], 0.0
    for at, n in counts:
        if at - t1 >= next_mark:
            out.append((round(at - t1, 1), n))
            next_mark = math.floor(at - t1) + 1.0
    return out


# --------------------------------------------------------------------------- report


def report(doc: dict[str, Any]) -> str:
    st, m, s = doc["settings"], doc["machine"], doc["summary"]
    lines = [
        f"# timers benchmark, {doc['date']}",
        "",
        f"`{doc['command']}`",
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}; "
        f"template: {doc['template']['pending']:,} pending waits, {doc['template']['profiles']:,} profiles, "
        f"{doc['template']['size_mb']:,} MB (built in "
        f"{doc['template']['build_s']} s); delivery: {st['deliver']}",
        "",
    ]
    if doc["steady"]:
        t = TARGETS
        ss = s["steady"]
        met = ss["p50"] <= t["lateness_p50_ms"] and ss["p99"] <= t["lateness_p99_ms"]
        lines += [
            f"## steady: {st['rate']:,.0f} runs/s falling due, {st['duration']:g} s measured",
            "",
            "Lateness (outbox created_at - due), median of "
            f"{len(doc['steady'])} runs: p50 **{ss['p50']} ms**, "
            f"p99 **{ss['p99']} ms** (targets {t['lateness_p50_ms']:g} / {t['lateness_p99_ms']:g} ms): "
            f"**{'met' if met else 'not met'}**. Resident memory: max {ss['rss_mb']} MB during the window, "
            f"peak {ss['rss_peak_mb']} MB (target < {t['rss_mb']:g} MB): "
            f"**{'met' if ss['rss_peak_mb'] < t['rss_mb'] else 'not met'}**.",
            "",
            "| run | due | fired | missing | p50 | p90 | p99 | "
            "p99.9 | max | hist p50 | hist p99 | delivered p99 "
            "| RSS MB (window max / peak) | server CPU | others' CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(doc["steady"], 1):
            lt, h = r["lateness_ms"], r["histogram"]
            dl = r["delivered_ms"]["p99"] if r["delivered_ms"] else "-"
            lines.append(
                f"| {i} | {r['due_in_window']:,} | {r['fired_in_window']:,} | {r['missing']} | {lt['p50']} | "
                f"{lt['p90']} | {lt['p99']} | {lt['p99.9']} | "
                f"{lt['max']} | {h['p50_ms']} | {h['p99_ms']} | {dl} | "
                f"{r['rss_mb_window_max']} / {r['rss_mb_peak']} | {r['server_cpu_share']:.2f} | "
                f"{r['other_cpu_share']:.2f} |"
            )
        lines.append("")
    if doc["cpu"]:
        sc = s["cpu"]
        lines += [
            f"## cpu: FlowRunner.drain() in-process on {st['cpu_runs']:,} due runs (no delivery)",
            "",
            f"CPU per fired run, median of {len(doc['cpu'])} runs: **{sc['cpu_ms_per_run']} ms** "
            f"({sc['statements_per_run']} SQL statements per "
            f"run); at most ~{1000 / sc['cpu_ms_per_run']:,.0f} "
            "firings/s on one core. Runs: "
            + ", ".join(f"{r['cpu_ms_per_run']} ms" for r in doc["cpu"])
            + ".",
            "",
        ]
    if doc["drain"]:
        sd = s["drain"]
        drained = sd["drain_s"] is not None
        verdict = "met" if drained and sd["drain_s"] < TARGETS["drain_s"] else "not met"
        if drained:
            took = f"**{sd['drain_s']} s**"
        else:
            rates = [_rate(r) for r in doc["drain"]]
            took = (
                f"**not drained within {st['max_drain']:g} s** (fired "
                + ", ".join(f"{r['fired']:,}" for r in doc["drain"])
                + f" of {st['drain']:,}; {e2e.med(rates):,.0f}/s, so ~{st['drain'] / e2e.med(rates):,.0f} s "
                "for all)"
            )
        lines += [
            f"## drain: {st['drain']:,} runs due within one second ({st.get('drain_order', 'interleaved')} "
            f"order), webhooks at {st['ingest_rate']:g}/s",
            "",
            f"Drain time, median of {len(doc['drain'])} runs: {took} (target < "
            f"{TARGETS['drain_s']:g} s): **{verdict}**; "
            f"webhook ack p99 {sd['ack_p99']} ms; answers: {sd['statuses']} (`unsent`: still waiting for "
            "one of the load generator's connections when the load stopped).",
            "",
            "| run | fired | drain s | fired/s | lateness p50 | p99 | max | ack p50 | ack p99 | ack max "
            "| ack p99 from slot | answers | RSS MB (max / peak) | server CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(doc["drain"], 1):
            lt, a = r["lateness_ms"], r["ingest"]["ack_ms"]
            lines.append(
                f"| {i} | {r['fired']:,} | {r['drain_s']} | {_rate(r):,.0f} | {lt['p50']} | {lt['p99']} | "
                f"{lt['max']} | {a['p50']} | {a['p99']} | {a['max']} | "
                f"{r['ingest']['ack_from_slot_ms']['p99']} "
                f"| {json.dumps(r['ingest']['statuses'])} | "
                f"{r['rss_mb_drain_max']} / {r['rss_mb_peak']} | {r['server_cpu_share']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _finite(value: float) -> float | None:
    """None for a drain that did not finish (JSON has no infinity)."""
    return value if math.isfinite(value) else None


def _rate(r: dict[str, Any]) -> float:
    """Firings per second: over the drain, or up to the last count when it did not finish."""
    if r["fired_per_s"]:
        return float(r["fired_per_s"])
    done = [(t, n) for t, n in r["progress"] if t > 0]
    return done[-1][1] / done[-1][0] if done else math.nan


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarise(
    steady: list[dict[str, Any]], drain: list[dict[str, Any]], cpu: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cpu:
        out["cpu"] = {
            "cpu_ms_per_run": _r(e2e.med([r["cpu_ms_per_run"] for r in cpu])),
            "statements_per_run": _r(e2e.med([r["statements_per_run"] for r in cpu])),
        }
    if steady:
        out["steady"] = {
            "p50": _r(e2e.med([r["lateness_ms"]["p50"] for r in steady])),
            "p99": _r(e2e.med([r["lateness_ms"]["p99"] for r in steady])),
            "rss_mb": _r(e2e.med([r["rss_mb_window_max"] for r in steady]), 1),
            "rss_peak_mb": _r(e2e.med([r["rss_mb_peak"] for r in steady])),
            "missing": sum(r["missing"] for r in steady),
        }
    if drain:
        statuses: dict[str, int] = {}
        for r in drain:
            for k, v in r["ingest"]["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        out["drain"] = {
            "drain_s": _finite(
                round(e2e.med([r["drain_s"] if r["drain_s"] is not None else math.inf for r in drain]), 3)
            ),
            "ack_p99": _r(e2e.med([r["ingest"]["ack_ms"]["p99"] for r in drain])),
            "statuses": statuses,
            "rss_peak_mb": _r(e2e.med([r["rss_mb_peak"] for r in drain])),
        }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default="cpu,steady,drain", help="comma-separated: cpu, steady, drain")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pending", type=int, default=1_000_000, help="far-off waits in the store")
    p.add_argument("--profiles", type=int, default=1_000_000, help="customers the runs belong to")
    p.add_argument("--rate", type=float, default=500.0, help="runs falling due per second (steady)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (steady)")
    p.add_argument("--warmup", type=float, default=5.0, help="s of due runs before the window (steady)")
    p.add_argument("--tail", type=float, default=3.0, help="s of due runs after the window (steady)")
    p.add_argument("--startup", type=float, default=15.0, help="s from the insert to the first due time")
    p.add_argument("--cpu-runs", type=int, default=20_000, help="due runs drained in-process (cpu)")
    p.add_argument("--drain", type=int, default=100_000, help="runs due within one second (drain)")
    p.add_argument(
        "--drain-order",
        choices=("created", "interleaved"),
        default="created",
        help="due order of the drain's runs against their creation order (see drain_dues)",
    )
    p.add_argument("--max-drain", type=float, default=300.0, help="give up on a drain after this many s")
    p.add_argument("--ingest-rate", type=float, default=200.0, help="webhooks/s during the drain")
    p.add_argument("--ingest-lead", type=float, default=5.0, help="s of webhooks before the due second")
    p.add_argument("--ingest-tail", type=float, default=2.0, help="s of webhooks after the drain")
    p.add_argument("--customers", type=int, default=5_000, help="customers of the ingest webhooks")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--deliver", choices=("sink", "paused"), default="paused")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="max s to wait for an idle machine")
    p.add_argument("--template", type=Path, default=None, help="reuse (or build here) the template store")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--tag", default="")
    p.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    p.add_argument("--keep", action="store_true", help="keep the run stores and logs")
    return p.parse_args(argv)


def one_round(
    rnd: int,
    phases: set[str],
    root: Path,
    template: Path,
    meta: dict[str, Any],
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
) -> None:
    """One run of each phase asked for, each on a fresh copy of the template."""
    cpu, steady, drain = results["cpu"], results["steady"], results["drain"]
    if "cpu" in phases:
        work = root / f"cpu-{rnd}"
        work.mkdir()
        c = cpu_once(work, template, meta, args)
        cpu.append(c)
        print(
            f"cpu {rnd}: {c['fired']:,} fired, {c['cpu_ms_per_run']} "
            f"ms CPU and {c['statements_per_run']} "
            f"statements per run ({c['fired_per_s']}/s wall)",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if "steady" in phases:
        work = root / f"steady-{rnd}"
        work.mkdir()
        e2e.quiet(args.quiet_wait)
        r = steady_once(work, template, meta, args)
        steady.append(r)
        lt = r["lateness_ms"]
        print(
            f"steady {rnd}: {r['fired_in_window']:,}/{r['due_in_window']:,} "
            f"fired, lateness p50 {lt['p50']} "
            f"p99 {lt['p99']} max {lt['max']} ms; hist p99 {r['histogram']['p99_ms']} ms; RSS "
            f"{r['rss_mb_window_max']} MB (peak {r['rss_mb_peak']}); "
            f"CPU {r['server_cpu_share']}, others "
            f"{r['other_cpu_share']}{' LATE START' if r['late_start'] else ''}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if "drain" in phases:
        work = root / f"drain-{rnd}"
        work.mkdir()
        e2e.quiet(args.quiet_wait)
        d = drain_once(work, template, meta, args)
        drain.append(d)
        a = d["ingest"]["ack_ms"]
        print(
            f"drain {rnd}: {d['fired']:,} fired in {d['drain_s']} "
            f"s ({d['fired_per_s']}/s); lateness p99 "
            f"{d['lateness_ms']['p99']} ms; webhooks ack p50 "
            f"{a['p50']} p99 {a['p99']} max {a['max']} ms, "
            f"{d['ingest']['statuses']}; RSS max {d['rss_mb_drain_max']} MB",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminated)  # so `finally` stops the processes this script started
    args = parse_args(raw)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    now = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="tidings-timers-", dir=args.workdir))
    template = args.template or root / "template.db"
    meta_file = template.with_suffix(".json")
    results: dict[str, list[dict[str, Any]]] = {"cpu": [], "steady": [], "drain": []}
    steady, drain, cpu = results["steady"], results["drain"], results["cpu"]
    try:
        if template.exists() and meta_file.exists():
            meta = json.loads(meta_file.read_text())
            print(f"template {template}: {meta}")
        else:
            print(
                f"building the template: {args.pending:,} waits, {args.profiles:,} profiles ...", flush=True
            )
            meta = build_template(template, args.pending, args.profiles)
            meta_file.write_text(json.dumps(meta))
            print(f"  {meta}", flush=True)
        for rnd in range(1, args.runs + 1):
            one_round(rnd, phases, root, template, meta, args, results)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:  # a --template lives elsewhere and is kept; one built in here goes with the rest
            shutil.rmtree(root, ignore_errors=True)
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/timers.py", *raw]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": e2e.machine(),
        "code": e2e.code_version(),
        "template": meta,
        "steady": steady,
        "drain": drain,
        "cpu": cpu,
        "summary": summarise(steady, drain, cpu),
        "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"timers-{now:%Y-%m-%d}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(doc))
    print(report(doc))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


def _terminated(*_: Any) -> None:
    raise SystemExit("terminated")


if __name__ == "__main__":
    sys.exit(main())
