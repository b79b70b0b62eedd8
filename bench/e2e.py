"""End-to-end benchmark: a signed Shopify checkout in, the flow's request out at the destination.

What runs, all on this machine over loopback (127.0.0.1 only):
- `tidings serve` (all roles in one process) as a real process on a fresh SQLite file, with one
  `shopify` source, one `webhook` destination and a flow that sends as soon as a checkout starts
  (trigger -> send, no wait);
- the destination: tidings.testing.WebhookSink (checks every Standard Webhooks signature, answers
  at once) in its own process, recording each request's arrival (time.monotonic(), which is the
  machine-wide CLOCK_MONOTONIC, the same clock this script reads);
- the load: this script, asyncio + aiohttp with a pacing loop: signed `checkouts/create` webhooks at a
  steady --rate, each with its own checkout token (= the flow's run key), posted at its slot
  whatever the answers do (open loop).

Measured per webhook: from its send (the moment this script hands it to aiohttp) to the flow's
request arriving at the sink. Webhooks sent during the --warmup are not counted. Each run uses a
fresh server and store; the summary is the median of --runs runs.

    .venv/bin/python bench/e2e.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import ingest as ib  # noqa: E402  (bench/ingest.py: server process, /metrics and machine helpers)

SHOP_SECRET = "bench-shopify-client-secret-not-a-real-one"
SINK_SECRET = "whsec_" + base64.b64encode(b"bench-webhook-sink-secret-32byte").decode()
SOURCE = "shop"
TARGETS_MS = {"p50": 20.0, "p99": 100.0}


# --------------------------------------------------------------------------- the webhooks


def checkout_body(token: str, email: str, customer_id: int, at: datetime) -> bytes:
    """A trimmed Shopify REST Checkout resource, compact like Shopify's (~1.3 KB)."""
    stamp = at.isoformat(timespec="seconds")
    address = {
        "first_name": "Ana",
        "last_name": "Lima",
        "address1": "Torstraße 118",
        "city": "Berlin",
        "zip": "10119",
        "country_code": "DE",
    }
    checkout = {
        "id": 30000000000 + customer_id,
        "token": token,
        "cart_token": f"cart-{token}",
        "email": email,
        "buyer_accepts_marketing": True,
        "created_at": stamp,
        "updated_at": stamp,
        "currency": "EUR",
        "presentment_currency": "EUR",
        "subtotal_price": "84.90",
        "total_price": "89.85",
        "total_tax": "13.56",
        "total_discounts": "0.00",
        "abandoned_checkout_url": f"https://shop.example/checkouts/{token}/recover",
        "customer": {
            "id": 7300000000000 + customer_id,
            "email": email,
            "first_name": "Ana",
            "last_name": "Lima",
        },
        "billing_address": address,
        "shipping_address": address,
        "line_items": [
            {
                "product_id": 8123920056453,
                "variant_id": 44512204914821,
                "title": "Linen Shirt",
                "variant_title": "M / Sand",
                "sku": "LS-M-SAND",
                "quantity": 1,
                "price": "59.90",
            },
            {
                "product_id": 8123920122117,
                "variant_id": 44512205005957,
                "title": "Canvas Tote",
                "variant_title": None,
                "sku": "CT-NAT",
                "quantity": 1,
                "price": "25.00",
            },
        ],
    }
    return json.dumps(checkout, separators=(",", ":"), ensure_ascii=False).encode()


def shopify_request(n: int, prefix: str, customers: int) -> tuple[str, bytes, dict[str, str]]:
    """The n-th checkouts/create webhook of a run: (checkout token, body, headers), signed."""
    token = f"{prefix}-{n}"
    customer = (n * 7919) % customers
    body = checkout_body(token, f"customer{customer}@example.com", customer, datetime.now(UTC))
    headers = {
        "content-type": "application/json",
        "x-shopify-topic": "checkouts/create",
        "x-shopify-hmac-sha256": ib.shopify_hmac(body, SHOP_SECRET),
        "x-shopify-shop-domain": "bench-shop.myshopify.com",
        "x-shopify-api-version": "2025-07",
        "x-shopify-webhook-id": f"wh-{token}",
        "x-shopify-event-id": f"ev-{token}",
        "x-shopify-triggered-at": datetime.now(UTC).isoformat(),
        "user-agent": "Shopify-Captain-Hook",
    }
    return token, body, headers


