"""HTTP client benchmark: CPU per request to a local endpoint, httpx's own transport against the
client tidings' destinations use (`tidings.destinations.http.pooled_client`: httpx over aiohttp).

What runs, all on this machine over loopback (127.0.0.1 only):
- the endpoint: `bench/baseline_app.py` (reads the body, answers 200 with a small JSON) on uvicorn
  (uvloop, httptools) in its own process, so its CPU is not counted;
- the client, in this process on uvloop: --requests POSTs of a 1.1 KB JSON body with the headers
  a Standard Webhooks send carries, at most --concurrency in flight, after 200 to warm the pool.

Measured: this process's CPU time (`time.process_time`) per request, for each client and each
concurrency; clients take turns within a round, the summary is the median of --runs rounds.

    .venv/bin/python bench/http_client.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import ingest as ib
import uvloop

import e2e
from tidings.destinations.http import MAX_CONNECTIONS, pooled_client

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"type": "track_event", "data": {"email": "ann@example.com", "pad": "x" * 1000}}).encode()
HEADERS = {
    "content-type": "application/json",
    "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    "webhook-timestamp": "1700000000",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
}


def httpx_own() -> httpx.AsyncClient:
    """httpx with its own transport (httpcore), as tidings used it before session 6."""
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    return httpx.AsyncClient(limits=limits)


CLIENTS: dict[str, Callable[[], httpx.AsyncClient]] = {"httpx": httpx_own, "tidings": pooled_client}


async def cpu_per_request(make: Callable[[], httpx.AsyncClient], url: str, n: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    async with make() as client:

        async def one() -> None:
            async with gate:
                answer = await client.post(url, content=BODY, headers=HEADERS)
                if answer.status_code != 200:
                    raise RuntimeError(f"the endpoint answered {answer.status_code}")

        await asyncio.gather(*(one() for _ in range(200)))
        started = time.process_time()
        await asyncio.gather(*(one() for _ in range(n)))
        return (time.process_time() - started) / n * 1000


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    port = ib.free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--loop", "uvloop"),
            *("--http", "httptools", "--port", str(port), "--host", "127.0.0.1"),
            *("--log-level", "warning", "--no-access-log"),
        ],
        cwd=ROOT,
    )
    try:
        wait_listening(port, timeout=20)
        url = f"http://127.0.0.1:{port}/"
        ms: dict[str, dict[int, list[float]]] = {name: {c: [] for c in levels} for name in CLIENTS}
        for rnd in range(1, args.runs + 1):
            for c in levels:
                for name, make in CLIENTS.items():
                    value = uvloop.run(cpu_per_request(make, url, args.requests, c))
                    ms[name][c].append(value)
                    print(f"round {rnd}: {name} at {c} in flight: {value:.3f} ms CPU/request", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    summary = {name: {c: round(statistics.median(v), 3) for c, v in by.items()} for name, by in ms.items()}
    now = datetime.now(UTC)
    doc: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/http_client.py", *(argv or sys.argv[1:])]),
        "code": e2e.code_version(),
        "machine": e2e.machine(),
        "requests": args.requests,
        "runs": {name: {str(c): [round(x, 3) for x in v] for c, v in by.items()} for name, by in ms.items()},
        "median_ms": {name: {str(c): v for c, v in by.items()} for name, by in summary.items()},
    }
    lines = [
        f"# HTTP client benchmark, {doc['date']}",
        "",
        f"`{doc['command']}` (code {doc['code']})",
        "",
        f"CPU ms per request to a local endpoint, median of {args.runs} rounds of {args.requests} requests:",
        "",
        "| in flight | httpx (httpcore) | tidings (httpx over aiohttp) | ratio |",
        "|---|---|---|---|",
    ]
    for c in levels:
        old, new = summary["httpx"][c], summary["tidings"][c]
        lines.append(f"| {c} | {old:.3f} | {new:.3f} | {new / old:.2f} |")
    stem = f"http-client-{now:%Y-%m-%d}" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
