"""Flows on the virtual clock: the abandoned-cart flow, its exits, guards and freshness re-checks.

Events enter through the Segment-compatible endpoint (the real ingest path), the processor and the
flow runner are driven by the test, and time only moves when the test moves the FakeClock, so a
thirty-minute wait takes no real time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import inbox_rows
from tests.integration.test_processing import AUTH
from tidings.store.schema import flow_runs, flow_steps
from tidings.store.schema import outbox as outbox_table
from tidings.testing import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

READ = "read-token-0123456789"

FLOW = """
server:
  admin_tokens:
    - {{name: dashboards, token: "read-token-0123456789", scopes: [read]}}
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
destinations:
  esp:
    kind: webhook
    url: "{url}"
    secret: "{secret}"
guards:
  default_timezone: UTC
{guards}
flows:
  abandoned_cart:
    trigger:
      event: [Checkout Started, Cart Updated]
    run_key: event.properties.checkout_id
    reentry: {reentry}
    exit_on:
      - event: Order Completed
        when: event.properties.checkout_id == run.key
{flow_guards}
    steps:
      - id: wait
        wait_for:
          event: Order Completed
          when: event.properties.checkout_id == run.key
          timeout: 30m
        on_event: exit
        on_timeout: still_there
      - id: still_there
        branch:
          when: profile.traits.cart_id == run.key
          else: exit
      - id: remind
        send:
          destination: esp
          action: track_event
          event: Abandoned Cart
          properties:
            cartItems: "{{{{ cart.items }}}}"
            cartValue: "{{{{ cart.value }}}}"
            checkoutUrl: "{{{{ cart.checkout_url }}}}"
            lastProductViewed: >-
              {{{{ profile.traits.last_product_viewed.name
              if profile.traits.last_product_viewed is defined else none }}}}
