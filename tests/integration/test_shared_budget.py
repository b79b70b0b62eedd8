"""Several workers on one database share each destination's budget (delivery/budget.py).

Each worker here is a Dispatcher on a Store of its own (its own engine and connections), as
separate `tidings serve --role worker` processes would be; the one that dies is a real child
process, killed. What counts is measured at the simulator: arrivals in any sliding window, requests
in flight at once, 429s. On SQLite the shared budget is switched on explicitly (several processes
on one SQLite file is not the recommended set-up, but the budget holds there too); by default a
SQLite store keeps the budget in the process, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import statistics
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from tests.conftest import settings_with
from tidings.clock import SystemClock
from tidings.delivery import outbox
from tidings.delivery.budget import SharedBudget, Tuning
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.limits import Limiter
from tidings.destinations.registry import destination_class
from tidings.metrics import Metrics
from tidings.store import Store
from tidings.store.schema import outbox as outbox_table
from tidings.store.schema import rate_budget, rate_permits, rate_schedule
from tidings.testing import MailchimpSimulator

QUICK = Tuning(heartbeat=0.2, permit_ttl=1.0)  # a dead worker's permits are free after 1 s


def config(url: str, limits: str) -> str:
    return f"""
destinations:
  esp:
    kind: mailchimp
    base_url: "{url}"
    api_key: 0123456789abcdef0123456789abcdef-us14
    list_id: shared
    limits: {limits}
"""


@asynccontextmanager
async def worker(
    store_url: str, yaml_text: str, *, shared: bool | None = True, tuning: Tuning = QUICK
) -> AsyncIterator[Dispatcher]:
    """A dispatcher on its own store, HTTP client and budget: one worker process's worth."""
    settings = settings_with(store_url, yaml_text)
    store = Store(store_url)
    http = httpx.AsyncClient()
    destinations = {
        name: destination_class(cfg.kind)(name, cfg, http) for name, cfg in settings.destinations.items()
    }
    dispatcher = Dispatcher(
        store,
        destinations,
        clock=SystemClock(),
        metrics=Metrics(),
        shared_budget=shared,
        budget_tuning=tuning,
        batch_size=20,  # so that every worker has effects waiting for the budget
    )
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()
        await http.aclose()
        store.close()


