"""Aggregate traits keep a running state: the same result as a recount, whatever the history."""

from __future__ import annotations

from functools import partial

from sqlalchemy import update

from tests.integration.test_processing import CONFIG, profile_of, send, track
from tidings.store.schema import profiles


async def test_a_running_total_equals_a_recount_from_the_event_log(running) -> None:
    async with running(CONFIG) as (tidings, client):
        for n in range(6):
            order = f"o{n % 4}"  # o0 and o1 are updated once: they count once, at their latest value
            await send(
                client,
                "track",
                track(n, "Order Completed", f"2026-03-01T10:0{n}:00Z", {"order_id": order, "total": 10 + n}),
            )
        await send(client, "track", track(9, "Order Refunded", "2026-03-01T11:00:00Z", {"total": 3}))
        await tidings.processor.drain()
        running_total = profile_of(tidings, "user_id:u1").traits
        assert running_total["orders_count"] == 4
        assert running_total["lifetime_value"] == (14 + 15 + 12 + 13) - 3

        # forget the running state (as a profile from before it existed): it is rebuilt from the log
        tidings.store.write_sync(lambda c: c.execute(update(profiles).values(aggregates={})))
        await send(
            client,
            "track",
            track(10, "Order Completed", "2026-03-01T12:00:00Z", {"order_id": "o9", "total": 1}),
        )
        await tidings.processor.drain()
        rebuilt = profile_of(tidings, "user_id:u1").traits
        assert rebuilt["orders_count"] == 5
        assert rebuilt["lifetime_value"] == 51 + 1


async def test_a_customer_with_a_long_history_costs_no_more_per_order(running) -> None:
    """Each order reads nothing of the history: the statements per event stay flat."""
    from sqlalchemy import event as sa_event

    async with running(CONFIG) as (tidings, client):
        counts = []
        for block in range(3):
            for n in range(block * 100, block * 100 + 100):
                await send(
                    client,
                    "track",
                    track(n, "Order Completed", "2026-03-01T10:00:00Z", {"order_id": f"o{n}", "total": 1}),
                )
            statements: list[int] = []
            count = partial(_count, statements)

            sa_event.listen(tidings.store.engine, "before_cursor_execute", count)
            try:
                await tidings.processor.drain()
            finally:
                sa_event.remove(tidings.store.engine, "before_cursor_execute", count)
            counts.append(len(statements))
        assert profile_of(tidings, "user_id:u1").traits["orders_count"] == 300
        assert max(counts) - min(counts) <= 2  # not growing with the 100, 200, 300 orders before


def _count(statements: list[int], *_args, **_kwargs) -> None:
    statements.append(1)