"""


def config(
    url: str = "http://127.0.0.1:9/never",
    *,
    guards: str = "",
    flow_guards: str = "",
    reentry: str = "after_exit",
) -> str:
    return FLOW.format(url=url, secret=SECRET, guards=guards, flow_guards=flow_guards, reentry=reentry)


ITEMS = [{"product_id": "p1", "sku": "S-1", "name": "Mug", "price": 12.5, "quantity": 2}]


class Shop:
    """A customer's actions as Segment calls, stamped with the virtual clock's time."""

    def __init__(self, tidings, client, clock) -> None:
        self.tidings, self.client, self.clock = tidings, client, clock
        self.n = 0

    async def call(self, kind: str, body: dict[str, Any], at=None) -> None:
        await self.post(kind, body, at)
        await self.process()

    async def post(self, kind: str, body: dict[str, Any], at=None) -> None:
        """The call stored, not yet processed."""
        self.n += 1
        stamp = (at or self.clock.now()).isoformat()
        body = {"messageId": f"m{self.n}", "timestamp": stamp, **body}
        response = await self.client.post(f"/v1/{kind}", content=json.dumps(body).encode(), headers=AUTH)
        assert response.status_code == 200, response.text

    async def process(self) -> None:
        await self.tidings.processor.drain()
        await self.tidings.runner.drain()

    async def customer(self, user: str, email: str, consent: str = "subscribed", **traits: Any) -> None:
        await self.call(
            "identify", {"userId": user, "traits": {"email": email, "email_consent": consent, **traits}}
        )

    async def checkout(self, user: str, checkout: str, items=ITEMS, value=25.0, at=None) -> None:
        props = {
            "checkout_id": checkout,
            "products": items,
            "value": value,
            "checkout_url": f"https://shop.test/c/{checkout}",
        }
        await self.call("track", {"userId": user, "event": "Checkout Started", "properties": props}, at)

    async def order(self, user: str, checkout: str, at=None) -> None:
        props = {"checkout_id": checkout, "order_id": f"o-{checkout}", "value": 25.0}
        await self.call("track", {"userId": user, "event": "Order Completed", "properties": props}, at)

    async def wait(self, minutes: float) -> None:
        self.clock.advance(timedelta(minutes=minutes))
        await self.tidings.runner.drain()


def sends(tidings) -> list[Any]:
    return tidings.store.read_sync(
        lambda c: list(c.execute(select(outbox_table).where(outbox_table.c.action == "track_event")))
    )


def journal(tidings, outcome: str | None = None) -> list[Any]:
    stmt = select(flow_steps).order_by(flow_steps.c.id)
    if outcome:
        stmt = stmt.where(flow_steps.c.outcome == outcome)
    return tidings.store.read_sync(lambda c: list(c.execute(stmt)))


def run_rows(tidings) -> list[Any]:
    return tidings.store.read_sync(lambda c: list(c.execute(select(flow_runs).order_by(flow_runs.c.id))))


@pytest.fixture
async def shop(running, clock):
    async def open_(yaml_text: str):
        ctx = running(yaml_text)
        tidings, client = await ctx.__aenter__()
        opened.append(ctx)
        return Shop(tidings, client, clock)

    opened: list[Any] = []
    yield open_
    for ctx in opened:
        await ctx.__aexit__(None, None, None)


async def test_an_abandoned_cart_is_reminded_once_after_thirty_minutes(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(29)
    assert sends(s.tidings) == []  # not a minute early
    await s.wait(1)
    [sent] = sends(s.tidings)
    assert sent.destination == "esp"
    payload = sent.payload
    assert payload["email"] == "ann@example.com"
    assert payload["event"] == "Abandoned Cart"
    assert payload["properties"]["cartItems"] == ITEMS
    assert payload["properties"]["cartValue"] == 25.0
    assert payload["properties"]["checkoutUrl"] == "https://shop.test/c/c1"
    await s.wait(60 * 24)
    assert len(sends(s.tidings)) == 1
    [run] = run_rows(s.tidings)
    assert run.status == "completed"
    reasons = [(r.kind, r.outcome) for r in journal(s.tidings)]
    assert reasons == [
        ("trigger", "started"),
        ("wait_for", "waiting"),
        ("wait_for", "timeout"),
        ("branch", "then"),
        ("send", "sent"),
        ("end", "completed"),
    ]


async def test_a_purchase_during_the_wait_ends_the_run_without_a_send(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(10)
    await s.order("u1", "c1")
    await s.wait(60)
    assert sends(s.tidings) == []
    [run] = run_rows(s.tidings)
    assert run.status == "exited"
    assert "Order Completed" in run.end_reason


async def test_a_purchase_that_reached_tidings_before_its_checkout_still_counts(shop, clock) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    started = clock.now()
    clock.advance(timedelta(minutes=5))
    await s.order("u1", "c1")  # occurred five minutes after the checkout, but arrives first
    await s.checkout("u1", "c1", at=started)
    await s.wait(60)
    assert sends(s.tidings) == []
    [run] = run_rows(s.tidings)
    assert run.status == "exited"
    assert "found before sending" in run.end_reason


async def test_purchases_are_read_for_a_whole_round_of_customers_at_once(shop, clock) -> None:
    """One round fires many customers' runs: each sees its own history, no one else's."""
    s = await shop(config())
    for n in range(6):
        await s.customer(f"u{n}", f"c{n}@example.com")
    started = clock.now()
    for n in range(6):
        await s.checkout(f"u{n}", f"c{n}", at=started)
    clock.advance(timedelta(minutes=5))
    for n in (1, 4):
        await s.order(f"u{n}", f"c{n}")
    await s.wait(30)
    sent = sorted(x.payload["email"] for x in sends(s.tidings))
    assert sent == ["c0@example.com", "c2@example.com", "c3@example.com", "c5@example.com"]


async def test_a_purchase_of_another_cart_does_not_end_this_one(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.order("u1", "other")
    await s.checkout("u1", "c1", items=ITEMS)  # the cart traits name c1 again
    await s.wait(30)
    assert len(sends(s.tidings)) == 1


async def test_the_latest_cart_is_the_one_sent(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(20)
    bigger = [*ITEMS, {"product_id": "p2", "sku": "S-2", "name": "Pot", "price": 30.0, "quantity": 1}]
    await s.checkout("u1", "c1", items=bigger, value=55.0)
    await s.wait(10)
    [sent] = sends(s.tidings)
    assert sent.payload["properties"]["cartItems"] == bigger
    assert sent.payload["properties"]["cartValue"] == 55.0
    assert len(run_rows(s.tidings)) == 1  # the update joined the run, it did not start another


async def test_reentry_never_blocks_a_second_run_for_the_same_key(shop) -> None:
    s = await shop(config(reentry="never"))
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(30)
    await s.checkout("u1", "c1")
    await s.wait(30)
    assert len(sends(s.tidings)) == 1
    assert len(run_rows(s.tidings)) == 1


async def test_after_exit_allows_a_new_run_once_the_first_ended(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(30)
    await s.checkout("u1", "c1")
    await s.wait(30)
    assert len(sends(s.tidings)) == 2


async def test_the_frequency_cap_skips_a_second_reminder_within_its_window(shop) -> None:
    s = await shop(config(flow_guards="    guards: {frequency_cap: {max: 1, per: 1d}}"))
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(30)
    await s.checkout("u1", "c2")
    await s.wait(30)
    assert len(sends(s.tidings)) == 1
    [skipped] = journal(s.tidings, "skipped")
    assert skipped.reason == "frequency cap: 1 per 1d (this flow)"
    await s.wait(60 * 24)
    await s.checkout("u1", "c3")
    await s.wait(30)
    assert len(sends(s.tidings)) == 2  # a day later the cap allows one again


async def test_a_cap_across_all_flows_counts_every_flow(shop) -> None:
    s = await shop(config(guards="  frequency_cap: {max: 1, per: 7d}"))
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(30)
    await s.checkout("u1", "c2")
    await s.wait(30)
    assert len(sends(s.tidings)) == 1
    assert "(all flows)" in journal(s.tidings, "skipped")[0].reason


async def test_quiet_hours_delay_the_send_to_the_morning_in_the_customers_zone(shop, clock) -> None:
    from datetime import UTC, datetime

    clock.set(datetime(2026, 1, 1, 2, 0, tzinfo=UTC))  # 21:00 in New York (UTC-5)
    s = await shop(config(guards='  quiet_hours: {start: "21:00", end: "08:00"}'))
    await s.customer("u1", "ann@example.com", timezone="America/New_York")
    await s.checkout("u1", "c1")
    await s.wait(30)
    assert sends(s.tidings) == []
    [delayed] = journal(s.tidings, "delayed")
    assert "America/New_York" in delayed.reason
    clock.set(datetime(2026, 1, 1, 12, 59, tzinfo=UTC))  # 07:59 there
    await s.tidings.runner.drain()
    assert sends(s.tidings) == []
    clock.set(datetime(2026, 1, 1, 13, 0, tzinfo=UTC))  # 08:00 there
    await s.tidings.runner.drain()
    assert len(sends(s.tidings)) == 1


async def test_an_unsubscribed_customer_is_skipped_with_the_reason(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com", consent="unsubscribed")
    await s.checkout("u1", "c1")
    await s.wait(30)
    assert sends(s.tidings) == []
    [skipped] = journal(s.tidings, "skipped")
    assert skipped.reason == "consent: email is unsubscribed"


async def test_a_customer_who_never_said_yes_is_skipped_by_default(shop) -> None:
    s = await shop(config())
    await s.call("identify", {"userId": "u1", "traits": {"email": "ann@example.com"}})
    await s.checkout("u1", "c1")
    await s.wait(30)
    assert sends(s.tidings) == []
    assert journal(s.tidings, "skipped")[0].reason == "consent: email is unknown"


async def test_an_old_event_replayed_starts_nothing(shop, clock) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1", at=clock.now() - timedelta(days=3))
    await s.wait(60)
    assert run_rows(s.tidings) == []


async def test_the_destination_down_at_fire_time_gets_the_send_once_when_back(shop) -> None:
    with WebhookSink(SECRET).running() as sink:
        s = await shop(config(url=sink.url + "/hook"))
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1")
        sink.fail_next(2, status=503)
        await s.wait(30)
        dispatcher = s.tidings.dispatcher
        await dispatcher.drain()
        assert sink.received == {}
        for _ in range(3):
            await s.wait(15)
            await dispatcher.drain()
        assert len(sends(s.tidings)) == 1
        [delivered] = list(sink.received.values())
        assert delivered["data"]["event"] == "Abandoned Cart"
        assert delivered["data"]["properties"]["cartItems"] == ITEMS


async def test_every_step_and_reason_is_in_the_customers_timeline(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com", consent="unsubscribed")
    await s.checkout("u1", "c1")
    await s.wait(30)
    response = await s.client.get(
        "/api/v1/profiles/ann@example.com/timeline", headers={"authorization": f"Bearer {READ}"}
    )
    assert response.status_code == 200, response.text
    flow_entries = [e for e in response.json()["entries"] if e["kind"] == "flow"]
    outcomes = [e["new"] for e in flow_entries]
    assert "started" in outcomes and "skipped" in outcomes
    [skipped] = [e for e in flow_entries if e["new"] == "skipped"]
    assert skipped["flow_step"]["reason"] == "consent: email is unsubscribed"
    assert skipped["field"] == "abandoned_cart"


async def test_the_timeline_pages_through_events_and_flow_lines_newest_first(shop) -> None:
    """The flow lines are read from the runs' journal beside the profile's own lines: paging
    through the merged list skips nothing and repeats nothing."""
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")
    await s.wait(30)
    url = "/api/v1/profiles/ann@example.com/timeline"
    auth = {"authorization": f"Bearer {READ}"}
    whole = (await s.client.get(url, params={"limit": 100}, headers=auth)).json()["entries"]
    assert {e["kind"] for e in whole} >= {"flow", "event"}
    assert [e["at"] for e in whole] == sorted((e["at"] for e in whole), reverse=True)
    paged, offset = [], 0
    while offset is not None:
        page = (await s.client.get(url, params={"limit": 2, "offset": offset}, headers=auth)).json()
        paged += page["entries"]
        offset = page["next_offset"]
    assert paged == whole


async def test_the_admin_api_lists_flows_and_runs_with_their_reasons(shop) -> None:
    s = await shop(config())
    await s.customer("u1", "ann@example.com")
    await s.customer("u2", "bob@example.com", consent="unsubscribed")
    await s.checkout("u1", "c1")
    await s.checkout("u2", "c2")
    await s.wait(10)
    auth = {"authorization": f"Bearer {READ}"}
    [summary] = (await s.client.get("/api/v1/flows", headers=auth)).json()
    assert summary["name"] == "abandoned_cart"
    assert summary["active_by_step"] == {"wait": 2}
    await s.wait(20)
    [summary] = (await s.client.get("/api/v1/flows", headers=auth)).json()
    assert summary["sends"] == {"sent": 1, "skipped": 1}
    assert summary["skip_reasons"] == {"consent: email is unsubscribed": 1}
    page = (await s.client.get("/api/v1/flows/abandoned_cart/runs", headers=auth)).json()
    bob, ann = page["runs"]  # newest first
    assert [st["kind"] for st in ann["steps"]][-2:] == ["send", "end"]
    assert ann["steps"][-2]["detail"]["payload"]["email"] == "ann@example.com"
    assert bob["steps"][-2]["reason"] == "consent: email is unsubscribed"
    one = await s.client.get(f"/api/v1/flows/abandoned_cart/runs/{ann['id']}", headers=auth)
    assert one.json()["key"] == "c1"
    missing = await s.client.get("/api/v1/flows/nope/runs", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert (await s.client.get("/api/v1/flows")).status_code == 401
    bad = await s.client.get("/api/v1/flows/abandoned_cart/runs?status=sleeping", headers=auth)
    assert bad.status_code == 400


SHOP = """
  shop:
    kind: shopify
    secrets: ["0123456789abcdef0123456789abcdef"]
    lookup:
      shop: example.myshopify.com
      access_token: shpat_simulator
      base_url: "{url}"
