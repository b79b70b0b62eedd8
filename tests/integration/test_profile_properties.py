"""Any arrival order of the same events gives the same profiles (a Hypothesis property).

What is generated: a handful of Segment calls for two customers (identify with traits, email
consent changes, Checkout Started with items and value, Order Completed, Order Refunded, Product
Viewed), each carrying some of its customer's identities (a user id, one of two anonymous ids, an
email), and sometimes another customer's anonymous id, so profiles start apart and are merged
later, within and across customers. Times come from a few slots, so equal `occurred_at` values
(ties) are frequent.

How they are applied: each call goes through the Segment receiver (the real ingest parsing and
dedupe keys) and `commit_batch` into the inbox, then `Processor.process_batch` with a batch of one
applies it, before the next call arrives. So inbox ids, i.e. arrival order, really follow the
permutation, and no batch sorts the events for us. Two permutations are applied to the same
store, wiped in between, and the profiles compared: traits, email consent (state, source, time),
identities, which identities share a profile, and which events each profile holds. Profile ids
are not compared: they follow arrival order (a merge keeps the lowest id).

Ties. A tie in `occurred_at` is broken by arrival (inbox id) by design, so two events at the same
instant that set the same field to different values *should* give different profiles in
different orders. The generator therefore makes every value a function of the event's time for
fields that can collide: trait values and the consent state depend only on the time; a checkout's
id, items and value depend only on its time; Checkout Started and Order Completed (which clears
the cart) never share a time, nor do identify calls of different customers (whose `email` traits
differ). What may tie is only what agrees, and then arrival order must not matter; the sums and
counts (orders, lifetime value) are order-free whatever the times.

Besides comparing the two orders with each other, the result is checked against a small model
computed from the events alone (who shares a profile, latest trait and consent by time, order
count and lifetime value), so a deterministic but wrong result fails too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from tidings.clock import FakeClock
from tidings.config import parse_settings
from tidings.ingest.base import InboundRequest
from tidings.ingest.registry import receiver_class
from tidings.mapping.engine import Mapper
from tidings.mapping.rules import preset
from tidings.metrics import Metrics
from tidings.processor import Processor
from tidings.profiles.read import load
from tidings.store import Store
from tidings.store.inbox import Submission, commit_batch
from tidings.store.schema import events, inbox, metadata, profiles

WRITE_KEY = "wk_prop"
CONFIG = f"""
sources:
  web:
    kind: segment
    write_keys: ["{WRITE_KEY}"]
profile:
  traits:
    # a configured trait kept from the earliest event, next to the built-in latest/sum/count/max ones
    first_checkout_id:
      - on: Checkout Started
        value: properties.checkout_id
        keep: first
