"""Flow triggers when several events reach the processor in one batch (as under load).

The processor decides a batch's starts together, in one insert: these pin that the outcome is the
one the events would have had one by one, in `occurred_at` order, within the batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from tests.integration.test_flows import ITEMS, Shop, config, journal, run_rows, sends
from tidings.store.schema import profiles

BIGGER = [*ITEMS, {"product_id": "p2", "sku": "S-2", "name": "Pot", "price": 30.0, "quantity": 1}]


class Batch(Shop):
    """Calls stored now, processed together by the next `process`."""

    async def call(self, kind: str, body: dict[str, Any], at=None) -> None:
        await self.post(kind, body, at)


@asynccontextmanager
async def batch_shop(running, clock, yaml_text: str) -> AsyncIterator[Batch]:
    async with running(yaml_text) as (tidings, client):
        yield Batch(tidings, client, clock)


def profile_of(tidings, email: str) -> int:
    from tidings.store.schema import identities

    return tidings.store.read_sync(
        lambda c: c.execute(
            select(profiles.c.id)
            .join(identities, identities.c.profile_id == profiles.c.id)
            .where(identities.c.kind == "email", identities.c.value == email)
        ).scalar_one()
    )


async def test_two_checkouts_of_one_key_in_a_batch_start_one_run_with_the_latest_cart(running, clock) -> None:
    async with batch_shop(running, clock, config()) as s:
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1", at=clock.now() - timedelta(seconds=2))
        await s.checkout("u1", "c1", items=BIGGER, value=55.0, at=clock.now() - timedelta(seconds=1))
        await s.process()
        [run] = run_rows(s.tidings)
        assert run.status == "active"
        assert run.context["event"]["properties"]["value"] == 55.0
        assert len(journal(s.tidings, "started")) == 1
        clock.advance(timedelta(minutes=30))
        await s.tidings.runner.drain()
        [sent] = sends(s.tidings)
        assert sent.payload["properties"]["cartItems"] == BIGGER


async def test_one_key_from_two_customers_in_a_batch_is_the_first_customers_run(running, clock) -> None:
    async with batch_shop(running, clock, config()) as s:
        await s.customer("u1", "ann@example.com")
        await s.customer("u2", "bob@example.com")
        await s.checkout("u1", "c1", at=clock.now() - timedelta(seconds=2))
        await s.checkout("u2", "c1", value=55.0, at=clock.now() - timedelta(seconds=1))
        await s.process()
        [run] = run_rows(s.tidings)
        assert run.profile_id == profile_of(s.tidings, "ann@example.com")
        assert run.context["event"]["properties"]["value"] == 55.0  # the later event is its trigger
        [started] = journal(s.tidings, "started")
        assert started.run_id == run.id


async def test_reentry_never_in_a_batch_starts_one_run_per_key(running, clock) -> None:
    async with batch_shop(running, clock, config(reentry="never")) as s:
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1", at=clock.now() - timedelta(seconds=2))
        await s.checkout("u1", "c1", value=55.0, at=clock.now() - timedelta(seconds=1))
        await s.checkout("u1", "c2", value=12.0, at=clock.now() - timedelta(seconds=1))
        await s.process()
        runs = run_rows(s.tidings)
        assert [(r.run_key, r.context["event"]["properties"]["value"]) for r in runs] == [
            ("c1", 55.0),  # the customer's later cart, as for a run started earlier
            ("c2", 12.0),
        ]
        assert len(journal(s.tidings, "started")) == 2


async def test_a_batch_refreshes_a_stored_run_and_starts_a_new_key(running, clock) -> None:
    async with batch_shop(running, clock, config()) as s:
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1", at=clock.now() - timedelta(minutes=1))
        await s.process()
        [before] = run_rows(s.tidings)
        await s.checkout("u2", "c1", value=55.0)  # another customer's event with the same key
        await s.checkout("u1", "c2", value=12.0)
        await s.process()
        first, second = run_rows(s.tidings)
        assert first.id == before.id and first.claim == before.claim + 1  # any runner's claim voided
        assert first.context["event"]["properties"]["value"] == 55.0
        assert (second.run_key, second.status) == ("c2", "active")
        assert len(journal(s.tidings, "started")) == 2


async def test_an_exit_and_a_new_checkout_of_the_key_in_one_batch_start_nothing_new(running, clock) -> None:
    """The run ends with the batch, so the key is still taken when the new checkout triggers."""
    async with batch_shop(running, clock, config()) as s:
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1", at=clock.now() - timedelta(minutes=1))
        await s.process()
        await s.order("u1", "c1", at=clock.now() - timedelta(seconds=2))
        await s.checkout("u1", "c1", value=55.0, at=clock.now() - timedelta(seconds=1))
        await s.process()
        [run] = run_rows(s.tidings)
        assert run.status == "exited"
        assert run.context["event"]["properties"]["value"] == 25.0
        assert [r.outcome for r in journal(s.tidings)] == ["started", "waiting", "exited"]