"""


def with_lookup(url: str) -> str:
    text = config().replace("sources:\n", "sources:" + SHOP.format(url=url), 1)
    return text.replace("    steps:\n", "    freshness: {lookup: shop, cart_id: run.key}\n    steps:\n", 1)


async def test_a_checkout_the_shop_says_was_completed_gets_no_reminder(shop) -> None:
    from tidings.testing import ShopifySimulator

    with ShopifySimulator().running() as shopify:
        s = await shop(with_lookup(shopify.url))
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1")
        # The order webhook never reaches tidings; Shopify itself knows the checkout was bought.
        shopify.add_order([{"title": "Mug", "quantity": 2, "price": "12.50"}], checkout_token="c1")
        await s.wait(30)
        assert sends(s.tidings) == []
        [run] = run_rows(s.tidings)
        assert run.status == "exited"
        assert run.end_reason == "the checkout was completed (live lookup)"
        assert len(shopify.requests) == 1


async def test_when_the_shop_cannot_answer_the_send_waits_then_goes_on_profile_data(shop) -> None:
    from tidings.testing import ShopifySimulator

    with ShopifySimulator().running() as shopify:
        s = await shop(with_lookup(shopify.url))
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1")
        shopify.fail_next(3, status=503)
        await s.wait(30)
        assert sends(s.tidings) == []  # asked once, unavailable: again in a minute
        await s.wait(1)
        assert sends(s.tidings) == []  # twice
        await s.wait(1)
        [sent] = sends(s.tidings)  # the third failure: sent on what the profile says, and said so
        assert sent.payload["properties"]["cartItems"] == ITEMS
        assert "unavailable after 3 attempts" in journal(s.tidings, "sent")[0].reason


VERSIONED = """
sources:
  web: {{kind: segment, write_keys: ["wk_test"]}}
