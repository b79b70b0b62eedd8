"""The running tidings: its store, its receivers, its background tasks, opened and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tidings.clock import Clock, SystemClock
from tidings.config import Settings
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.sync import ProfileRenderer
from tidings.destinations.base import Destination
from tidings.destinations.http import pooled_client
from tidings.destinations.registry import destination_class
from tidings.flows.catalog import FlowCatalog
from tidings.flows.runner import FlowRunner
from tidings.flows.steps import Executor
from tidings.flows.triggers import FlowTriggers
from tidings.ingest.base import Receiver
from tidings.ingest.committer import GroupCommitter
from tidings.ingest.registry import receiver_class
from tidings.lookups.base import CartLookup
from tidings.lookups.registry import cart_lookup
from tidings.mapping.engine import Mapper
from tidings.mapping.rules import preset
from tidings.metrics import Metrics
from tidings.observe import StoreGauges
from tidings.processor import Processor
from tidings.store import Store
from tidings.store.inbox import purge_dedupe_keys

if TYPE_CHECKING:
    from tidings.sandbox import Sandbox

log = logging.getLogger("tidings")

PURGE_EVERY_SECONDS = 300.0


class Tidings:
    """Owns every long-lived part. Use `async with Tidings(settings) as tidings:`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        process: bool = True,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.process = process  # run the processing stage here (off: ingest only, or tests drive it)
        self.clock = clock or SystemClock()
        if sandbox is None and settings.sandbox and process:
            from tidings.sandbox import Sandbox

            sandbox = Sandbox(settings, clock=self.clock)
        # Sandbox mode: every destination is a local simulator, served while tidings runs.
        self.sandbox = sandbox
        self.settings = settings = sandbox.settings if sandbox is not None else settings
        self.metrics = Metrics()
        self.store = Store(settings.storage.url, sqlite_synchronous=settings.storage.sqlite_synchronous)
        self.receivers: dict[str, Receiver[Any]] = {
            name: receiver_class(cfg.kind)(name, cfg, self.clock) for name, cfg in settings.sources.items()
        }
        self.committer = GroupCommitter(
            self.store,
            clock=self.clock,
            metrics=self.metrics,
            dedupe_window=settings.storage.dedupe_window,
            max_pending=settings.server.max_pending_writes,
            max_batch=settings.storage.max_commit_batch,
        )
        self.metrics.pending_writes.set_function(lambda: self.committer.pending)
        self.flows = FlowCatalog(settings.flows)
        self.processor = Processor(
            self.store,
            mappers={
                name: Mapper([*cfg.mappings, *(preset(cfg.kind) if cfg.presets else ())])
                for name, cfg in settings.sources.items()
            },
            computed=settings.profile.computed(),
            clock=self.clock,
            metrics=self.metrics,
            sync_to=[name for name, cfg in settings.destinations.items() if cfg.profile_sync is not None],
            flows=FlowTriggers(self.flows, self.metrics),
        )
        self.committer.on_commit = self.processor.wake
        # One pooled, keep-alive HTTP client for every destination and lookup.
        self.http = pooled_client()
        self.destinations: dict[str, Destination[Any]] = {
            name: destination_class(cfg.kind)(name, cfg, self.http)
            for name, cfg in settings.destinations.items()
        }
        self.dispatcher = Dispatcher(
            self.store,
            self.destinations,
            clock=self.clock,
            metrics=self.metrics,
            prepare=ProfileRenderer(self.store, self.destinations),
        )
        self.processor.on_enqueued = self.dispatcher.wake
        self.store_gauges = StoreGauges(
            self.store, self.metrics, self.clock, destinations=list(settings.destinations)
        )
        self.lookups: dict[str, CartLookup] = {}
        for name, cfg in settings.sources.items():
            found = cart_lookup(name, cfg, self.http, clock=self.clock)
            if found is not None:
                self.lookups[name] = found
        self.runner = FlowRunner(
            self.store,
            Executor(self.flows, settings.guards, self.metrics),
            clock=self.clock,
            metrics=self.metrics,
            lookups=self.lookups,
        )
        self.processor.on_runs_due = self.runner.wake
        self.processor.fire_within = self.runner.fire_within
        self.processor.on_fired = self.runner.fired_within
        self.runner.on_enqueued = self.dispatcher.wake
        self.runner.claim_sends = self.dispatcher.claim_within
        self.runner.on_handoff = self.dispatcher.take
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        if self.sandbox is not None:
            await self.sandbox.start()
        if self.settings.storage.auto_migrate:
            await self.store.write(lambda _conn: None)  # creates the SQLite file's directory and WAL
            await asyncio.get_running_loop().run_in_executor(None, self.store.upgrade)
        await self.store.ping()
        await self.store.write(lambda conn: self.flows.register(conn, self.clock.now()))
        self.committer.start()
        if self.process:
            self.processor.start()
            self.runner.start()
            self.dispatcher.start()
        self._tasks.append(asyncio.create_task(self._purge_loop(), name="tidings-dedupe-purge"))
        self._tasks.append(
            asyncio.create_task(self.store_gauges.run(self._stopping), name="tidings-store-gauges")
        )

    async def stop(self) -> None:
        """Stop taking work, finish what was accepted, then close the store."""
        await self.committer.stop()
        await self.processor.stop()
        await self.runner.stop()
        await self.dispatcher.stop()
        await self.http.aclose()
        if self.sandbox is not None:
            await self.sandbox.stop()
        self._stopping.set()
        for task in self._tasks:
            await task
        self.store.close()

    async def _purge_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                removed = await self.store.write(lambda conn: purge_dedupe_keys(conn, self.clock.now()))
                if removed:
                    log.info(
                        "expired dedupe keys removed",
                        extra={"action": "dedupe_purge", "count": removed},
                    )
            except Exception:
                log.exception("dedupe purge failed", extra={"action": "dedupe_purge_failed"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PURGE_EVERY_SECONDS):
                    await self._stopping.wait()

    async def __aenter__(self) -> Tidings:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
