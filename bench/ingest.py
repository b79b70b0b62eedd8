"""Ingest benchmark: durable, signed webhooks into `tidings serve`, next to a bare ASGI app.

What runs, all on this machine over loopback (127.0.0.1 only):
- `tidings serve` as a real process, on a fresh SQLite file per run, with one `shopify` source;
- bench/baseline_app.py on the same server stack (uvicorn, uvloop, httptools, one worker);
- wrk with bench/shopify.lua: one pre-signed ~1.5 KB orders/create body, a new
  X-Shopify-Webhook-Id and X-Shopify-Event-Id on every request, so every request is stored.

Phases (each case is run --runs times, interleaved, and reported as the median):
1. throughput: as fast as --connections keep-alive connections go: bare, tidings FULL, tidings NORMAL;
2. steady: a fixed --rate (default 1,000/s) on bare and tidings FULL: latency percentiles;
3. overload: --overload-factor (2x) the measured sustainable tidings FULL rate, with
   --overload-connections connections: every status code and socket error counted.
After each tidings run the server is stopped and the inbox rows are counted: every acknowledged
(2xx) webhook must be there.

    .venv/bin/python bench/ingest.py --duration 10 --runs 3
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "shopify.lua"
SECRET = "bench-shopify-client-secret-not-a-real-one"
SOURCE = "shop"

TARGETS = {
    "min_acked_per_s": 2000,
    "aim_acked_per_s": 3000,
    "aim_ratio_vs_bare": 0.5,
    "max_p99_ms_at_rate": 15.0,
    "overload_allowed_statuses": "2xx or 503, no socket errors or timeouts",
}


# --------------------------------------------------------------------------- the webhook


def order_body() -> bytes:
    """A realistic Shopify orders/create body (trimmed REST Order resource), compact like Shopify's."""
    order = {
        "id": 5823400091781,
        "admin_graphql_api_id": "gid://shopify/Order/5823400091781",
        "browser_ip": "203.0.113.24",
        "buyer_accepts_marketing": True,
        "checkout_id": 37481195602053,
        "confirmation_number": "KXQ4M2ZRA",
        "contact_email": "ana.lima@example.com",
        "created_at": "2025-07-14T10:21:43+02:00",
        "currency": "EUR",
        "email": "ana.lima@example.com",
        "financial_status": "paid",
        "fulfillment_status": None,
        "name": "#1043",
        "note": None,
        "order_number": 1043,
        "source_name": "web",
        "subtotal_price": "84.90",
        "taxes_included": True,
        "test": False,
        "total_price": "89.85",
        "total_tax": "13.56",
        "updated_at": "2025-07-14T10:21:44+02:00",
        "customer": {
            "id": 7300193845381,
            "email": "ana.lima@example.com",
            "first_name": "Ana",
            "last_name": "Lima",
            "state": "enabled",
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
        },
        "billing_address": {
            "first_name": "Ana",
            "last_name": "Lima",
            "address1": "Torstraße 118",
            "city": "Berlin",
            "zip": "10119",
            "country_code": "DE",
        },
        "shipping_address": {
            "first_name": "Ana",
            "last_name": "Lima",
            "address1": "Torstraße 118",
            "city": "Berlin",
            "zip": "10119",
            "country_code": "DE",
        },
        "line_items": [
            {
                "id": 14411090281605,
                "product_id": 8123920056453,
                "variant_id": 44512204914821,
                "title": "Linen Shirt",
                "variant_title": "M / Sand",
                "sku": "LS-M-SAND",
                "vendor": "Northwind",
                "quantity": 1,
                "price": "59.90",
            },
            {
                "id": 14411090314373,
                "product_id": 8123920122117,
                "variant_id": 44512205005957,
                "title": "Canvas Tote",
                "variant_title": None,
                "sku": "CT-NAT",
                "vendor": "Northwind",
                "quantity": 1,
                "price": "25.00",
            },
        ],
        "shipping_lines": [{"code": "Standard", "price": "4.95", "source": "shopify"}],
    }
    return json.dumps(order, separators=(",", ":"), ensure_ascii=False).encode()