destinations:
  esp: {{kind: webhook, url: "http://127.0.0.1:9/never", secret: "{secret}"}}
flows:
  nudge:
    trigger: {{event: Checkout Started}}
    guards: {{consent: none}}
    in_flight: {in_flight}
    steps:
      - wait: {wait}
      - send: {{destination: esp, action: track_event, event: "{name}"}}
"""


async def test_a_changed_flow_keeps_running_runs_on_their_version_unless_told_to_migrate(
    running, clock
) -> None:
    old = VERSIONED.format(secret=SECRET, in_flight="keep", wait="1h", name="Old")
    for checkout, in_flight, expected in (("c1", "keep", "Old"), ("c2", "migrate", "New")):
        async with running(old) as (tidings, client):
            s = Shop(tidings, client, clock)
            s.n = 100 if checkout == "c2" else 0  # new message ids: the same ones are duplicates
            await s.customer("u1", "ann@example.com")
            await s.checkout("u1", checkout)
        new = VERSIONED.format(secret=SECRET, in_flight=in_flight, wait="2h", name="New")
        async with running(new) as (tidings, client):
            clock.advance(timedelta(hours=1))
            await tidings.runner.drain()
            newest = max(sends(tidings), key=lambda r: r.id)
            assert newest.payload["event"] == expected


async def test_a_wait_until_a_time_of_day_uses_the_customers_zone(running, clock) -> None:
    from datetime import UTC, datetime

    text = VERSIONED.format(secret=SECRET, in_flight="keep", wait='{until: "09:00"}', name="Morning")
    clock.set(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))  # 14:00 in Paris (UTC+2 in June)
    async with running(text) as (tidings, client):
        s = Shop(tidings, client, clock)
        await s.customer("u1", "ann@example.com", timezone="Europe/Paris")
        await s.checkout("u1", "c1")
        clock.set(datetime(2026, 6, 2, 6, 59, tzinfo=UTC))
        await tidings.runner.drain()
        assert sends(tidings) == []
        clock.set(datetime(2026, 6, 2, 7, 0, tzinfo=UTC))  # 09:00 in Paris
        await tidings.runner.drain()
        assert len(sends(tidings)) == 1


# A Segment source and a webhook destination that is never reached, for flows tested in the store.
BASICS = f"""
sources:
  web: {{kind: segment, write_keys: ["wk_test"]}}