# --------------------------------------------------------------------------- the load


@dataclass(slots=True)
class Shot:
    n: int
    key: str
    slot: float  # when it was due to be sent (monotonic)
    sent: float = math.nan  # written to a free connection
    acked: float = math.nan
    status: str = ""


async def paced_load(
    url: str,
    make: Callable[[int], tuple[str, bytes, dict[str, str]]],
    *,
    rate: float,
    duration: float,
    connections: int,
    timeout: float = 10.0,
    stop: asyncio.Event | None = None,
) -> list[Shot]:
    """POST make(0), make(1), ... at a steady `rate` for `duration` s (or until `stop`), open loop:
    each request is due at its slot whatever earlier answers do. At most `connections` are in
    flight (one per connection); a request waiting for a free connection is late, and its time
    from the slot counts that wait (no coordinated omission).

    aiohttp, not httpx: the load shares this machine's two cores with the server, and httpx's
    client cost ~1.3-2.6 ms of CPU a request against aiohttp's ~0.4 (bench/http_client.py), so at
    500/s it took most of a core from the server it was measuring."""
    import aiohttp

    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout: reusing one the server
    # is closing at that moment would be a client-side race, not an answer of the server.
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=2.0)
    free = asyncio.Semaphore(connections)
    shots: list[Shot] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), cookie_jar=aiohttp.DummyCookieJar()
    ) as client:

        async def fire(shot: Shot) -> None:
            key, body, headers = make(shot.n)
            shot.key = key
            async with free:
                if stop is not None and stop.is_set():
                    shot.status = "unsent"  # still waiting for a connection when the load stopped
                    return
                shot.sent = time.monotonic()
                try:
                    async with client.post(url, data=body, headers=headers) as response:
                        await response.read()
                        shot.status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    shot.status = type(exc).__name__
                shot.acked = time.monotonic()

        tasks = []
        start = time.monotonic() + 0.05
        total = int(rate * duration)
        for n in range(total):
            if stop is not None and stop.is_set():
                break
            slot = start + n / rate
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            shot = Shot(n, "", slot)
            shots.append(shot)
            tasks.append(asyncio.create_task(fire(shot)))
        await asyncio.gather(*tasks)
    return shots


def load_summary(shots: list[Shot]) -> dict[str, Any]:
    """Answers by status, ack latency and how late the sends were against their slots."""
    acks = sorted((s.acked - s.sent) * 1000 for s in shots if s.status.startswith("2"))
    from_slot = sorted((s.acked - s.slot) * 1000 for s in shots if s.status.startswith("2"))
    late = sorted((s.sent - s.slot) * 1000 for s in shots if not math.isnan(s.sent))
    span = (shots[-1].slot - shots[0].slot) if len(shots) > 1 else math.nan
    return {
        "sent": len(shots),
        "offered_per_s": round((len(shots) - 1) / span, 1) if span and span > 0 else None,
        "statuses": dict(Counter(s.status for s in shots)),
        "ack_ms": pcts(acks),
        "ack_from_slot_ms": pcts(from_slot),
        "send_late_ms": {"p50": round(pct(late, 50), 2), "p99": round(pct(late, 99), 2), "max": _max(late)},
    }


# --------------------------------------------------------------------------- the sink