def shopify_hmac(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_until_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait s) for a second in which the machine is busy less than `threshold` cores.

    Other sessions share this machine; a run started while they compile or test says little.
    Returns the busy cores of the last second seen.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < threshold or time.monotonic() >= deadline:
            return busy


class Server:
    """One server process that this script started; stopped by its own pid only."""

    def __init__(self, argv: list[str], *, ready_url: str, log_path: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}: {self.tail_log()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(self.ready_url, timeout=1.0)
                if status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.argv[0]} did not become ready in {timeout} s: {self.tail_log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process, all its threads."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown: tidings commits what it accepted), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def tail_log(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""


def venv_bin(name: str) -> str:
    for candidate in (Path(sys.executable).parent / name, ROOT / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable}; run with .venv/bin/python")
    return found


def tidings_config(workdir: Path, port: int, synchronous: str, max_pending: int | None) -> Path:
    server = f"  listen: 127.0.0.1:{port}\n"
    if max_pending is not None:
        server += f"  max_pending_writes: {max_pending}\n"
    text = (
        "# written by bench/ingest.py\n"
        f"server:\n{server}"
        "storage:\n"
        f"  url: sqlite:///{workdir / 'tidings.db'}\n"
        f"  sqlite_synchronous: {synchronous}\n"
        "sources:\n"
        f"  {SOURCE}:\n"
        "    kind: shopify\n"
        '    secrets: ["${BENCH_SHOPIFY_SECRET}"]\n'
    )
    path = workdir / "tidings.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """What wrk saw in one measured run."""

    duration_s: float
    sent: int
    completed: int
    statuses: dict[str, int]
    errors: dict[str, int]
    latency_ms: dict[str, float]
    late: int
    late_max_ms: float
    client_cpu_s: float

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("2"))

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s

    @property
    def socket_errors(self) -> int:
        return sum(self.errors[k] for k in ("connect", "read", "write", "timeout"))


class Wrk:
    def __init__(self, body_file: Path, signature: str, threads: int, timeout_s: float) -> None:
        self.exe = shutil.which("wrk")
        if self.exe is None:
            raise SystemExit("wrk is not installed: apt-get install -y wrk")
        self.body_file = body_file
        self.signature = signature
        self.threads = threads
        self.timeout_s = timeout_s
        self.runs = 0

    def run(self, url: str, *, duration: float, connections: int, rate: float = 0.0) -> Load:
        self.runs += 1
        env = dict(
            os.environ,
            BENCH_BODY_FILE=str(self.body_file),
            BENCH_HMAC=self.signature,
            BENCH_PREFIX=f"{(os.getpid() * 1000 + self.runs) & 0xFFFFFFFF:08x}",
            BENCH_RATE=str(rate),
            BENCH_THREADS=str(self.threads),
            BENCH_PATH=urllib.parse.urlsplit(url).path,
        )
        assert self.exe is not None
        argv = [
            self.exe,
            f"-t{self.threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(self.timeout_s))}s",
            "-s",
            str(LUA),
            url,
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        lat = data["latency_us"]
        latency_ms = {f"p{k}": v / 1000 for k, v in lat["percentiles"].items()}
        latency_ms.update(mean=lat["mean"] / 1000, max=lat["max"] / 1000)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return Load(
            duration_s=data["duration_us"] / 1e6,
            sent=data["sent"],
            completed=data["completed"],
            statuses={str(k): v for k, v in data["statuses"].items()},
            errors=data["errors"],
            latency_ms=latency_ms,
            late=data["late"],
            late_max_ms=data["late_max_ms"],
            client_cpu_s=cpu,
        )


# --------------------------------------------------------------------------- tidings' own view


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(base: str) -> dict[str, float]:
    """The Prometheus text of /metrics as {'name{labels}': value}."""
    status, text = http_get(base + "/metrics", timeout=5.0)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What tidings measured itself during the run: ack time buckets and group-commit batch sizes."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    acks = delta(f'tidings_ingest_ack_seconds_count{{source="{SOURCE}"}}')
    within = delta(f'tidings_ingest_ack_seconds_bucket{{le="0.015",source="{SOURCE}"}}')
    batches = delta("tidings_inbox_commit_batch_size_count")
    batched = delta("tidings_inbox_commit_batch_size_sum")
    return {
        "acks": int(acks),
        "ack_within_15ms_share": round(within / acks, 4) if acks else None,
        "ack_mean_ms": round(1000 * delta(f'tidings_ingest_ack_seconds_sum{{source="{SOURCE}"}}') / acks, 2)
        if acks
        else None,
        "commits": int(batches),
        "mean_commit_batch": round(batched / batches, 1) if batches else None,
    }


def inbox_counts(db: Path) -> dict[str, int]:
    """Rows in table `inbox` by status, read straight from the SQLite file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {status: n for status, n in conn.execute("SELECT status, count(*) FROM inbox GROUP BY status")}
    finally:
        conn.close()


# --------------------------------------------------------------------------- one case


@dataclass
class Case:
    name: str
    target: str  # "bare" or "tidings"
    phase: str  # throughput | steady | overload
    connections: int
    rate: float = 0.0
    synchronous: str = "FULL"
    max_pending: int | None = None


@dataclass
class Result:
    case: Case
    round: int
    load: Load
    server_cpu_s: float
    peak_rss_mb: float
    stored: int | None = None
    stored_by_status: dict[str, int] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    other_cpu_s: float = 0.0  # busy CPU of everything else on the machine during the run

    @property
    def lost(self) -> int | None:
        """Acknowledged but not in the inbox: must be 0."""
        return None if self.stored is None else max(0, self.load.ok - self.stored)

    def as_dict(self) -> dict[str, Any]:
        load = self.load
        return {
            "case": self.case.name,
            "round": self.round,
            "duration_s": round(load.duration_s, 3),
            "sent": load.sent,
            "answered": load.completed,
            "acknowledged_2xx": load.ok,
            "acknowledged_per_s": round(load.ok_per_s, 1),
            "statuses": load.statuses,
            "socket_errors": load.errors,
            "latency_ms": {k: round(v, 3) for k, v in load.latency_ms.items()},
            "late_sends": load.late,
            "late_max_ms": load.late_max_ms,
            "server_cpu_s": round(self.server_cpu_s, 2),
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / load.completed, 3)
            if load.completed
            else None,
            "client_cpu_s": round(load.client_cpu_s, 2),
            "other_cpu_s": round(self.other_cpu_s, 2),
            "server_peak_rss_mb": round(self.peak_rss_mb, 1),
            "stored_rows": self.stored,
            "stored_by_status": self.stored_by_status,
            "lost": self.lost,
            "in_flight_at_cutoff": None if self.stored is None else self.stored - load.ok,
            "server_metrics": self.server,
            "server_exit_code": self.exit_code,
        }