destinations:
  esp: {{kind: webhook, url: "http://127.0.0.1:9/never", secret: "{SECRET}"}}
"""


async def test_update_profile_sets_a_trait_a_branch_can_read(running, clock) -> None:
    text = (
        BASICS
        + """
flows:
  welcome:
    trigger: {event: Checkout Started}
    guards: {consent: none}
    steps:
      - branch: {when: "profile.traits.welcomed", then: exit}
      - update_profile: {traits: {welcomed: true, welcomed_for: "{{ event.properties.checkout_id }}"}}
      - send: {destination: esp, action: track_event, event: Welcome}
"""
    )
    async with running(text) as (tidings, client):
        s = Shop(tidings, client, clock)
        await s.customer("u1", "ann@example.com")
        await s.checkout("u1", "c1")
        await s.checkout("u1", "c2")
        assert [r.payload["event"] for r in sends(tidings)] == ["Welcome"]
        response = await s.client.get("/api/v1/flows/welcome/runs", headers={})
        assert response.status_code == 401
        from tests.integration.test_processing import profile_of

        traits = profile_of(tidings, "ann@example.com").traits
        assert traits["welcomed"] is True and traits["welcomed_for"] == "c1"


async def test_a_backlog_bigger_than_a_round_fires_each_run_once_in_storage_order(shop, clock) -> None:
    """More runs overdue than a round takes: the first round takes the longest overdue, the rest
    go in id order, skipping what ended meanwhile, and every run fires once."""
    s = await shop(config())
    for n in range(1, 9):
        await s.customer(f"u{n}", f"c{n}@example.com")
        await s.checkout(f"u{n}", f"c{n}")
    timeouts = clock.now() + timedelta(minutes=30)

    def due_in_reverse(conn) -> None:  # due order unrelated to creation order: run 8 first
        ids = conn.execute(select(flow_runs.c.id).order_by(flow_runs.c.id.desc())).scalars()
        for n, run in enumerate(list(ids)):
            later = timeouts + timedelta(seconds=n)
            conn.execute(flow_runs.update().where(flow_runs.c.id == run).values(due_at=later))

    s.tidings.store.write_sync(due_in_reverse)
    s.tidings.runner.batch_size = 3
    clock.advance(timedelta(minutes=31))

    def sent() -> list[str]:
        return [x.payload["email"].split("@")[0] for x in sends(s.tidings)]

    assert await s.tidings.runner.run_once() == 3
    assert sent() == ["c8", "c7", "c6"]  # the longest overdue first
    order = {"checkout_id": "c5", "order_id": "o-c5", "value": 25.0}
    await s.post("track", {"userId": "u5", "event": "Order Completed", "properties": order})
    cart = {"checkout_id": "c9", "products": ITEMS, "value": 25.0}
    await s.post("track", {"userId": "u9", "event": "Checkout Started", "properties": cart})
    await s.tidings.processor.drain()  # ends run 5 before the backlog reaches it, starts run 9
    assert sent() == ["c8", "c7", "c6"]  # the processor's batch fired none of the backlog
    assert await s.tidings.runner.run_once() == 3
    assert sent()[3:] == ["c1", "c2", "c3"]
    assert await s.tidings.runner.drain() == 1
    assert sent() == ["c8", "c7", "c6", "c1", "c2", "c3", "c4"]
    statuses = [r.status for r in run_rows(s.tidings)]
    assert statuses == ["completed"] * 4 + ["exited"] + ["completed"] * 3 + ["active"]
    await s.wait(60)
    assert len(sends(s.tidings)) == 7


async def test_the_dispatcher_is_woken_by_a_round_that_wrote_a_send_only(shop) -> None:
    s = await shop(config())
    woken: list[bool] = []
    s.tidings.runner.on_enqueued = lambda: woken.append(True)
    await s.customer("u1", "ann@example.com")
    await s.checkout("u1", "c1")  # the run starts and waits: nothing to send yet
    assert woken == []
    await s.wait(30)
    assert woken == [True]
    assert len(sends(s.tidings)) == 1


AT_ONCE = (
    BASICS
    + """