"""
AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
BASE = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
SLOTS = 4  # times are BASE + (10 * slot + offset) minutes
CONSENT = ("subscribed", "unsubscribed")
TRAIT_NAMES = ("first_name", "plan", "city")

# --------------------------------------------------------------------------- the events


@dataclass(frozen=True)
class Call:
    """One Segment call: what is sent, and what the model needs to know about it."""

    n: int
    kind: str  # identify | checkout | order | refund | viewed
    customer: int
    minute: int
    user: bool
    anon: str | None
    email: bool
    traits: tuple[str, ...] = ()
    consent: str | None = None
    amount: float = 0.0

    @property
    def message_id(self) -> str:
        return f"m{self.n}"

    @property
    def at(self) -> datetime:
        return BASE + timedelta(minutes=self.minute)

    @property
    def identities(self) -> frozenset[str]:
        ids = set()
        if self.user:
            ids.add(f"user_id:u{self.customer}")
        if self.anon:
            ids.add(f"anonymous_id:{self.anon}")
        if self.email:
            ids.add(f"email:{email_of(self.customer)}")
        return frozenset(ids)

    def path_and_body(self) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"messageId": self.message_id, "timestamp": self.at.isoformat()}
        if self.user:
            body["userId"] = f"u{self.customer}"
        if self.anon:
            body["anonymousId"] = self.anon
        if self.kind == "identify":
            traits: dict[str, Any] = {name: trait_value(name, self.minute) for name in self.traits}
            if self.email:
                traits["email"] = email_of(self.customer).upper()  # normalised as an identity
            if self.consent:
                traits["email_consent"] = self.consent
            return "identify", {**body, "traits": traits}
        props: dict[str, Any] = {}
        if self.email:
            props["email"] = email_of(self.customer)
        if self.kind == "checkout":
            props |= checkout(self.minute)
            name = "Checkout Started"
        elif self.kind == "order":
            props |= {"order_id": f"o{self.n}", "total": self.amount, "currency": "EUR"}
            name = "Order Completed"
        elif self.kind == "refund":
            props |= {"order_id": f"r{self.n}", "total": self.amount, "currency": "EUR"}
            name = "Order Refunded"
        else:
            props |= {"product_id": f"p{self.minute}", "name": f"Product {self.minute}", "price": 9.5}
            name = "Product Viewed"
        return "track", {**body, "event": name, "properties": props}


def email_of(customer: int) -> str:
    return f"c{customer}@example.com"


def trait_value(name: str, minute: int) -> str:
    return f"{name}@{minute}"


def checkout(minute: int) -> dict[str, Any]:
    items = [{"product_id": f"p{minute}", "sku": f"S-{minute}", "name": "Mug", "price": 12.5, "quantity": 1}]
    return {"checkout_id": f"co{minute}", "products": items, "value": 12.5, "currency": "EUR"}


# Offsets within a slot: Checkout Started (0) never ties with Order Completed (1); identify calls
# of customer 0 (0) never tie with those of customer 1 (1). Everything else may tie freely.
OFFSETS = {"checkout": (0,), "order": (1,), "refund": (0, 1), "viewed": (0, 1)}


@st.composite
def calls(draw: st.DrawFn) -> list[Call]:
    consent_at = draw(st.lists(st.sampled_from(CONSENT), min_size=SLOTS, max_size=SLOTS))
    count = draw(st.integers(min_value=2, max_value=8))
    out = []
    for n in range(count):
        kind = draw(st.sampled_from(("identify", "identify", "checkout", "order", "refund", "viewed")))
        customer = draw(st.integers(0, 1))
        slot = draw(st.integers(0, SLOTS - 1))
        offset = customer if kind == "identify" else draw(st.sampled_from(OFFSETS[kind]))
        user = draw(st.booleans())
        # an anonymous id of this customer, or (a link) of the other one
        anon = draw(st.sampled_from((None, f"a{customer}", f"b{customer}", f"a{1 - customer}")))
        if not user and anon is None:
            anon = f"a{customer}"  # Segment needs a userId or an anonymousId
        email = draw(st.booleans())
        traits: tuple[str, ...] = ()
        consent = None
        if kind == "identify":
            traits = tuple(draw(st.lists(st.sampled_from(TRAIT_NAMES), unique=True)))
            if draw(st.booleans()):
                consent = consent_at[slot]
        amount = draw(st.integers(100, 20_000)) / 100 if kind in ("order", "refund") else 0.0
        out.append(Call(n, kind, customer, 10 * slot + offset, user, anon, email, traits, consent, amount))
    return out


# --------------------------------------------------------------------------- applying them


@dataclass
class Harness:
    """A store with the Segment receiver and the processor of a tidings configured by CONFIG."""

    store: Store
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        cfg = parse_settings(CONFIG, "test.yaml", {})
        source = cfg.sources["web"]
        self.receiver = receiver_class(source.kind)("web", source, self.clock)
        self.processor = Processor(
            self.store,
            mappers={"web": Mapper([*source.mappings, *preset(source.kind)])},
            computed=cfg.profile.computed(),
            clock=self.clock,
            metrics=Metrics(),
            batch_size=1,
        )
        self.window = cfg.storage.dedupe_window

    def wipe(self) -> None:
        if self.store.dialect == "postgresql":
            names = ", ".join(t.name for t in metadata.sorted_tables)
            self.store.write_sync(lambda c: c.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE")))
        else:

            def delete_all(conn: Any) -> None:
                for table in reversed(metadata.sorted_tables):
                    conn.execute(table.delete())

            self.store.write_sync(delete_all)

    def send(self, call: Call) -> None:
        path, body = call.path_and_body()
        request = InboundRequest(
            source="web",
            method="POST",
            url=f"http://tidings.test/v1/{path}",
            headers={"authorization": AUTH, "content-type": "application/json"},
            body=json.dumps(body).encode(),
            received_at=self.clock.now(),
        )
        reception = self.receiver.receive(request)
        assert reception.flagged is None, reception.flagged
        now = self.clock.now()
        [outcome] = self.store.write_sync(
            lambda c: commit_batch(c, [Submission(request, reception)], now, self.window)
        )
        assert outcome.accepted == 1

    def process_one(self) -> None:
        applied = self.store.write_sync(self.processor.process_batch)
        assert len(applied) == 1, "the event was not applied"

    def run(self, order: Sequence[Call]) -> dict[frozenset[str], dict[str, Any]]:
        """Wipe, then let the calls arrive in `order`, each applied before the next arrives."""
        self.wipe()
        for call in order:
            self.clock.advance(0.25)
            self.send(call)
            self.process_one()
        statuses = self.store.read_sync(lambda c: set(c.execute(select(inbox.c.status)).scalars()))
        assert statuses == {"processed"}
        return self.store.read_sync(snapshot)


def snapshot(conn: Any) -> dict[frozenset[str], dict[str, Any]]:
    """Every live profile, keyed by its identities: what a reader sees, ids left out."""
    out = {}
    for pid in conn.execute(select(profiles.c.id).where(profiles.c.merged_into.is_(None))).scalars():
        view = load(conn, pid)
        assert view is not None
        held = conn.execute(
            select(inbox.c.dedupe_key)
            .join(events, events.c.inbox_id == inbox.c.id)
            .where(events.c.profile_id == pid)
        ).scalars()
        out[frozenset(view.identities)] = {
            "traits": view.traits,
            "consent": view.consent,
            "events": sorted(held),
        }
    return out


# --------------------------------------------------------------------------- the model


def groups(calls_: Sequence[Call]) -> list[frozenset[str]]:
    """Identities that end up together: the connected components of the calls' identity sets."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for call in calls_:
        first, *rest = sorted(call.identities)
        find(first)
        for other in rest:
            parent[find(other)] = find(first)
    members: dict[str, set[str]] = {}
    for x in list(parent):
        members.setdefault(find(x), set()).add(x)
    return [frozenset(m) for m in members.values()]


