"""A local Shopify GraphQL Admin API: abandoned checkouts and the orders they became.

Served at `POST /admin/api/{version}/graphql.json`, as Shopify serves it:

- `X-Shopify-Access-Token` must be a known token, else 401 with Shopify's `{"errors": "[API]
  Invalid API key or access token ..."}`; a version not served is 404.
- The query is really parsed (operations, variables, aliases, inline fragments; no named
  fragments or directives) and answered with exactly the fields it selects. A field the type does
  not have is a GraphQL error (`undefinedField`), so a lookup that asks for a misspelt field
  fails here as it would at Shopify. Root fields: `node(id:)` (AbandonedCheckout, Order) and
  `orders(first/last, query, reverse)`.
- The `query` search string understands `checkout_token:`, `cart_token:`, `id:`, `name:`,
  `email:` terms joined by AND/OR. As at Shopify, a term on a field the search does not know is
  ignored, with a warning in `extensions.search`, so a misspelt filter matches every order.
- Cost and throttling follow Shopify's published rules, approximately: a scalar costs 0, an
  object 1, a connection 2 plus `first` times one node's cost. Each answer carries
  `extensions.cost` with the bucket state; a query that does not fit in the bucket is answered
  200 with a `THROTTLED` error (or, with `throttle_status=429`, HTTP 429 with `Retry-After`, as
  some clients report seeing); beyond 1000 points a query is refused (`MAX_COST_EXCEEDED`).
- Scopes: without `read_orders` the checkout and order fields are `ACCESS_DENIED`; without
  `read_products` a line item's `product` and `variant` are null with an `ACCESS_DENIED` error.

Faults (`fail_next`) and `latency` (seconds before every answer) make it slow or failing on
demand. Wording of messages and the recovery-URL format are the simulator's own.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.testing.simulator import Simulator

INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"
MAX_QUERY_COST = 1000
DOCS = "https://shopify.dev/api/usage/rate-limits"


class GraphQLError(Exception):
    def __init__(self, message: str, code: str, **extensions: Any) -> None:
        super().__init__(message)
        self.entry: dict[str, Any] = {"message": message, "extensions": {"code": code, **extensions}}


# --------------------------------------------------------------------------- the state


@dataclass
class Line:
    title: str
    price: str  # Shopify writes money as text
    quantity: int = 1
    sku: str | None = None
    variant_title: str | None = None
    product_id: int | None = None
    variant_id: int | None = None
    url: str | None = None  # the product's onlineStoreUrl
    image_url: str | None = None


@dataclass
class Checkout:
    id: int
    token: str
    cart_token: str
    currency: str
    lines: list[Line]
    email: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completed_at: datetime | None = None
    recovery_key: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class Order:
    id: int
    name: str
    currency: str
    lines: list[Line]
    checkout_token: str | None = None
    cart_token: str | None = None
    email: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _lines(items: Iterable[dict[str, Any] | Line]) -> list[Line]:
    out = []
    for entry in items:
        if isinstance(entry, Line):
            out.append(entry)
            continue
        values = dict(entry)
        values["price"] = str(values.get("price", "0.00"))
        out.append(Line(**values))
    return out


def _money(amount: float | str, currency: str) -> dict[str, Any]:
    text = f"{float(amount):.2f}"
    return {
        "__typename": "MoneyBag",
        "shopMoney": {"__typename": "MoneyV2", "amount": text, "currencyCode": currency},
        "presentmentMoney": {"__typename": "MoneyV2", "amount": text, "currencyCode": currency},
    }


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else None


def _total(lines: list[Line]) -> float:
    return sum(float(line.price) * line.quantity for line in lines)


# --------------------------------------------------------------------------- GraphQL, small


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<spread>\.\.\.)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
      | (?P<punct>[{}()\[\]:!$=,@])
    )""",
    re.VERBOSE,
)


@dataclass
class Field:
    name: str
    alias: str
    args: dict[str, Any]
    selections: list[Any] | None


@dataclass
class Fragment:
    on: str
    selections: list[Any]