flows:
  welcome:
    trigger: {event: Checkout Started}
    run_key: event.properties.checkout_id
    steps:
      - send: {destination: esp, action: track_event, event: Hello}
      - wait: 1h
      - send: {destination: esp, action: track_event, event: Again}
"""
)


async def test_a_send_that_needs_no_wait_is_in_the_outbox_when_its_event_is_processed(shop, clock) -> None:
    s = await shop(AT_ONCE)
    told: list[bool] = []
    s.tidings.runner.on_enqueued = lambda: told.append(True)
    await s.customer("u1", "ann@example.com")
    await s.post("track", {"userId": "u1", "event": "Checkout Started", "properties": {"checkout_id": "c1"}})
    await s.tidings.processor.drain()  # the processor's transaction alone: no round of the runner's
    assert [sent.payload["event"] for sent in sends(s.tidings)] == ["Hello"]
    assert told == [True]  # the dispatcher is woken for it
    [run] = run_rows(s.tidings)
    assert (run.status, run.step, run.wake) == ("active", "2", "timer")
    assert run.due_at == clock.now() + timedelta(hours=1)
    clock.advance(timedelta(hours=1))
    assert await s.tidings.runner.drain() == 1  # the wait is the runner's, as any timer
    assert [sent.payload["event"] for sent in sends(s.tidings)] == ["Hello", "Again"]


async def test_if_firing_with_the_processor_fails_the_events_stand_and_the_runner_fires_the_run(
    shop,
) -> None:
    s = await shop(AT_ONCE)
    await s.customer("u1", "ann@example.com")
    executor = s.tidings.runner.executor
    begin = executor.begin

    def broken(*args: Any) -> None:
        executor.begin = begin  # once
        raise RuntimeError("the round broke")

    executor.begin = broken
    await s.post("track", {"userId": "u1", "event": "Checkout Started", "properties": {"checkout_id": "c1"}})
    await s.tidings.processor.drain()
    assert sends(s.tidings) == []
    [run] = run_rows(s.tidings)
    assert (run.status, run.step, run.claim) == ("active", "1", 0)  # its claim was undone too
    assert [e.status for e in inbox_rows(s.tidings)] == ["processed", "processed"]
    assert await s.tidings.runner.drain() == 1
    assert [sent.payload["event"] for sent in sends(s.tidings)] == ["Hello"]


async def test_a_send_with_no_wait_still_asks_the_shop_first(shop) -> None:
    from tidings.testing import ShopifySimulator

    with ShopifySimulator().running() as shopify:
        at_once = AT_ONCE.replace("sources:\n", "sources:" + SHOP.format(url=shopify.url), 1)
        fresh = "    freshness: {lookup: shop, cart_id: run.key}\n    steps:\n"
        s = await shop(at_once.replace("    steps:\n", fresh, 1))
        await s.customer("u1", "ann@example.com")
        shopify.add_order([{"title": "Mug", "quantity": 1, "price": "12.50"}], checkout_token="c1")
        checkout = {"userId": "u1", "event": "Checkout Started", "properties": {"checkout_id": "c1"}}
        await s.post("track", checkout)
        await s.tidings.processor.drain()  # fired with the batch: the shop is asked after its commit
        assert shopify.requests == []
        await s.tidings.runner.drain()
        assert len(shopify.requests) == 1
        assert sends(s.tidings) == []
        [run] = run_rows(s.tidings)
        assert (run.status, run.end_reason) == ("exited", "the checkout was completed (live lookup)")


def SUBSCRIBED(email: str) -> dict[str, str]:
    return {"email": email, "email_consent": "subscribed"}


async def until(condition, seconds: float = 10.0) -> None:
    """Wait for a condition of the background loops (polled: they run on their own)."""
    import asyncio

    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition was not met in time")


@asynccontextmanager
async def live(running, clock) -> AsyncIterator[tuple[Any, WebhookSink, Shop]]:
    """The AT_ONCE flow with tidings' own loops running, sending to a sink."""
    with WebhookSink(SECRET).running() as sink:
        config = AT_ONCE.replace("http://127.0.0.1:9/never", sink.url)
        async with running(config, process=True) as (tidings, client):
            yield tidings, sink, Shop(tidings, client, clock)