class Bench:
    def __init__(self, args: argparse.Namespace, workroot: Path) -> None:
        self.args = args
        self.workroot = workroot
        body = order_body()
        self.body_size = len(body)
        body_file = workroot / "order.json"
        body_file.write_bytes(body)
        self.wrk = Wrk(body_file, shopify_hmac(body, SECRET), args.threads, args.timeout)
        self.results: list[Result] = []
        self.profiles: list[Path] = []
        self.count = 0

    def server_for(self, case: Case, workdir: Path, port: int) -> Server:
        env = dict(os.environ, BENCH_SHOPIFY_SECRET=SECRET)
        if case.target == "bare":
            argv = [
                venv_bin("uvicorn"),
                "--app-dir",
                str(BENCH),
                "baseline_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--workers",
                "1",
                "--backlog",
                "4096",
                "--log-level",
                "warning",
                "--no-access-log",
            ]
            ready = f"http://127.0.0.1:{port}/"
        else:
            config = tidings_config(workdir, port, case.synchronous, case.max_pending)
            if self.args.tidings_cmd:
                argv = [a.replace("{config}", str(config)) for a in self.args.tidings_cmd.split()]
            else:
                argv = [venv_bin("tidings"), "serve", "-c", str(config), "--role", self.args.role]
            ready = f"http://127.0.0.1:{port}/readyz"
        return Server(argv, ready_url=ready, log_path=workdir / "server.log", env=env)

    def run(self, case: Case, rnd: int) -> Result:
        self.count += 1
        workdir = self.workroot / f"{self.count:02d}-{case.name}"
        workdir.mkdir()
        port = free_port()
        server = self.server_for(case, workdir, port)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/hooks/{SOURCE}"
        server.start()
        try:
            if self.args.warmup > 0:
                self.wrk.run(url, duration=self.args.warmup, connections=case.connections, rate=case.rate)
                time.sleep(0.5)  # let the warm-up's last commits land
            db = workdir / "tidings.db"
            rows_before = sum(inbox_counts(db).values()) if case.target == "tidings" else 0
            metrics_before = scrape(base) if case.target == "tidings" else {}
            if self.args.quiet_wait > 0:
                quiet = wait_until_quiet(self.args.quiet_wait)
                if quiet >= 0.15:
                    print(f"  (machine still {quiet:.2f} cores busy with other work; running anyway)")
            cpu_before = server.cpu_seconds()
            busy_before = machine_busy_seconds()
            profiler = self.start_profiler(case, rnd, server.pid)
            load = self.wrk.run(
                url, duration=self.args.duration, connections=case.connections, rate=case.rate
            )
            cpu = server.cpu_seconds() - cpu_before
            other = machine_busy_seconds() - busy_before - cpu - load.client_cpu_s
            if profiler is not None:
                profiler.wait(timeout=self.args.duration + 60)
            time.sleep(0.2)
            metrics_after = scrape(base) if case.target == "tidings" else {}
            rss = server.peak_rss_mb()
        finally:
            code = server.stop()
        result = Result(case, rnd, load, cpu, rss, exit_code=code, other_cpu_s=max(0.0, other))
        if case.target == "tidings":
            counts = inbox_counts(db)
            result.stored_by_status = counts
            result.stored = sum(counts.values()) - rows_before
            result.server = server_view(metrics_before, metrics_after)
            if not self.args.keep:
                with contextlib.suppress(OSError):
                    db.unlink()
                    for suffix in ("-wal", "-shm"):
                        Path(str(db) + suffix).unlink(missing_ok=True)
        self.results.append(result)
        print(progress_line(result), flush=True)
        return result

    def start_profiler(self, case: Case, rnd: int, pid: int) -> subprocess.Popen[bytes] | None:
        """py-spy on the extra `-profiled` runs, if --py-spy names the binary."""
        if not self.args.py_spy or not case.name.endswith("-profiled"):
            return None
        out = self.workroot / f"profile-{case.name}.txt"  # raw stacks: kept with --keep only
        argv = [
            self.args.py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(self.args.duration) - 1)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--threads",
            "--gil",
            "--output",
            str(out),
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        self.profiles.append(out)
        return proc


