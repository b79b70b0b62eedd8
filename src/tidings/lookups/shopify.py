"""Shopify: is this checkout still abandoned? Asked of the GraphQL Admin API.

The REST Checkout resource is sunset, so the answer comes from GraphQL, in one of two ways
depending on what the flow holds:

- The **checkout token** (what the preset emits as `checkout_id`, from `payload.token`; also a
  cart token, the preset's `cart_id`): GraphQL has no way to fetch an abandoned checkout by its
  token, but `orders(query: "checkout_token:... OR cart_token:...")` finds the order it became.
  An order means bought; no order means not bought, and nothing more is known (items, total and
  recovery link stay None; the event's own are the best there are).
- The **numeric checkout id** (the webhook's `payload.id`) or its GID
  `gid://shopify/AbandonedCheckout/<id>`: `node(id:)` gives the AbandonedCheckout itself, with
  `completedAt`, the current line items and total, and `abandonedCheckoutUrl`. No such node: None.

Needs an Admin API access token with `read_orders` (and, for the line items' product ids and
links, `read_products`); the staff member behind it must be allowed to manage abandoned
checkouts. Throttling comes either as HTTP 429 with `Retry-After` or as HTTP 200 with a
`THROTTLED` error and the bucket state in `extensions.cost`, from which the wait is worked out.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

import httpx

from tidings.ingest.shopify import ShopifyLookupSettings
from tidings.lookups.base import CartState, HttpLookup, LookupUnavailable, item, to_float

LINE_ITEMS = 50  # a reminder shows a few; more would cost query points every time

CHECKOUT_QUERY = f"""
query TidingsAbandonedCheckout($id: ID!) {{
  node(id: $id) {{
    __typename
    ... on AbandonedCheckout {{
      id
      completedAt
      updatedAt
      abandonedCheckoutUrl
      totalPriceSet {{ shopMoney {{ amount currencyCode }} }}
      lineItems(first: {LINE_ITEMS}) {{
        nodes {{
          title
          variantTitle
          sku
          quantity
          originalUnitPriceSet {{ shopMoney {{ amount }} }}
          product {{ id onlineStoreUrl }}
          variant {{ id }}
          image {{ url }}
        }}
      }}
    }}
  }}
}}
"""

ORDER_QUERY = """
query TidingsCheckoutOrder($query: String!) {
  orders(first: 1, query: $query) {
    nodes {
      id
      createdAt
      totalPriceSet { shopMoney { amount currencyCode } }
    }
  }
}
"""

_GID = re.compile(r"^gid://shopify/AbandonedCheckout/(\d+)$")


class ShopifyCartLookup(HttpLookup):
    vendor = "Shopify"

    def __init__(self, source: str, settings: ShopifyLookupSettings, http: httpx.AsyncClient) -> None:
        super().__init__(source, http, timeout=settings.timeout.total_seconds())
        self.settings = settings
        base = settings.base_url or f"https://{settings.shop}"
        self.endpoint = f"{base}/admin/api/{settings.api_version}/graphql.json"

    async def cart(self, cart_id: str) -> CartState | None:
        ref = cart_id.strip() if isinstance(cart_id, str) else ""
        if not ref:
            raise ValueError("a Shopify checkout reference is empty (expected a token or a checkout id)")
        gid = checkout_gid(ref)
        if gid is not None:
            return await self._checkout(gid)
        if ref.startswith("gid://"):
            raise ValueError(f"{ref!r} is not an AbandonedCheckout id (gid://shopify/AbandonedCheckout/<n>)")
        return await self._order_for_token(ref)

    # ------------------------------------------------------------------ by id

    async def _checkout(self, gid: str) -> CartState | None:
        data = await self._query(CHECKOUT_QUERY, {"id": gid})
        node = data.get("node")
        if node is None:
            return None
        if not isinstance(node, dict) or node.get("__typename") != "AbandonedCheckout":
            return None
        money = _shop_money(node.get("totalPriceSet"))
        lines = node.get("lineItems")
        nodes = lines.get("nodes") if isinstance(lines, dict) else None
        if not isinstance(nodes, list):
            raise self.invalid("AbandonedCheckout.lineItems.nodes is not a list")
        items = [_item(line) for line in nodes if isinstance(line, dict)]
        return CartState(
            completed=node.get("completedAt") is not None,
            # A checkout emptied of everything is nothing to remind anyone of.
            exists=bool(items),
            items=items,
            value=to_float(money.get("amount")),
            currency=money.get("currencyCode"),
            checkout_url=node.get("abandonedCheckoutUrl"),
            updated_at=_time(node.get("updatedAt")),
        )

    # ------------------------------------------------------------------ by token

    async def _order_for_token(self, token: str) -> CartState:
        quoted = _quote(token)
        data = await self._query(ORDER_QUERY, {"query": f"checkout_token:{quoted} OR cart_token:{quoted}"})
        orders = data.get("orders")
        nodes = orders.get("nodes") if isinstance(orders, dict) else None
        if not isinstance(nodes, list):
            raise self.invalid("orders.nodes is not a list")
        if not nodes or not isinstance(nodes[0], dict):
            return CartState(completed=False)
        order = nodes[0]
        money = _shop_money(order.get("totalPriceSet"))
        return CartState(
            completed=True,
            value=to_float(money.get("amount")),
            currency=money.get("currencyCode"),
            updated_at=_time(order.get("createdAt")),
        )

    # ------------------------------------------------------------------ transport

    async def _query(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = await self.request(
            "POST",
            self.endpoint,
            json={"query": query, "variables": variables},
            headers={
                "X-Shopify-Access-Token": self.settings.access_token.get_secret_value(),
                "Accept": "application/json",
            },
        )
        if response.status_code != 200:
            raise self.refused(response, _rest_errors(response))
        body = self.json_body(response)
        if not isinstance(body, dict):
            raise self.invalid("the body is not a JSON object")
        errors = body.get("errors")
        if errors:
            raise self._graphql_error(errors, body.get("extensions"))
        data = body.get("data")
        if not isinstance(data, dict):
            raise self.invalid("no data and no errors")
        return data

    def _graphql_error(self, errors: Any, extensions: Any) -> LookupUnavailable:
        entries: list[Any] = errors if isinstance(errors, list) else [{"message": str(errors)}]
        codes = {str(_obj(e.get("extensions")).get("code", "")) for e in entries if isinstance(e, dict)}
        messages = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in entries)
        if "THROTTLED" in codes:
            return LookupUnavailable(
                f"{self.where}: throttled: {messages}",
                reason="throttled",
                status=200,
                retry_after=_throttle_wait(extensions),
            )
        if "ACCESS_DENIED" in codes:
            return LookupUnavailable(
                f"{self.where}: access denied ({messages}); the token needs read_orders and read_products",
                reason="auth",
                status=200,
            )
        return LookupUnavailable(f"{self.where}: the query failed: {messages}", reason="invalid", status=200)


def checkout_gid(ref: str) -> str | None:
    """The AbandonedCheckout GID a numeric id or a GID stands for; None for anything else."""
    if ref.isdigit() and ref.isascii():
        return f"gid://shopify/AbandonedCheckout/{ref}"
    return ref if _GID.match(ref) else None


def _quote(value: str) -> str:
    """A value for Shopify's search syntax, quoted so that no character of it is syntax."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _numeric_id(gid: Any) -> str | None:
    """`gid://shopify/Product/123` as `123`, the form the presets use for product ids."""
    if not isinstance(gid, str):
        return None
    return gid.rsplit("/", 1)[-1] or None