def sink_main(secret: str, out: Path, port_file: Path) -> None:
    """The destination, run as its own process: a WebhookSink until SIGTERM, then its arrivals."""
    from tidings.testing import WebhookSink

    sink = WebhookSink(secret)
    sink.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    port_file.write_text(str(sink.port))
    while not stopping.wait(0.2):
        pass
    sink.stop()
    offset = time.time() - time.monotonic()  # to turn arrivals into wall-clock time
    arrivals = []
    for r in sink.requests:
        try:
            data = json.loads(r.body).get("data") or {}
        except ValueError:
            data = {}
        props = data.get("properties") if isinstance(data.get("properties"), dict) else {}
        arrivals.append({"id": r.headers.get("webhook-id"), "at": r.at, "ref": props.get("ref")})
    doc = {"offset": offset, "verified": len(sink.received), "arrivals": arrivals}
    out.write_text(json.dumps(doc))


class SinkProcess:
    """The WebhookSink process this script started; stopped by its pid only."""

    def __init__(self, workdir: Path, secret: str = SINK_SECRET) -> None:
        self.workdir = workdir
        self.secret = secret
        self.out = workdir / "sink.json"
        self.port_file = workdir / "sink.port"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        log = (self.workdir / "sink.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-sink", self.secret, str(self.out), str(self.port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the sink did not start: " + (self.workdir / "sink.log").read_text()[-2000:]
                )
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.out.exists():
            raise RuntimeError(
                "the sink wrote no arrivals: " + (self.workdir / "sink.log").read_text()[-2000:]
            )
        doc: dict[str, Any] = json.loads(self.out.read_text())
        return doc


# --------------------------------------------------------------------------- one run


def config_yaml(db: Path, port: int, sink_url: str) -> str:
    return f"""# written by bench/e2e.py
server:
  listen: 127.0.0.1:{port}
storage:
  url: sqlite:///{db}
sources:
  {SOURCE}:
    kind: shopify
    secrets: ["{SHOP_SECRET}"]
destinations:
  sink:
    kind: webhook
    url: "{sink_url}/flows"
    secret: "{SINK_SECRET}"
flows:
  checkout_followup:
    trigger:
      event: Checkout Started
    run_key: event.properties.checkout_id
    steps:
      - id: notify
        send:
          destination: sink
          action: track_event
          event: Checkout Follow-up
          properties:
            ref: "{{{{ event.properties.checkout_id }}}}"
            value: "{{{{ event.properties.value }}}}"
            checkoutUrl: "{{{{ event.properties.checkout_url }}}}"
"""


def e2e_once(workdir: Path, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    port = ib.free_port()
    db = workdir / "tidings.db"
    sink = SinkProcess(workdir)
    sink.start()
    config = workdir / "tidings.yaml"
    config.write_text(config_yaml(db, port, sink.url))
    server = ib.Server(
        [ib.venv_bin("tidings"), "serve", "-c", str(config), "--role", "all"],
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=workdir / "server.log",
        env=dict(os.environ),
    )
    prefix = f"r{rnd}x{time.time_ns() & 0xFFFFFF:06x}"
    url = f"http://127.0.0.1:{port}/hooks/{SOURCE}"
    profiler = None
    try:
        server.start()
        if args.py_spy and rnd == 0:
            profiler = start_profiler(args.py_spy, server.pid, workdir / "profile.txt", args.duration)
        before = ib.scrape(f"http://127.0.0.1:{port}")
        cpu0, wall0, load_cpu0 = server.cpu_seconds(), time.monotonic(), time.process_time()
        shots = run_async(
            paced_load(
                url,
                lambda n: shopify_request(n, prefix, args.customers),
                rate=args.rate,
                duration=args.warmup + args.duration,
                connections=args.connections,
            )
        )
        cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
        load_cpu = time.process_time() - load_cpu0
        # the last webhooks' requests arrive
        deadline = time.monotonic() + args.grace
        expected = sum(1 for s in shots if s.status.startswith("2"))
        while time.monotonic() < deadline and _outbox_delivered(db) < expected:
            time.sleep(0.2)
        cpu_all = server.cpu_seconds() - cpu0  # every webhook of the run taken through to delivery
        after = ib.scrape(f"http://127.0.0.1:{port}")
        rss = server.peak_rss_mb()
    finally:
        if profiler is not None:
            profiler.wait(60)
        code = server.stop()
        arrived = sink.stop()
    first = {}
    for a in arrived["arrivals"]:
        if a["ref"] is not None and a["ref"] not in first:
            first[a["ref"]] = a["at"]
    start = shots[0].slot + args.warmup
    measured = [s for s in shots if s.slot >= start]
    latencies = sorted(
        (first[s.key] - s.sent) * 1000 for s in measured if s.status.startswith("2") and s.key in first
    )
    from_slot = sorted(
        (first[s.key] - s.slot) * 1000 for s in measured if s.status.startswith("2") and s.key in first
    )
    acked = [s for s in measured if s.status.startswith("2")]
    return {
        "load": load_summary(measured),
        "measured": len(measured),
        "acked": len(acked),
        "arrived": len(latencies),
        "missing": len(acked) - len(latencies),
        "duplicates": len(arrived["arrivals"]) - len(first),
        "verified_by_sink": arrived["verified"],
        "e2e_ms": pcts(latencies),
        "e2e_from_slot_ms": pcts(from_slot),
        "server_cpu_share": round(cpu / wall, 3),  # while the load ran (longer than planned if queued)
        "load_cpu_share": round(load_cpu / wall, 3),  # the load generator's, on the same cores
        "load_s": round(wall, 1),
        "acked_per_s": round(expected / wall, 1),  # over the whole load, warm-up included
        "server_cpu_ms_per_webhook": round(1000 * cpu_all / max(1, expected), 3),
        "server_peak_rss_mb": round(rss, 1),
        "flow_sends": {
            k: v - before.get(k, 0.0) for k, v in after.items() if k.startswith("tidings_flow_sends_total")
        },
        "exit_code": code,
        "profile": ib.summarise_profile(workdir / "profile.txt") if profiler is not None else None,
    }


def start_profiler(py_spy: str, pid: int, out: Path, duration: float) -> subprocess.Popen[bytes]:
    """py-spy on the server (the extra run 0, not counted in the summary), GIL-holding samples."""
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))), "--rate", "200"]
    argv += ["--format", "raw", "--threads", "--gil", "--output", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc


def _outbox_delivered(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox WHERE status = 'delivered'").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def run_async(coro: Any) -> Any:
    """asyncio.run on uvloop when it is there (as the server runs); SIGTERM cancels it."""

    async def guarded() -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(guarded())
    return uvloop.run(guarded())


# --------------------------------------------------------------------------- numbers


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _max(values: list[float]) -> float | None:
    return round(max(values), 2) if values else None


def pcts(sorted_values: list[float]) -> dict[str, Any]:
    return {
        "n": len(sorted_values),
        "p50": round(pct(sorted_values, 50), 2),
        "p90": round(pct(sorted_values, 90), 2),
        "p99": round(pct(sorted_values, 99), 2),
        "p99.9": round(pct(sorted_values, 99.9), 2),
        "max": _max(sorted_values),
    }


def med(values: list[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def code_version() -> str:
    """The commit measured, and whether the working tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def quiet(seconds: float) -> None:
    """Other sessions share the machine: wait (up to `seconds`) for it to be idle."""
    if seconds > 0:
        busy = ib.wait_until_quiet(seconds)
        if busy >= 0.15:
            print(f"  (machine still {busy:.2f} cores busy with other work; running anyway)")


# --------------------------------------------------------------------------- report


def report(doc: dict[str, Any]) -> str:
    s, st = doc["summary"], doc["settings"]
    m = doc["machine"]
    met = s["p50"] <= TARGETS_MS["p50"] and s["p99"] <= TARGETS_MS["p99"]
    lines = [
        f"# end-to-end benchmark, {doc['date']}",
        "",
        f"`{doc['command']}`",
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}",
        "",
        f"Signed Shopify `checkouts/create` webhooks at {st['rate']:,.0f}/s for {st['duration']:g} s "
        f"(after {st['warmup']:g} s warm-up) into `tidings serve --role all` (SQLite, FULL); a flow "
        "sends at once to a webhook destination (WebhookSink in its own process).",
        "",
        f"Webhook sent -> flow request at the destination, median of {len(doc['runs'])} runs: "
        f"p50 **{s['p50']} ms**, p99 **{s['p99']} ms** (targets {TARGETS_MS['p50']:g} / "
        f"{TARGETS_MS['p99']:g} ms): **{'met' if met else 'not met'}**",
        "",
        "| run | measured | arrived | missing | p50 | p90 | p99 | p99.9 | max | from slot p99 | ack p99 "
        "| late sends p99 | acked/s | server CPU | CPU ms/webhook | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(doc["runs"], 1):
        e = r["e2e_ms"]
        lines.append(
            f"| {i} | {r['measured']:,} | {r['arrived']:,} | {r['missing']} | {e['p50']} | {e['p90']} | "
            f"{e['p99']} | {e['p99.9']} | {e['max']} | {r['e2e_from_slot_ms']['p99']} | "
            f"{r['load']['ack_ms']['p99']} | {r['load']['send_late_ms']['p99']} | "
            f"{r.get('acked_per_s', '-')} | {r['server_cpu_share']:.2f} | {r['server_cpu_ms_per_webhook']} | "
            f"{r['server_peak_rss_mb']} |"
        )
    lines += [
        "",
        "Statuses: " + "; ".join(json.dumps(r["load"]["statuses"]) for r in doc["runs"]),
        "",
        "`from slot` counts from when the webhook was due to be sent (includes the load generator's own "
        "lateness); `late sends` is how far behind its slot the load generator sent.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=float, default=500.0, help="webhooks/s")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--grace", type=float, default=20.0, help="max s to wait for the last deliveries")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--customers", type=int, default=5_000)
    p.add_argument("--quiet-wait", type=float, default=30.0, help="max s to wait for an idle machine")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--tag", default="")
    p.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    p.add_argument("--keep", action="store_true", help="keep the stores and logs")
    p.add_argument(
        "--py-spy",
        default="",
        help="path of py-spy: adds a profiled run 0 (not in the summary; GIL samples in the JSON)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminated)  # so `finally` stops the processes this script started
    if raw[:1] == ["--serve-sink"]:
        sink_main(raw[1], Path(raw[2]), Path(raw[3]))
        return 0
    args = parse_args(raw)
    now = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="tidings-e2e-", dir=args.workdir))
    results = []
    profiled = None
    try:
        if args.py_spy:
            work = root / "run-0"
            work.mkdir()
            profiled = e2e_once(work, args, 0)
            print(f"profiled run: e2e {profiled['e2e_ms']}, statuses {profiled['load']['statuses']}")
        for rnd in range(1, args.runs + 1):
            work = root / f"run-{rnd}"
            work.mkdir()
            quiet(args.quiet_wait)
            r = e2e_once(work, args, rnd)
            results.append(r)
            e = r["e2e_ms"]
            print(
                f"run {rnd}: {r['arrived']:,}/{r['measured']:,} arrived, e2e p50 {e['p50']} p99 {e['p99']} "
                f"max {e['max']} ms; ack p99 {r['load']['ack_ms']['p99']} ms; statuses "
                f"{r['load']['statuses']}; CPU {r['server_cpu_share']}, "
                f"{r['server_cpu_ms_per_webhook']} ms per webhook"
            )
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/e2e.py", *raw]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "code": code_version(),
        "runs": results,
        "summary": {
            "p50": med([r["e2e_ms"]["p50"] for r in results]),
            "p99": med([r["e2e_ms"]["p99"] for r in results]),
            "p99.9": med([r["e2e_ms"]["p99.9"] for r in results]),
            "missing": sum(r["missing"] for r in results),
        },
        "targets_ms": TARGETS_MS,
        "profiled_run": profiled,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"e2e-{now:%Y-%m-%d}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(doc))
    print(report(doc))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


def _terminated(*_: Any) -> None:
    raise SystemExit("terminated")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
