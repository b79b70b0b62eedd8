"""The demo's scripted half hour in the shop: who browses, who buys, who leaves, who unsubscribes.

Five visitors, each showing one thing the abandoned-cart flow does:

- Dan puts cups in a cart and never checks out: an anonymous profile, no run.
- Ann starts a checkout, adds two more mugs later, and leaves: she gets the reminder, with the
  cart as it was last (four mugs), not as it started.
- Bob starts a checkout and pays: his order ends his run at once.
- Cat starts a checkout, then unsubscribes from email: her run reaches the send and is skipped
  (consent).
- Eve starts a checkout and pays, but Shopify's orders/create webhook is late: right before the
  send, tidings asks Shopify, learns the checkout was completed, and sends nothing. The late
  webhook arrives after her run has ended.

Times are minutes after the start of the virtual clock; the flow waits 30 of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from tidings.demo.shop import CUP, MUG, SALT_PIG, TOWEL, Cart, Customer, Shop, describe

Act = Callable[[Shop, datetime], Awaitable[int | None]]  # tidings' HTTP status, None: no webhook


@dataclass(frozen=True, slots=True)
class Beat:
    minute: float  # when, after the start
    who: str
    what: str
    act: Act
    after_run_of: str | None = None  # and not before the run with this key has ended


@dataclass(frozen=True, slots=True)
class Story:
    customers: dict[str, Customer]  # by email
    beats: list[Beat]

    @property
    def last_minute(self) -> float:
        return max(b.minute for b in self.beats)


def story() -> Story:
    """A fresh copy of the script (the customers' state changes as it plays)."""
    ann = Customer("Ann", "Lee", 7001, 36614620020801)
    bob = Customer("Bob", "Okafor", 7002, 36614620020802)
    cat = Customer("Cat", "Moreau", 7003, 36614620020803)
    eve = Customer("Eve", "Lindqvist", 7005, 36614620020805)
    dan: Cart = [(CUP, 2)]
    ann_cart: Cart = [(MUG, 2), (TOWEL, 1)]
    ann_more: Cart = [(MUG, 4), (TOWEL, 1)]
    bob_cart: Cart = [(SALT_PIG, 1), (CUP, 2)]
    cat_cart: Cart = [(MUG, 1), (TOWEL, 2)]
    eve_cart: Cart = [(CUP, 4)]

    def checkout(customer: Customer, cart: Cart) -> Act:
        return lambda shop, now: shop.start_checkout(customer, cart, now)

    async def ann_adds(shop: Shop, now: datetime) -> int:
        return await shop.update_checkout(ann, ann_more, now)

    async def bob_pays(shop: Shop, now: datetime) -> int:
        shop.pay(bob, bob_cart, now)
        return await shop.order_webhook(bob, now)

    async def cat_unsubscribes(shop: Shop, now: datetime) -> int:
        return await shop.unsubscribe(cat, now)

    async def eve_pays(shop: Shop, now: datetime) -> None:
        shop.pay(eve, eve_cart, now)  # Shopify knows at once; its webhook to tidings is held up

    async def eve_late(shop: Shop, now: datetime) -> int:
        return await shop.order_webhook(eve, now)

    async def dan_browses(shop: Shop, now: datetime) -> int:
        return await shop.add_to_cart("dan-cart-5550", dan, now)

    beats = [
        Beat(0.0, "Dan", f"browses, puts {describe(dan)} in a cart, leaves", dan_browses),
        Beat(0.5, "Ann", f"starts a checkout with {describe(ann_cart)}", checkout(ann, ann_cart)),
        Beat(1.5, "Bob", f"starts a checkout with {describe(bob_cart)}", checkout(bob, bob_cart)),
        Beat(2.5, "Cat", f"starts a checkout with {describe(cat_cart)}", checkout(cat, cat_cart)),
        Beat(3.5, "Eve", f"starts a checkout with {describe(eve_cart)}", checkout(eve, eve_cart)),
        Beat(5.0, "Bob", "pays (orders/create)", bob_pays),
        Beat(7.0, "Cat", "unsubscribes from email marketing (customers/update)", cat_unsubscribes),
        Beat(9.0, "Ann", f"adds two mugs: {describe(ann_more)}", ann_adds),
        Beat(12.0, "Eve", "pays; Shopify's orders/create webhook to tidings is delayed", eve_pays),
        Beat(34.0, "Shopify", "delivers Eve's late orders/create webhook", eve_late, after_run_of=eve.token),
    ]
    return Story({c.email: c for c in (ann, bob, cat, eve)}, beats)