def progress_line(r: Result) -> str:
    load = r.load
    codes = " ".join(f"{k}:{v}" for k, v in sorted(load.statuses.items()))
    extra = ""
    if r.stored is not None:
        extra = f" stored={r.stored} lost={r.lost}"
        if r.server.get("mean_commit_batch") is not None:
            extra += f" batch={r.server['mean_commit_batch']}"
    if load.socket_errors:
        extra += f" socket_errors={load.errors}"
    if r.other_cpu_s > 0.1 * load.duration_s:
        extra += f" OTHER-LOAD={r.other_cpu_s / load.duration_s:.2f} cores"
    if load.late:
        extra += f" late={load.late} (max {load.late_max_ms:.0f} ms)"
    return (
        f"  [{r.round}] {r.case.name:<22} {load.ok_per_s:>8.0f} acked/s  p50 {load.latency_ms['p50']:6.2f} ms"
        f"  p99 {load.latency_ms['p99']:7.2f} ms  cpu {r.server_cpu_s:5.1f}s  [{codes}]{extra}"
    )


# --------------------------------------------------------------------------- profiles

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `file.py:func` with the path shortened to the package."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m.group('func')}"


# Frames every sample of a thread has (entry points): left out of the inclusive lists.
_ROOT_FRAMES = (
    "typer/",
    "threading.py:",
    "concurrent/futures/thread.py:_worker",
    "asyncio/runners.py:",
    "uvicorn/main.py:",
    "uvicorn/server.py:",
    "uvicorn/_compat.py:",
    "tidings:<module>",
    "tidings/cli/",
)


