"""Computed traits (`profile.traits` in tidings.yaml) and the built-in ones.

A trait is a list of rules. Each rule names the events it listens to (`on`), an expression over the
event (`value`), and how values combine (`keep`):

- `latest` / `first`: the value from the event with the latest / earliest `occurred_at` wins,
  whatever order events arrive in (ties: the later / earlier arrival). `clear: true` sets null.
- `sum`, `count`, `max`, `min`: recomputed from every such event of the customer, so a late or
  replayed event gives the same result as one in order. `negate: true` subtracts (refunds);
  `distinct: <expression>` makes events with the same key (an order id) count once.

Expressions are JMESPath over `{name, occurred_at, source, properties, traits}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import model_validator

from tidings import events as ev
from tidings.configmodel import ConfigModel
from tidings.mapping.rules import Expression

Keep = Literal["latest", "first", "sum", "count", "max", "min"]
AGGREGATES = frozenset({"sum", "count", "max", "min"})


class TraitRule(ConfigModel):
    on: str | list[str]
    value: Expression | None = None
    when: Expression | None = None
    keep: Keep = "latest"
    clear: bool = False
    negate: bool = False
    # count/sum: events with the same key count once (the latest one's value), e.g. an order id,
    # so an order that is updated again and again is one order.
    distinct: Expression | None = None

    @model_validator(mode="after")
    def _complete(self) -> TraitRule:
        if self.value is None and not self.clear and self.keep != "count":
            raise ValueError("a rule needs a value (or clear: true, or keep: count)")
        if self.clear and self.keep != "latest":
            raise ValueError("clear only applies to keep: latest")
        if self.negate and self.keep != "sum":
            raise ValueError("negate only applies to keep: sum")
        if self.distinct is not None and self.keep not in ("sum", "count"):
            raise ValueError("distinct only applies to keep: sum or count")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.on,) if isinstance(self.on, str) else tuple(self.on)


class ProfileSettings(ConfigModel):
    """The `profile:` section."""

    traits: dict[str, list[TraitRule] | None] = {}  # null removes a built-in trait
    builtin_traits: bool = True

    @model_validator(mode="after")
    def _one_kind_per_trait(self) -> ProfileSettings:
        for name, rules in self.traits.items():
            kinds = {rule.keep in AGGREGATES for rule in rules or []}
            if len(kinds) > 1:
                raise ValueError(f"trait {name!r} mixes aggregate (sum/count/max/min) and latest/first rules")
        return self

    def computed(self) -> dict[str, list[TraitRule]]:
        merged = dict(BUILTIN_TRAITS) if self.builtin_traits else {}
        for name, rules in self.traits.items():
            if rules is None:
                merged.pop(name, None)
            else:
                merged[name] = rules
        return merged


_CART = [ev.CHECKOUT_STARTED, ev.CART_UPDATED, ev.PRODUCT_ADDED, ev.PRODUCT_REMOVED, ev.CART_VIEWED]


def _cart(value: str) -> list[TraitRule]:
    """A cart trait: the latest cart event's value, cleared when an order completes."""
    return [TraitRule(on=_CART, value=value), TraitRule(on=ev.ORDER_COMPLETED, clear=True)]


BUILTIN_TRAITS: Mapping[str, list[TraitRule]] = {
    "cart_id": _cart("properties.cart_id || properties.checkout_id"),
    "checkout_id": _cart("properties.checkout_id"),
    "cart_items": _cart("properties.items"),
    "cart_value": _cart("properties.value"),
    "cart_currency": _cart("properties.currency"),
    "checkout_url": _cart("properties.checkout_url"),
    "last_product_viewed": [
        TraitRule(
            on=ev.PRODUCT_VIEWED,
            value="properties.{product_id: product_id, sku: sku, name: name, price: price, "
            "url: url, image_url: image_url}",
        )
    ],
    "orders_count": [TraitRule(on=ev.ORDER_COMPLETED, keep="count", distinct="properties.order_id")],
    "lifetime_value": [
        TraitRule(
            on=ev.ORDER_COMPLETED, keep="sum", value="properties.value", distinct="properties.order_id"
        ),
        TraitRule(on=ev.ORDER_REFUNDED, keep="sum", value="properties.value", negate=True),
    ],
    "last_order_at": [TraitRule(on=ev.ORDER_COMPLETED, keep="max", value="occurred_at")],
}
