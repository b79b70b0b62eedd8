"""SQLite's WAL checkpoints, moved off the writer.

By default the connection that commits past 1,000 WAL pages copies the WAL into the database
file and syncs it, inside that commit: with a large store and writes spread over it (timers firing,
profiles updated), that was ~30 % of the writer thread's time in the drain benchmark
(bench/README-timers.md), during which every other write waited. Here a thread of its own runs a
PASSIVE checkpoint every `every` seconds, which never blocks a writer or a reader, and the
writers' own checkpoint only starts past `WAL_PAGES`, as a backstop if this thread falls behind.
A page written many times between two checkpoints is copied once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("tidings.store")

WAL_PAGES = 16_384  # the writers' backstop: 64 MB of WAL at 4 KB pages


class Checkpointer:
    def __init__(self, path: str, *, every: float = 0.5) -> None:
        self.path = path
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tidings-store-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        failed = False
        try:
            while not self._stop.wait(self.every):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    failed = False
                except sqlite3.Error as exc:
                    if not failed:  # once per spell of failures; the writers' backstop remains
                        log.warning(
                            "WAL checkpoint failed; retrying",
                            extra={"action": "checkpoint_failed", "error": str(exc)},
                        )
                    failed = True
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