def _package(name: str) -> str:
    head = name.split(":", 1)[0]
    return head.split("/", 1)[0] if "/" in head else f"stdlib {head}"


def summarise_profile(path: Path, top: int = 30) -> dict[str, Any]:
    """Shares of samples from py-spy's raw (folded) output, taken with --gil: shares of the time the
    GIL was held, which is the server's capacity (it is one process, bound by one core's Python).

    inclusive: the function anywhere on the stack; self: the function is the leaf. Per thread, and
    by package of the leaf (where the time is spent, whoever called it).
    """
    total = 0
    threads: dict[str, dict[str, Any]] = {}
    packages: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        while frames and frames[0].startswith(("thread ", "process ")):
            if frames[0].startswith("thread "):
                thread = frames[0].split(": ", 1)[-1].strip('"')
            frames = frames[1:]
        names = [_frame_name(f) for f in frames]
        t = threads.setdefault(thread, {"samples": 0, "inclusive": Counter(), "self": Counter()})
        t["samples"] += count
        total += count
        for name in set(names):
            if not name.startswith(_ROOT_FRAMES):
                t["inclusive"][name] += count
        if names:
            t["self"][names[-1]] += count
            packages[f"{thread}: {_package(names[-1])}"] += count

    def share(n: int) -> float:
        return round(n / total, 4) if total else 0.0

    return {
        "samples": total,
        "packages": [(name, share(n)) for name, n in packages.most_common(20)],
        "threads": {
            name: {
                "share": share(t["samples"]),
                "inclusive": [(f, share(n)) for f, n in t["inclusive"].most_common(top)],
                "self": [(f, share(n)) for f, n in t["self"].most_common(top)],
            }
            for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"])
        },
    }


# --------------------------------------------------------------------------- summary


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(results: list[Result]) -> dict[str, Any]:
    by_case: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_case[r.case.name].append(r)
    cases: dict[str, Any] = {}
    for name, rs in by_case.items():
        statuses: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for r in rs:
            statuses.update(r.load.statuses)
            errors.update({k: v for k, v in r.load.errors.items() if k != "status"})
        cases[name] = {
            "phase": rs[0].case.phase,
            "runs": len(rs),
            "connections": rs[0].case.connections,
            "rate": rs[0].case.rate,
            "acknowledged_per_s": {
                "median": round(med([r.load.ok_per_s for r in rs]), 1),
                "min": round(min(r.load.ok_per_s for r in rs), 1),
                "max": round(max(r.load.ok_per_s for r in rs), 1),
            },
            "latency_ms_median_of_runs": {
                k: round(med([r.load.latency_ms[k] for r in rs]), 3)
                for k in ("p50", "p90", "p99", "p99.9", "max")
            },
            "server_cpu_ms_per_request": round(
                med([1000 * r.server_cpu_s / r.load.completed for r in rs if r.load.completed]), 3
            ),
            "statuses_total": dict(statuses),
            "socket_errors_total": dict(errors),
            "late_sends_total": sum(r.load.late for r in rs),
            "other_load_cores_max": round(max(r.other_cpu_s / r.load.duration_s for r in rs), 2),
            "stored_total": None if rs[0].stored is None else sum(r.stored or 0 for r in rs),
            "acknowledged_total": sum(r.load.ok for r in rs),
            "lost_total": None if rs[0].stored is None else sum(r.lost or 0 for r in rs),
            "mean_commit_batch_median": med(
                [r.server["mean_commit_batch"] for r in rs if r.server.get("mean_commit_batch")]
            )
            if rs[0].stored is not None
            else None,
        }
    # ratios against the bare app, round by round (same round = closest in time)
    bare = {r.round: r.load.ok_per_s for r in by_case.get("bare", [])}
    for name in ("tidings-full", "tidings-normal"):
        ratios = [r.load.ok_per_s / bare[r.round] for r in by_case.get(name, []) if bare.get(r.round)]
        if name in cases and ratios:
            cases[name]["ratio_vs_bare_median"] = round(med(ratios), 3)
    return cases