def check_against_model(calls_: Sequence[Call], result: dict[frozenset[str], dict[str, Any]]) -> None:
    assert set(result) == set(groups(calls_))
    for ids, profile in result.items():
        mine = sorted((c for c in calls_ if c.identities <= ids), key=lambda c: c.minute)
        assert profile["events"] == sorted(c.message_id for c in mine)
        traits = profile["traits"]
        for name in TRAIT_NAMES:
            setting = [c for c in mine if name in c.traits]
            assert traits.get(name) == (trait_value(name, setting[-1].minute) if setting else None), name
        consents = [c for c in mine if c.consent]
        if consents:
            latest = consents[-1]
            assert profile["consent"]["email"] == {
                "state": latest.consent,
                "source": "web",
                "at": latest.at.isoformat(),
            }
        else:
            assert "email" not in profile["consent"]
        orders = [c.amount for c in mine if c.kind == "order"]
        refunds = [c.amount for c in mine if c.kind == "refund"]
        if orders:
            assert traits["orders_count"] == len(orders)
            assert traits["last_order_at"].startswith(
                max(c.at for c in mine if c.kind == "order").strftime("%Y-%m-%dT%H:%M")
            )
        if orders or refunds:
            assert traits["lifetime_value"] == pytest.approx(sum(orders) - sum(refunds))
        carts = [c for c in mine if c.kind in ("checkout", "order")]
        if carts and carts[-1].kind == "checkout":
            assert traits["cart_id"] == checkout(carts[-1].minute)["checkout_id"]
            assert traits["cart_value"] == 12.5
        elif carts:
            assert traits["cart_items"] is None
        started = [c for c in mine if c.kind == "checkout"]
        if started:
            assert traits["first_checkout_id"] == f"co{started[0].minute}"


# --------------------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def sqlite_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    path: Path = tmp_path_factory.mktemp("props") / "tidings.db"
    store = Store(f"sqlite:///{path}", sqlite_synchronous="OFF")
    store.upgrade()
    try:
        yield Harness(store)
    finally:
        store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_arrival_order_gives_the_same_profiles(sqlite_harness: Harness, data: st.DataObject) -> None:
    events_ = data.draw(calls(), label="events")
    first = data.draw(st.permutations(events_), label="first order")
    second = data.draw(st.permutations(events_), label="second order")
    one = sqlite_harness.run(first)
    two = sqlite_harness.run(second)
    assert one == two
    check_against_model(events_, one)