async def test_sends_claimed_with_their_round_go_out_once_without_a_claim_of_the_dispatchers(
    running, clock
) -> None:
    async with live(running, clock) as (tidings, sink, s):
        looks: list[bool] = []
        # The dispatcher's own claims happen when it is woken to look (or at its poll, 1 s).
        tidings.dispatcher.wake = tidings.runner.on_enqueued = lambda: looks.append(True)
        for n in range(20):
            await s.post("identify", {"userId": f"u{n}", "traits": SUBSCRIBED(f"c{n}@example.com")})
            started = {"userId": f"u{n}", "event": "Checkout Started"}
            await s.post("track", {**started, "properties": {"checkout_id": f"c{n}"}})
        await until(lambda: len(sink.requests) >= 20)
        await until(lambda: all(row.status == "delivered" for row in sends(tidings)))
        assert len(sink.requests) == 20  # each once
        assert sorted(sink.received) == sorted(row.idempotency_key for row in sends(tidings))
        assert {row.attempts for row in sends(tidings)} == {1}
        assert looks == []  # every send was handed over with the round that wrote it


async def test_a_round_that_does_not_commit_hands_nothing_over(running, clock) -> None:
    async with live(running, clock) as (tidings, sink, s):
        claim = tidings.runner.claim_sends
        claims: list[int] = []

        def broken(conn: Any, now: Any) -> Any:
            handoff = claim(conn, now)
            claims.append(len(handoff.claimed) if handoff is not None else 0)
            if len(claims) == 1:
                raise RuntimeError("the round broke after the dispatcher's claim")
            return handoff

        tidings.runner.claim_sends = broken
        await s.post("identify", {"userId": "u1", "traits": SUBSCRIBED("ann@example.com")})
        body = {"userId": "u1", "event": "Checkout Started", "properties": {"checkout_id": "c1"}}
        await s.post("track", body)
        await until(lambda: len(sends(tidings)) == 1 and sends(tidings)[0].status == "delivered")
        assert claims == [1, 1]  # claimed in the round that broke, then in the runner's own
        assert len(sink.requests) == 1  # the rolled-back claim was not sent; the runner's was
        assert sends(tidings)[0].attempts == 1


async def test_a_round_fired_with_the_processor_wakes_the_runner_for_a_timer_due_soon(shop, clock) -> None:
    """The runner may be asleep until a later time (up to its longest sleep, 1 s), or in a round
    that read the next due time before the processor's commit: a timer due sooner than that must
    wake it, and only such a timer (or more work now) does."""
    from tidings.flows.runner import Fired

    s = await shop(AT_ONCE)
    runner = s.tidings.runner
    woken: list[bool] = []
    runner.wake = lambda: woken.append(True)

    def fired(due: Any, *, full: bool = False) -> Fired:
        return Fired(runner.batch_size if full else 1, [], due, False, None)

    runner.fired_within(fired(None))
    runner.fired_within(fired(clock.now() + timedelta(minutes=30)))  # a round reads it before then
    assert woken == []
    runner.fired_within(fired(clock.now() + timedelta(milliseconds=500)))
    assert woken == [True]
    runner.fired_within(fired(None, full=True))  # more is due now
    runner.fired_within(None)  # nothing fired with the processor: the runner's own round does it
    assert woken == [True, True, True]