def verdict(cases: dict[str, Any], rate: float, factor: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    full = cases.get("tidings-full")
    if full:
        rps = full["acknowledged_per_s"]["median"]
        out["acked_per_s_full"] = {"value": rps, "min_2000": rps >= 2000, "aim_3000": rps >= 3000}
        out["ratio_vs_bare"] = {
            "value": full.get("ratio_vs_bare_median"),
            "aim_0.5": (full.get("ratio_vs_bare_median") or 0) >= 0.5,
        }
    steady = cases.get("tidings-full-steady")
    if steady:
        p99 = steady["latency_ms_median_of_runs"]["p99"]
        out[f"p99_ms_at_{rate:g}_per_s"] = {"value": p99, "max_15": p99 <= 15.0}
    over = cases.get("tidings-full-overload")
    if over:
        bad = {k: v for k, v in over["statuses_total"].items() if not (k.startswith("2") or k == "503")}
        errs = {k: v for k, v in over["socket_errors_total"].items() if v}
        out[f"only_2xx_or_503_at_{factor:g}x"] = {
            "statuses": over["statuses_total"],
            "other_statuses": bad,
            "socket_errors": errs,
            "pass": not bad and not errs,
        }
    lost = sum(c["lost_total"] or 0 for c in cases.values() if c["lost_total"] is not None)
    out["durability_nothing_acknowledged_is_missing"] = {"lost": lost, "pass": lost == 0}
    return out


def fsync_probe(directory: Path, n: int = 200) -> dict[str, float]:
    """What one small write + fsync costs on the disk under the database (the floor of a FULL commit)."""
    path = directory / "fsync-probe"
    times = []
    with path.open("wb") as f:
        for _ in range(n):
            f.write(os.urandom(4096))
            f.flush()
            t = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t)
    path.unlink()
    times.sort()
    return {
        "p50_ms": round(1000 * times[len(times) // 2], 3),
        "p99_ms": round(1000 * times[int(len(times) * 0.99)], 3),
    }


def machine(workroot: Path) -> dict[str, Any]:
    def version(module: str) -> str:
        code = f"import importlib.metadata as m; print(m.version({module!r}))"
        out = subprocess.run([venv_bin("python"), "-c", code], capture_output=True, text=True)
        return out.stdout.strip() or "?"

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    fs = (
        subprocess.run(["df", "-T", str(workroot)], capture_output=True, text=True)
        .stdout.splitlines()[-1]
        .split()
    )
    sqlite_version = subprocess.run(
        [venv_bin("python"), "-c", "import sqlite3; print(sqlite3.sqlite_version)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite_version,
        "uvicorn": version("uvicorn"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "fastapi": version("fastapi"),
        "load_generator": wrk_version,
        "database_filesystem": f"{fs[1]} on {fs[0]}" if len(fs) > 1 else "?",
        "fsync_4k": fsync_probe(workroot),
    }


# --------------------------------------------------------------------------- report


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report_markdown(doc: dict[str, Any]) -> str:
    cases, v, args, m = doc["cases"], doc["verdict"], doc["settings"], doc["machine"]
    lines = [
        f"# Ingest benchmark, {doc['date']}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, SQLite {m['sqlite']} on {m['database_filesystem']} "
        f"(4 KiB write+fsync p50 {m['fsync_4k']['p50_ms']} ms), {m['load_generator']}.",
        f"Body: {doc['body_bytes']} bytes (orders/create), every request a new webhook id. "
        f"Runs of {args['duration']} s after {args['warmup']} s warm-up; medians of {args['runs']} runs.",
        "",
        "| case | conns | rate asked | acked/s (median) | min..max | vs bare | p50 ms | p99 ms | "
        "server CPU ms/req | mean commit batch | statuses | socket errors | stored / acked |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        a = c["acknowledged_per_s"]
        lat = c["latency_ms_median_of_runs"]
        errs = {k: n for k, n in c["socket_errors_total"].items() if n}
        stored = "-" if c["stored_total"] is None else f"{c['stored_total']} / {c['acknowledged_total']}"
        lines.append(
            f"| {name} | {c['connections']} | {c['rate'] or 'max'} | {a['median']:.0f} | "
            f"{a['min']:.0f}..{a['max']:.0f} | {c.get('ratio_vs_bare_median', '-')} | {fmt_ms(lat['p50'])} | "
            f"{fmt_ms(lat['p99'])} | {c['server_cpu_ms_per_request']} | "
            f"{c['mean_commit_batch_median'] or '-'} | "
            f"{json.dumps(c['statuses_total'])} | {json.dumps(errs) if errs else 0} | {stored} |"
        )
    lines += ["", "Targets:", ""]
    for key, val in v.items():
        lines.append(f"- `{key}`: {json.dumps(val)}")
    lines.append("")
    return "\n".join(lines)


def print_table(doc: dict[str, Any]) -> None:
    print()
    header = (
        f"{'case':<24}{'acked/s':>9}{'vs bare':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu ms/req':>11}"
        "  statuses / errors"
    )
    print(header)
    print("-" * len(header))
    for name, c in doc["cases"].items():
        lat = c["latency_ms_median_of_runs"]
        errs = {k: n for k, n in c["socket_errors_total"].items() if n}
        ratio = c.get("ratio_vs_bare_median")
        print(
            f"{name:<24}{c['acknowledged_per_s']['median']:>9.0f}{'' if ratio is None else f'{ratio:.2f}':>9}"
            f"{lat['p50']:>9.2f}{lat['p99']:>9.2f}{c['server_cpu_ms_per_request']:>11.3f}  "
            f"{json.dumps(c['statuses_total'])}{' ' + json.dumps(errs) if errs else ''}"
        )
    print()
    for key, val in doc["verdict"].items():
        print(f"{key}: {json.dumps(val)}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="runs per case; medians are reported (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each run (default 2)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections, throughput phase")
    p.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1: the CPU goes to the server)"
    )
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s of the steady phase (default 1000)")
    p.add_argument("--rate-connections", type=int, default=64, help="connections of the steady phase")
    p.add_argument("--overload-factor", type=float, default=2.0, help="overload = this x sustainable rate")
    p.add_argument("--overload-connections", type=int, default=1024, help="connections of the overload phase")
    p.add_argument("--overload-max-pending", type=int, default=None, help="server.max_pending_writes there")
    p.add_argument("--timeout", type=float, default=5.0, help="client timeout, s (Shopify's is 5 s)")
    p.add_argument(
        "--phases", default="throughput,steady,overload", help="comma-separated subset of the phases"
    )
    p.add_argument("--no-normal", action="store_true", help="skip the sqlite_synchronous NORMAL series")
    p.add_argument(
        "--sustainable", type=float, default=None, help="skip measuring: use this rate for overload"
    )
    p.add_argument("--py-spy", default=None, help="py-spy binary: add one profiled run per phase")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="where the JSON and markdown go")
    p.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temp dirs (default: system temp)"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="wait up to this many s for an idle machine before a run",
    )
    p.add_argument(
        "--tidings-cmd",
        default=None,
        help="A/B experiments: the server command instead of `tidings serve -c {config}`",
    )
    p.add_argument(
        "--role",
        default="ingest",
        choices=["ingest", "all"],
        help="ingest (default): what this benchmark measures, receiving and durably storing, as an "
        "ingest node runs it; all: with the processing stage (mapping, profiles) in the same process",
    )
    p.add_argument("--tag", default="", help="suffix of the result files: ingest-<date>-<tag>.json")
    p.add_argument("--keep", action="store_true", help="keep the SQLite files and server logs")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    return args


@contextlib.contextmanager
def workroot(args: argparse.Namespace) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tidings-bench-", dir=args.workdir))
    try:
        yield path
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_phases(bench: Bench, args: argparse.Namespace) -> None:
    """The three phases, each case --runs times, interleaved round by round."""
    C = args.connections
    if "throughput" in args.phases:
        print("throughput (as fast as the connections go):")
        for rnd in range(1, args.runs + 1):
            bench.run(Case("bare", "bare", "throughput", C), rnd)
            bench.run(Case("tidings-full", "tidings", "throughput", C), rnd)
            if not args.no_normal:
                bench.run(Case("tidings-normal", "tidings", "throughput", C, synchronous="NORMAL"), rnd)
        if args.py_spy:
            bench.run(Case("tidings-full-profiled", "tidings", "profile", C), 1)
    if "steady" in args.phases:
        print(f"steady ({args.rate:g}/s):")
        rc = args.rate_connections
        for rnd in range(1, args.runs + 1):
            bench.run(Case("bare-steady", "bare", "steady", rc, rate=args.rate), rnd)
            bench.run(Case("tidings-full-steady", "tidings", "steady", rc, rate=args.rate), rnd)
        if args.py_spy:
            bench.run(Case("tidings-full-steady-profiled", "tidings", "profile", rc, rate=args.rate), 1)
    if "overload" in args.phases:
        sustainable = args.sustainable or med(
            [r.load.ok_per_s for r in bench.results if r.case.name == "tidings-full"]
        )
        if sustainable != sustainable:  # NaN: no throughput phase and no --sustainable
            raise SystemExit("overload needs the throughput phase or --sustainable")
        rate = round(args.overload_factor * sustainable)
        print(f"overload ({args.overload_factor:g} x {sustainable:.0f}/s = {rate}/s):")
        for rnd in range(1, args.runs + 1):
            bench.run(
                Case(
                    "tidings-full-overload",
                    "tidings",
                    "overload",
                    args.overload_connections,
                    rate=rate,
                    max_pending=args.overload_max_pending,
                ),
                rnd,
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = datetime.now(UTC)
    args.stamp = now.strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    with workroot(args) as root:
        bench = Bench(args, root)
        info = machine(root)
        print(
            f"tidings ingest benchmark: {info['cores']} cores, {info['load_generator']}, "
            f"body {bench.body_size} B, "
            f"{args.runs} x {args.duration:g} s per case, fsync p50 {info['fsync_4k']['p50_ms']} ms"
        )
        run_phases(bench, args)
        cases = summarise([r for r in bench.results if r.case.phase != "profile"])
        profiles = {p.name: summarise_profile(p) for p in bench.profiles if p.exists()}
        doc = {
            "date": now.isoformat(timespec="seconds"),
            "command": " ".join([".venv/bin/python", "bench/ingest.py", *(argv or sys.argv[1:])]),
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("stamp",)
            },
            "machine": info,
            "body_bytes": bench.body_size,
            "targets": TARGETS,
            "cases": cases,
            "verdict": verdict(cases, args.rate, args.overload_factor),
            "runs": [r.as_dict() for r in bench.results],
            "profiles": profiles,
        }
    stem = args.out / f"ingest-{args.stamp}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report_markdown(doc))
    print_table(doc)
    for name, prof in doc["profiles"].items():
        print(f"\n{name} ({prof['samples']} samples while the GIL was held); shares of all samples:")
        print("  by package: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in prof["packages"][:10]))
        for thread, t in prof["threads"].items():
            print(f"  {thread} {100 * t['share']:.1f}%")
            print("    inclusive: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in t["inclusive"][:12]))
            print("    self:      " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in t["self"][:12]))
    print(f"\nwrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
