"""`tidings serve` as a real process: started on a free port, awaited on /readyz, killed by pid.

End-to-end tests need what in-process tests cannot give: a process that dies with SIGKILL
between two fsyncs, and a fresh one that opens the same store afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

ADMIN_TOKEN = "e2e-admin-token-0123456789"
START_DEADLINE = 20.0  # seconds for a fresh interpreter to import tidings, migrate and listen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One `python -m tidings serve` process. `start()` returns once /readyz answers 200."""

    def __init__(self, config: Path, workdir: Path, args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.workdir = workdir
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        """What the processes started so far wrote (for failure messages)."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("serve-*.log")))

    def start(self) -> None:
        assert self.process is None, "already running"
        self.starts += 1
        self.port = free_port()
        log = (self.workdir / f"serve-{self.starts}.log").open("wb")
        self._log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidings",
                "serve",
                "-c",
                str(self.config),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                *self.args,
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.wait_ready()

    def wait_ready(self, deadline: float = START_DEADLINE) -> None:
        assert self.process is not None
        until = time.monotonic() + deadline
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while time.monotonic() < until:
                if self.process.poll() is not None:
                    self._reap()
                    pytest.fail(f"tidings serve exited before it was ready:\n{self.output()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling interval, not a wait for a condition
        self.kill()
        pytest.fail(f"tidings serve was not ready within {deadline}s:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, no buffer is flushed; then reap the process."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """SIGTERM, the orderly way (uvicorn drains, tidings commits what it accepted)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        assert self.process is not None
        self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """`server = serve(yaml_text, *serve_args)`: a Server for that config (not started); killed at
    teardown."""
    servers: list[Server] = []

    def make(yaml_text: str, *args: str) -> Server:
        config = tmp_path / f"tidings-{len(servers)}.yaml"
        config.write_text(yaml_text)
        server = Server(config, tmp_path, args)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()