def migrated(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.upgrade()
    finally:
        store.close()


def enqueue(store_url: str, n: int) -> None:
    store = Store(store_url)
    now = datetime.now(UTC)

    def fill(conn: Any) -> None:
        for i in range(n):
            outbox.enqueue(
                conn,
                destination="esp",
                action="upsert_contact",
                idempotency_key=f"shared-{i}",
                payload={"email": f"contact.{i}@example.com", "fields": {"FNAME": "Ana"}},
                now=now,
            )

    try:
        store.write_sync(fill)
    finally:
        store.close()


def delivered(store: Store) -> int:
    return int(
        store.read_sync(
            lambda c: c.execute(
                select(func.count()).select_from(outbox_table).where(outbox_table.c.status == "delivered")
            ).scalar_one()
        )
    )


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait (polling) until `condition()` holds; return how long it took."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def budget_of(dispatcher: Dispatcher) -> SharedBudget:
    budget = dispatcher.limiters["esp"]
    assert isinstance(budget, SharedBudget)
    return budget


def most_in_any(arrivals: list[float], seconds: float) -> int:
    """The most arrivals in any sliding window of `seconds` (strict: [t, t + seconds))."""
    arrivals = sorted(arrivals)
    return max(bisect_left(arrivals, t + seconds) - i for i, t in enumerate(arrivals))


async def run_workers(store_url: str, yaml_text: str, count: int, n: int) -> list[Dispatcher]:
    """`count` workers send `n` effects between them; returns when all are delivered."""
    enqueue(store_url, n)
    async with AsyncExitStack() as stack:
        dispatchers = [await stack.enter_async_context(worker(store_url, yaml_text)) for _ in range(count)]
        for d in dispatchers:
            d.start()
        await until(lambda: delivered(dispatchers[0].store) == n, 60, f"{n} effects delivered")
    return dispatchers


# --------------------------------------------------------------------------- one process


async def test_one_process_on_sqlite_keeps_the_budget_in_the_process(store_url: str) -> None:
    migrated(store_url)
    sim = MailchimpSimulator()
    with sim.running():
        yaml_text = config(sim.url, "{concurrency: 3, windows: [{requests: 20, per: 1s}]}")
        enqueue(store_url, 10)
        async with worker(store_url, yaml_text, shared=None) as dispatcher:
            await dispatcher.drain()
            assert delivered(dispatcher.store) == 10
            tables = [rate_schedule, rate_budget, rate_permits]
            rows = dispatcher.store.read_sync(
                lambda c: [c.execute(select(func.count()).select_from(t)).scalar_one() for t in tables]
            )
            if dispatcher.store.dialect == "sqlite":  # as before: no database cost, no shared rows
                assert dispatcher.budgets is None
                assert isinstance(dispatcher.limiters["esp"], Limiter)
                assert rows == [0, 0, 0]
            else:  # PostgreSQL: any number of workers may share it, so the budget is shared
                assert isinstance(dispatcher.limiters["esp"], SharedBudget)
                assert rows[0] == 1 and rows[2] == 3  # the schedule, one row per connection


# --------------------------------------------------------------------------- several workers


async def test_three_workers_share_a_rate_limit(store_url: str) -> None:
    migrated(store_url)
    sim = MailchimpSimulator(latency=0.02)
    limit, n = 40, 160
    with sim.running():
        dispatchers = await run_workers(
            store_url, config(sim.url, f"{{windows: [{{requests: {limit}, per: 1s}}]}}"), 3, n
        )
    arrivals = [r.at for r in sim.requests]
    assert len(arrivals) == n and sim.throttled == 0
    assert most_in_any(arrivals, 1.0) <= limit
    rate = (n - 1) / (max(arrivals) - min(arrivals))
    assert rate >= 0.7 * limit, f"{rate:.1f}/s of {limit}/s"
    stats = [budget_of(d).stats() for d in dispatchers]
    assert all(s["leased"] > 0 for s in stats), stats  # every worker took part
    assert sum(s["leased"] for s in stats) < n * 1.15, stats  # few starts leased and not used


async def test_a_lease_covers_many_requests_not_one(store_url: str) -> None:
    migrated(store_url)
    sim = MailchimpSimulator()
    limit, n = 300, 150  # 0.1 s of the schedule is 28 starts
    with sim.running():
        enqueue(store_url, n)
        async with worker(store_url, config(sim.url, f"{{windows: [{{requests: {limit}, per: 1s}}]}}")) as d:
            d.batch_size = n  # every effect waits for the budget at once
            await d.drain()
            stats = budget_of(d).stats()
    assert len(sim.requests) == n
    # Each lease takes a span of the schedule (many starts), not one start per request. Counted
    # per lease, not as a total: on a slow machine some leased starts lapse unused and more
    # leases follow, which is the budget working, not failing.
    assert stats["leased"] >= 8 * stats["leases"], stats
    assert most_in_any([r.at for r in sim.requests], 1.0) <= limit


async def test_a_longer_window_is_shared_too(store_url: str) -> None:
    migrated(store_url)
    sim = MailchimpSimulator(latency=0.02)
    n = 50
    with sim.running():
        await run_workers(
            store_url,
            config(sim.url, "{windows: [{requests: 20, per: 1s}, {requests: 30, per: 3s}]}"),
            2,
            n,
        )
    arrivals = sorted(r.at for r in sim.requests)
    assert len(arrivals) == n
    assert most_in_any(arrivals, 1.0) <= 20
    assert most_in_any(arrivals, 3.0) <= 30
    # The first 30 go at the short window's pace (one start every 0.05 s), not at the longer
    # window's average (0.1 s); then the longer window holds the rest back. A median of the gaps,
    # not a span: a stall on a loaded machine lengthens one gap, not the pace.
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert statistics.median(gaps[:29]) < 0.075, gaps
    assert max(gaps) >= 1.0, gaps  # (alone, 50 at 20/s would take 2.5 s with no pause)
    assert arrivals[-1] - arrivals[0] >= 3.0


async def test_three_workers_share_a_concurrency_limit(store_url: str) -> None:
    migrated(store_url)
    allowed, latency, n = 4, 0.1, 120
    sim = MailchimpSimulator(concurrency=allowed, latency=latency)
    with sim.running():
        dispatchers = await run_workers(store_url, config(sim.url, f"{{concurrency: {allowed}}}"), 3, n)
    arrivals = [r.at for r in sim.requests]
    assert len(arrivals) == n
    assert sim.max_in_flight <= allowed and sim.throttled == 0
    rate = (n - 1) / (max(arrivals) - min(arrivals))
    best = allowed / latency
    assert rate >= 0.6 * best, f"{rate:.1f}/s of at most {best:.0f}/s"
    assert all(budget_of(d).stats()["permits"] == 0 for d in dispatchers)
    store = Store(store_url)
    try:  # stopped workers gave their permits back at once
        assert holders(store) == {}
    finally:
        store.close()


# --------------------------------------------------------------------------- a worker dies


def doomed_worker(store_url: str, yaml_text: str) -> None:
    """A worker in a child process, sending until it is killed."""

    async def main() -> None:
        async with worker(store_url, yaml_text) as dispatcher:
            dispatcher.start()
            await asyncio.Event().wait()

    asyncio.run(main())


def holders(store: Store) -> dict[str, int]:
    rows = store.read_sync(
        lambda c: c.execute(
            select(rate_permits.c.holder, func.count())
            .where(rate_permits.c.holder.is_not(None))
            .group_by(rate_permits.c.holder)
        ).all()
    )
    return {holder: count for holder, count in rows}


async def test_a_worker_that_dies_gives_its_share_back(store_url: str) -> None:
    migrated(store_url)
    allowed, limit = 4, 30
    sim = MailchimpSimulator(concurrency=allowed, latency=0.1)
    with sim.running():
        yaml_text = config(sim.url, f"{{concurrency: {allowed}, windows: [{{requests: {limit}, per: 1s}}]}}")
        enqueue(store_url, 2000)
        spawn = mp.get_context("spawn")
        other = spawn.Process(target=doomed_worker, args=(store_url, yaml_text), daemon=True)
        other.start()
        try:
            async with worker(store_url, yaml_text) as survivor:
                survivor.start()
                me = survivor.budgets.worker if survivor.budgets else ""
                budget = budget_of(survivor)
                # both send, and split the connections evenly
                await until(
                    lambda: (
                        sorted(holders(survivor.store).values()) == [2, 2] and me in holders(survivor.store)
                    ),
                    30,
                    "two workers holding two permits each",
                )
                other.kill()  # no goodbye: its permits and heartbeat just stop being renewed
                other.join(10)
                killed = time.monotonic()
                took = await until(lambda: budget.stats()["permits"] == allowed, 10, "all permits back")
                assert took <= QUICK.permit_ttl + 3 * QUICK.heartbeat + 0.5
                await asyncio.sleep(2.0)  # the survivor alone, at the whole budget
                recovered = killed + took
                alone = [r.at for r in sim.requests if r.at >= recovered + 0.5]
        finally:
            if other.is_alive():
                other.kill()
                other.join(10)
    assert sim.max_in_flight <= allowed and sim.throttled == 0
    arrivals = [r.at for r in sim.requests]
    assert most_in_any(arrivals, 1.0) <= limit
    rate = (len(alone) - 1) / (max(alone) - min(alone))
    assert rate >= 0.7 * limit, f"the survivor sends {rate:.1f}/s of {limit}/s"