# --------------------------------------------------------------------------- fixed orders, both backends


def _c(n: int, kind: str, customer: int, minute: int, **kw: Any) -> Call:
    fields = {"user": False, "anon": None, "email": False} | kw
    return Call(n, kind, customer, minute, **fields)


# Two anonymous visits and a known user merge into one profile; customer 1 is linked to it late.
SCENARIO = [
    _c(0, "viewed", 0, 0, anon="a0"),
    _c(1, "checkout", 0, 10, anon="b0", email=True),
    _c(2, "identify", 0, 10, user=True, traits=("first_name", "plan"), consent="subscribed"),
    _c(3, "identify", 0, 20, user=True, anon="a0", email=True, traits=("plan",), consent="unsubscribed"),
    _c(4, "order", 0, 21, user=True, amount=25.0),
    _c(5, "checkout", 0, 30, anon="b0"),
    _c(6, "refund", 0, 30, user=True, email=True, amount=5.5),
    _c(7, "identify", 0, 30, anon="b0", user=True, traits=("city",)),
    _c(8, "identify", 1, 11, user=True, traits=("first_name",), consent="subscribed"),
    _c(9, "order", 1, 31, user=True, anon="a1", amount=40.0),
    _c(10, "identify", 1, 41, anon="a1", user=True, email=True, consent="subscribed"),
    _c(11, "viewed", 1, 41, user=True, anon="a0"),  # links customer 1 to customer 0
]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(list(range(len(SCENARIO))), id="in-order"),
        pytest.param(list(reversed(range(len(SCENARIO)))), id="reversed"),
        pytest.param([11, 3, 0, 9, 5, 1, 8, 6, 10, 2, 7, 4], id="shuffled"),
    ],
)
def test_fixed_orders_give_the_same_profile_on_every_backend(store_url: str, order: list[int]) -> None:
    store = Store(store_url, sqlite_synchronous="OFF")
    store.upgrade()
    try:
        harness = Harness(store)
        expected = harness.run(SCENARIO)
        got = harness.run([SCENARIO[i] for i in order])
    finally:
        store.close()
    assert got == expected
    check_against_model(SCENARIO, got)
    [(ids, profile)] = got.items()  # everyone is one person in the end
    assert "email:c0@example.com" in ids and "user_id:u1" in ids
    assert profile["traits"]["orders_count"] == 2
    assert profile["traits"]["lifetime_value"] == 59.5
    assert profile["consent"]["email"]["state"] == "subscribed"  # customer 1's later opt-in
    assert profile["traits"]["plan"] == "plan@20"
    assert profile["traits"]["cart_id"] is None  # customer 1's order at :31 came after the :30 checkout
    assert profile["traits"]["first_checkout_id"] == "co10"


# --------------------------------------------------------------------------- the smallest failing orders

# Found by the property above. Each pair of orders must give the same profile; the second order
# in each makes the processor merge two profiles, the first does not.


def test_a_merge_adds_no_order_totals_to_a_customer_without_orders(store_url: str) -> None:
    visit = _c(0, "identify", 0, 0, anon="a0", traits=("first_name",))
    login = _c(1, "identify", 0, 10, user=True, traits=("plan",))
    link = _c(2, "identify", 0, 20, user=True, anon="a0")
    store = Store(store_url, sqlite_synchronous="OFF")
    store.upgrade()
    try:
        harness = Harness(store)
        unmerged = harness.run([link, visit, login])  # one profile from the start
        merged = harness.run([visit, login, link])  # two profiles, merged by `link`
    finally:
        store.close()
    [profile] = merged.values()
    assert "orders_count" not in profile["traits"]  # no order was ever placed
    assert "lifetime_value" not in profile["traits"]
    assert merged == unmerged


def test_a_merge_keeps_the_earliest_value_of_a_first_trait(store_url: str) -> None:
    early = _c(0, "checkout", 0, 0, anon="a0")
    late = _c(1, "checkout", 0, 10, user=True)
    link = _c(2, "identify", 0, 20, user=True, anon="a0")
    store = Store(store_url, sqlite_synchronous="OFF")
    store.upgrade()
    try:
        harness = Harness(store)
        unmerged = harness.run([link, early, late])
        merged = harness.run([early, late, link])
    finally:
        store.close()
    [profile] = merged.values()
    assert profile["traits"]["first_checkout_id"] == "co0"  # keep: first, and co0 came first
    assert merged == unmerged