class _Parser:
    """A GraphQL executable document: one operation, fields, arguments, inline fragments."""

    def __init__(self, text: str, variables: dict[str, Any]) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise GraphQLError(f"Parse error on {text[position : position + 10]!r}", "parseError")
            position = match.end()
            kind = match.lastgroup
            if kind and kind != "comment" and match.group(kind) != ",":  # commas mean nothing
                self.tokens.append((kind, match.group(kind)))
        self.at = 0
        self.variables = variables

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def at_value(self, value: str) -> bool:
        token = self.peek()
        return token is not None and token[1] == value

    def at_kind(self, kind: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == kind

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            got = token[1] if token is not None else "the end"
            raise GraphQLError(f"Parse error: expected {value or 'more'}, got {got!r}", "parseError")
        self.at += 1
        return token

    def document(self) -> list[Any]:
        if self.at_value("mutation") or self.at_value("subscription"):
            raise GraphQLError("only query operations are served by this simulator", "parseError")
        if self.at_value("query"):
            self.take()
            if self.at_kind("name"):
                self.take()
            if self.at_value("("):
                self._skip_balanced("(", ")")
        selections = self.selection_set()
        if self.peek() is not None:
            raise GraphQLError("only one operation per document is served by this simulator", "parseError")
        return selections

    def _skip_balanced(self, open_: str, close: str) -> None:
        depth = 0
        while True:
            _, value = self.take()
            depth += value == open_
            depth -= value == close
            if depth == 0:
                return

    def selection_set(self) -> list[Any]:
        self.take("{")
        selections: list[Any] = []
        while self.peek() is not None and not self.at_value("}"):
            if self.at_kind("spread"):
                self.take()
                if not self.at_value("on"):
                    raise GraphQLError("named fragments are not served by this simulator", "parseError")
                self.take()
                _, type_name = self.take()
                selections.append(Fragment(type_name, self.selection_set()))
                continue
            kind, name = self.take()
            if kind != "name":
                raise GraphQLError(f"Parse error on {name!r}", "parseError")
            alias = name
            if self.at_value(":"):
                self.take()
                _, name = self.take()
            args = self.arguments() if self.at_value("(") else {}
            subs = self.selection_set() if self.at_value("{") else None
            selections.append(Field(name, alias, args, subs))
        self.take("}")
        return selections

    def arguments(self) -> dict[str, Any]:
        self.take("(")
        args: dict[str, Any] = {}
        while self.peek() is not None and not self.at_value(")"):
            _, name = self.take()
            self.take(":")
            args[name] = self.value()
        self.take(")")
        return args

    def value(self) -> Any:
        kind, text = self.take()
        if text == "$":
            _, name = self.take()
            return self.variables.get(name)
        if kind == "string":
            decoded: str = json.loads(text)
            return decoded
        if kind == "number":
            return float(text) if "." in text else int(text)
        if text == "[":
            items = []
            while self.peek() is not None and not self.at_value("]"):
                items.append(self.value())
            self.take("]")
            return items
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(text, text)
        raise GraphQLError(f"Parse error on {text!r}", "parseError")


class Connection:
    """A list served as a Relay connection: `nodes`, `edges { cursor node }`, `pageInfo`."""

    def __init__(self, type_name: str, items: list[dict[str, Any]]) -> None:
        self.type_name = type_name
        self.items = items

    def page(self, args: dict[str, Any]) -> dict[str, Any]:
        first, last = args.get("first"), args.get("last")
        if first is None and last is None:
            raise GraphQLError("you must provide one of first or last", "argumentLiteralsIncompatible")
        items = list(reversed(self.items)) if args.get("reverse") else list(self.items)
        count = first if first is not None else last
        if not isinstance(count, int) or not 0 <= count <= 250:
            raise GraphQLError("first and last must be between 0 and 250", "argumentLiteralsIncompatible")
        shown = items[:count] if first is not None else items[-count:] if count else []
        return {
            "__typename": f"{self.type_name}Connection",
            "nodes": shown,
            "edges": [
                {"__typename": f"{self.type_name}Edge", "cursor": str(i), "node": n}
                for i, n in enumerate(shown)
            ],
            "pageInfo": {
                "__typename": "PageInfo",
                "hasNextPage": len(shown) < len(items) and first is not None,
                "hasPreviousPage": len(shown) < len(items) and last is not None,
                "startCursor": "0" if shown else None,
                "endCursor": str(len(shown) - 1) if shown else None,
            },
        }


def requested_cost(selections: list[Any] | None) -> int:
    """Shopify's rule of thumb: scalars 0, objects 1, connections 2 + first x one node."""
    total = 0
    for selection in selections or []:
        if isinstance(selection, Fragment):
            total += requested_cost(selection.selections)
        elif selection.selections is not None:
            size = selection.args.get("first") or selection.args.get("last")
            if isinstance(size, int):
                inner = 0
                for sub in selection.selections:
                    if isinstance(sub, Field) and sub.name == "nodes":
                        inner += requested_cost(sub.selections)
                    elif isinstance(sub, Field) and sub.name == "edges":
                        node = [s for s in sub.selections or [] if isinstance(s, Field) and s.name == "node"]
                        inner += sum(requested_cost(s.selections) for s in node)
                    elif isinstance(sub, Field) and sub.selections is not None:
                        inner += 1
                total += 2 + size * max(1, inner)
            else:
                total += 1 + requested_cost(selection.selections)
    return total


# --------------------------------------------------------------------------- the simulator


class ShopifySimulator(Simulator):
    def __init__(
        self,
        access_tokens: Iterable[str] = ("shpat_simulator",),
        *,
        shop: str = "example.myshopify.com",
        api_versions: Iterable[str] = ("2025-07",),
        scopes: Iterable[str] = ("read_orders", "read_products"),
        bucket_size: float = 1000.0,
        restore_rate: float = 100.0,
        throttle_status: int = 200,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.access_tokens = set(access_tokens)
        self.shop = shop
        self.api_versions = set(api_versions)
        self.scopes = set(scopes)
        self.bucket_size = bucket_size
        self.restore_rate = restore_rate
        self.throttle_status = throttle_status
        self.latency = latency
        self.checkouts: dict[int, Checkout] = {}
        self.orders: dict[int, Order] = {}
        self.queries: list[tuple[str, dict[str, Any]]] = []  # (query, variables) of every valid request
        self.throttled = 0  # answers refused for cost
        self._available = bucket_size
        self._refilled_at = time.monotonic()
        self._throttle_next = 0
        self._next_id = 1001
        self._next_order_number = 1001
        self._state = threading.Lock()

    def routes(self) -> list[Route]:
        return [Route("/admin/api/{version}/graphql.json", self.graphql, methods=["POST"])]

    # ------------------------------------------------------------------ set up from tests

    def add_checkout(
        self,
        items: Iterable[dict[str, Any] | Line],
        *,
        currency: str = "USD",
        token: str | None = None,
        cart_token: str | None = None,
        email: str | None = None,
    ) -> Checkout:
        with self._state:
            checkout = Checkout(
                id=self._take_id(),
                token=token or secrets.token_hex(16),
                cart_token=cart_token or secrets.token_hex(16),
                currency=currency,
                lines=_lines(items),
                email=email,
            )
            self.checkouts[checkout.id] = checkout
            return checkout

    def set_items(self, ref: int | str, items: Iterable[dict[str, Any] | Line]) -> Checkout:
        with self._state:
            checkout = self._find(ref)
            checkout.lines = _lines(items)
            checkout.updated_at = datetime.now(UTC)
            return checkout

    def complete_checkout(self, ref: int | str) -> Order:
        """The customer paid: the checkout gets completedAt and becomes an order."""
        with self._state:
            checkout = self._find(ref)
            checkout.completed_at = checkout.updated_at = datetime.now(UTC)
            order = self._order(
                checkout.currency, checkout.lines, checkout.token, checkout.cart_token, checkout.email
            )
            return order

    def add_order(
        self,
        items: Iterable[dict[str, Any] | Line],
        *,
        currency: str = "USD",
        checkout_token: str | None = None,
        cart_token: str | None = None,
        email: str | None = None,
    ) -> Order:
        """An order that did not come from a simulated checkout (a POS sale, another customer)."""
        with self._state:
            return self._order(currency, _lines(items), checkout_token, cart_token, email)

    def delete_checkout(self, ref: int | str) -> None:
        with self._state:
            del self.checkouts[self._find(ref).id]

    def throttle_next(self, count: int = 1) -> None:
        """Answer the next `count` queries as throttled, whatever the bucket holds."""
        with self._state:
            self._throttle_next += count

    def drain(self, points: float) -> None:
        """Take points out of the bucket, as another app's queries on the same store would."""
        with self._state:
            self._refill()
            self._available = max(0.0, self._available - points)

    def _take_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def _order(
        self,
        currency: str,
        lines: list[Line],
        checkout_token: str | None,
        cart_token: str | None,
        email: str | None,
    ) -> Order:
        order = Order(
            id=self._take_id(),
            name=f"#{self._next_order_number}",
            currency=currency,
            lines=list(lines),
            checkout_token=checkout_token,
            cart_token=cart_token,
            email=email,
        )
        self._next_order_number += 1
        self.orders[order.id] = order
        return order

    def _find(self, ref: int | str) -> Checkout:
        for checkout in self.checkouts.values():
            if ref in (checkout.id, str(checkout.id), checkout.token):
                return checkout
        raise KeyError(f"no simulated checkout {ref!r}")

    # ------------------------------------------------------------------ objects as GraphQL sees them

    def _checkout_object(self, checkout: Checkout) -> dict[str, Any]:
        total = _total(checkout.lines)
        return {
            "__typename": "AbandonedCheckout",
            "id": f"gid://shopify/AbandonedCheckout/{checkout.id}",
            "name": f"#{checkout.id}",
            "note": "",
            "createdAt": _iso(checkout.created_at),
            "updatedAt": _iso(checkout.updated_at),
            "completedAt": _iso(checkout.completed_at),
            "abandonedCheckoutUrl": (
                f"https://{self.shop}/checkouts/ac/{checkout.token}/recover?key={checkout.recovery_key}"
            ),
            "discountCodes": [],
            "taxesIncluded": False,
            "customer": None,
            "totalPriceSet": _money(total, checkout.currency),
            "subtotalPriceSet": _money(total, checkout.currency),
            "totalLineItemsPriceSet": _money(total, checkout.currency),
            "totalDiscountSet": _money(0, checkout.currency),
            "lineItems": Connection(
                "AbandonedCheckoutLineItem",
                [
                    self._line_object(checkout.id, n, line, checkout.currency)
                    for n, line in enumerate(checkout.lines)
                ],
            ),
        }

    def _line_object(self, owner: int, n: int, line: Line, currency: str) -> dict[str, Any]:
        product = (
            {
                "__typename": "Product",
                "id": f"gid://shopify/Product/{line.product_id}",
                "title": line.title,
                "onlineStoreUrl": line.url,
            }
            if line.product_id is not None
            else None
        )
        variant = (
            {
                "__typename": "ProductVariant",
                "id": f"gid://shopify/ProductVariant/{line.variant_id}",
                "title": line.variant_title,
                "sku": line.sku,
            }
            if line.variant_id is not None
            else None
        )
        return {
            "__typename": "AbandonedCheckoutLineItem",
            "id": f"gid://shopify/AbandonedCheckoutLineItem/{owner}{n:03d}",
            "title": line.title,
            "variantTitle": line.variant_title,
            "sku": line.sku,
            "quantity": line.quantity,
            "originalUnitPriceSet": _money(line.price, currency),
            "originalTotalPriceSet": _money(float(line.price) * line.quantity, currency),
            "discountedUnitPriceSet": _money(line.price, currency),
            "discountedTotalPriceSet": _money(float(line.price) * line.quantity, currency),
            "customAttributes": [],
            "product": product,
            "variant": variant,
            "image": {"__typename": "Image", "url": line.image_url} if line.image_url else None,
        }

    def _order_object(self, order: Order) -> dict[str, Any]:
        total = _total(order.lines)
        return {
            "__typename": "Order",
            "id": f"gid://shopify/Order/{order.id}",
            "name": order.name,
            "email": order.email,
            "createdAt": _iso(order.created_at),
            "processedAt": _iso(order.created_at),
            "updatedAt": _iso(order.created_at),
            "cancelledAt": None,
            "currencyCode": order.currency,
            "totalPriceSet": _money(total, order.currency),
            "subtotalPriceSet": _money(total, order.currency),
        }

    # ------------------------------------------------------------------ the endpoint

    async def graphql(self, request: Request) -> Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("x-shopify-access-token") not in self.access_tokens:
            return JSONResponse({"errors": INVALID_TOKEN}, 401)
        if request.path_params["version"] not in self.api_versions:
            return JSONResponse({"errors": "Not Found"}, 404)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"errors": {"query": "Required parameter missing or invalid"}}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return JSONResponse({"errors": {"query": "Required parameter missing or invalid"}}, 400)
        variables = body.get("variables") or {}
        try:
            selections = _Parser(body["query"], variables).document()
        except GraphQLError as exc:
            return JSONResponse({"errors": [exc.entry]})
        self.queries.append((body["query"], variables))

        cost = requested_cost(selections)
        if cost > MAX_QUERY_COST:
            error = GraphQLError(
                f"Query cost is {cost}, which exceeds the single query max cost limit ({MAX_QUERY_COST}).",
                "MAX_COST_EXCEEDED",
                cost=cost,
                maxCost=MAX_QUERY_COST,
            )
            return JSONResponse({"errors": [error.entry]})
        with self._state:
            self._refill()
            throttled = self._throttle_next > 0 or cost > self._available
            if throttled:
                self._throttle_next = max(0, self._throttle_next - 1)
                self.throttled += 1
                return self._throttled(cost)
            self._available -= cost
            errors: list[dict[str, Any]] = []
            warnings: list[dict[str, Any]] = []
            counter = [0]
            data = {
                field.alias: self._root(field, errors, warnings, counter)
                for field in selections
                if isinstance(field, Field)
            }
            actual = min(cost, counter[0])
            self._available = min(self.bucket_size, self._available + cost - actual)
            extensions: dict[str, Any] = {"cost": self._cost(cost, actual)}
            if warnings:
                extensions["search"] = warnings
        answer: dict[str, Any] = {"data": data, "extensions": extensions}
        if errors:
            answer["errors"] = errors
        return JSONResponse(answer)

    def _refill(self) -> None:
        now = time.monotonic()
        self._available = min(
            self.bucket_size, self._available + (now - self._refilled_at) * self.restore_rate
        )
        self._refilled_at = now

    def _cost(self, requested: int, actual: int | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.bucket_size,
                "currentlyAvailable": math.floor(self._available),
                "restoreRate": self.restore_rate,
            },
        }

    def _throttled(self, cost: int) -> Response:
        body = {
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": DOCS}}],
            "extensions": {"cost": self._cost(cost, None)},
        }
        if self.throttle_status == 429:
            wait = max(1, math.ceil((cost - self._available) / self.restore_rate))
            return JSONResponse(body, 429, headers={"Retry-After": f"{wait:.1f}"})
        return JSONResponse(body)

    # ------------------------------------------------------------------ execution

    def _root(
        self, field: Field, errors: list[dict[str, Any]], warnings: list[dict[str, Any]], counter: list[int]
    ) -> Any:
        path: list[str | int] = [field.alias]
        try:
            if field.name == "node":
                value = self._node(field.args.get("id"))
                return self._project(value, field.selections, errors, path, counter)
            if field.name == "orders":
                self._require("read_orders", "orders")
                found = self._search_orders(field.args.get("query"), warnings)
                connection = Connection("Order", [self._order_object(o) for o in found])
                counter[0] += 2
                return self._project(connection.page(field.args), field.selections, errors, path, counter)
            raise GraphQLError(
                f"Field '{field.name}' doesn't exist on type 'QueryRoot'",
                "undefinedField",
                typeName="QueryRoot",
                fieldName=field.name,
            )
        except GraphQLError as exc:
            errors.append({**exc.entry, "path": path})
            return None

    def _require(self, scope: str, what: str) -> None:
        if scope not in self.scopes:
            raise GraphQLError(
                f"Access denied for {what} field. Required access: `{scope}` access scope.",
                "ACCESS_DENIED",
                documentation="https://shopify.dev/api/usage/access-scopes",
                requiredAccess=f"`{scope}` access scope.",
            )

    def _node(self, gid: Any) -> dict[str, Any] | None:
        match = re.fullmatch(r"gid://shopify/(\w+)/(\d+)", gid) if isinstance(gid, str) else None
        if match is None:
            raise GraphQLError(f"Invalid global id '{gid}'", "argumentLiteralsIncompatible")
        kind, number = match.group(1), int(match.group(2))
        if kind == "AbandonedCheckout":
            self._require("read_orders", "node")
            checkout = self.checkouts.get(number)
            return self._checkout_object(checkout) if checkout is not None else None
        if kind == "Order":
            self._require("read_orders", "node")
            order = self.orders.get(number)
            return self._order_object(order) if order is not None else None
        return None

    def _project(
        self,
        value: Any,
        selections: list[Any] | None,
        errors: list[dict[str, Any]],
        path: list[str | int],
        counter: list[int],
    ) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            return [self._project(v, selections, errors, [*path, i], counter) for i, v in enumerate(value)]
        if not isinstance(value, dict):
            if selections is not None:
                raise GraphQLError(
                    f"Selections can't be made on scalars (field '{path[-1]}')", "selectionMismatch"
                )
            return value
        if selections is None:
            raise GraphQLError(f"Field '{path[-1]}' must have selections", "selectionMismatch")
        counter[0] += 1
        result: dict[str, Any] = {}
        for selection in selections:
            if isinstance(selection, Fragment):
                if selection.on in (value.get("__typename"), "Node"):
                    result.update(self._project(value, selection.selections, errors, path, counter))
            else:
                result[selection.alias] = self._field(value, selection, errors, path, counter)
        return result

    def _field(
        self,
        value: dict[str, Any],
        selection: Field,
        errors: list[dict[str, Any]],
        path: list[str | int],
        counter: list[int],
    ) -> Any:
        type_name = value.get("__typename", "")
        if selection.name == "__typename":
            return type_name
        if selection.name not in value:
            raise GraphQLError(
                f"Field '{selection.name}' doesn't exist on type '{type_name}'",
                "undefinedField",
                typeName=type_name,
                fieldName=selection.name,
            )
        here = [*path, selection.alias]
        field_value = value[selection.name]
        product_field = type_name == "AbandonedCheckoutLineItem" and selection.name in ("product", "variant")
        if product_field and "read_products" not in self.scopes:
            denied = GraphQLError(
                f"Access denied for {selection.name} field. Required access: `read_products` access scope.",
                "ACCESS_DENIED",
            )
            errors.append({**denied.entry, "path": here})
            return None
        if isinstance(field_value, Connection):
            counter[0] += 2
            field_value = field_value.page(selection.args)
        return self._project(field_value, selection.selections, errors, here, counter)

    # ------------------------------------------------------------------ search syntax

    def _search_orders(self, query: Any, warnings: list[dict[str, Any]]) -> list[Order]:
        orders = sorted(self.orders.values(), key=lambda o: o.id)
        if not isinstance(query, str) or not query.strip():
            return orders
        groups = _parse_search(query)
        known = {"checkout_token", "cart_token", "id", "name", "email"}
        for group in groups:
            for name, _ in group:
                if name is not None and name not in known:
                    warnings.append(
                        {
                            "path": ["orders"],
                            "query": query,
                            "warnings": [
                                {"field": name, "message": f"Invalid search field for this query: {name}"}
                            ],
                        }
                    )

        def matches(order: Order, name: str | None, wanted: str) -> bool:
            if name is None:
                return wanted.lower() in (order.name.lower(), (order.email or "").lower())
            if name not in known:
                return True  # Shopify ignores a filter it does not know
            actual = {
                "checkout_token": order.checkout_token,
                "cart_token": order.cart_token,
                "id": str(order.id),
                "name": order.name,
                "email": order.email,
            }[name]
            return actual is not None and actual.lower() == wanted.lower()

        return [o for o in orders if any(all(matches(o, n, v) for n, v in group) for group in groups)]


_SEARCH_TERM = re.compile(
    r'\s*(?:(?P<name>[A-Za-z_][\w.]*):)?(?P<value>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[^\s()]+)'
)


def _parse_search(query: str) -> list[list[tuple[str | None, str]]]:
    """Terms joined by OR (groups) and AND or juxtaposition (within a group)."""
    groups: list[list[tuple[str | None, str]]] = [[]]
    position = 0
    while position < len(query):
        match = _SEARCH_TERM.match(query, position)
        if match is None:
            break
        position = match.end()
        name, value = match.group("name"), match.group("value")
        if name is None and value == "OR":
            groups.append([])
            continue
        if name is None and value == "AND":
            continue
        if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        groups[-1].append((name, value))
    return [g for g in groups if g]