def _shop_money(money_bag: Any) -> dict[str, Any]:
    if isinstance(money_bag, dict) and isinstance(money_bag.get("shopMoney"), dict):
        shop_money: dict[str, Any] = money_bag["shopMoney"]
        return shop_money
    return {}


def _item(line: dict[str, Any]) -> dict[str, Any]:
    product, variant, image = _obj(line.get("product")), _obj(line.get("variant")), _obj(line.get("image"))
    return item(
        product_id=_numeric_id(product.get("id")),
        variant_id=_numeric_id(variant.get("id")),
        sku=line.get("sku") or None,
        name=line.get("title"),
        variant=line.get("variantTitle") or None,
        price=to_float(_shop_money(line.get("originalUnitPriceSet")).get("amount")),
        quantity=line.get("quantity"),
        url=product.get("onlineStoreUrl"),
        image_url=image.get("url"),
    )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _throttle_wait(extensions: Any) -> float | None:
    """Seconds until the bucket holds the query's cost again, from `extensions.cost`."""
    cost = extensions.get("cost") if isinstance(extensions, dict) else None
    if not isinstance(cost, dict):
        return None
    status = cost.get("throttleStatus") or {}
    requested = to_float(cost.get("requestedQueryCost"))
    available = to_float(status.get("currentlyAvailable"))
    rate = to_float(status.get("restoreRate"))
    if requested is None or available is None or not rate:
        return None
    return max(1.0, math.ceil((requested - available) / rate))


def _rest_errors(response: httpx.Response) -> str | None:
    """Shopify's non-GraphQL refusals say `{"errors": "..."}`."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("errors"), str):
        text: str = body["errors"]
        return text
    return None
