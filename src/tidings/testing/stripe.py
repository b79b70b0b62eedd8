"""A local Stripe API, for Checkout Sessions: retrieve, line items, list.

- `GET /v1/checkout/sessions/{id}`, `GET /v1/checkout/sessions/{id}/line_items` (`limit` 1-100,
  `starting_after`, `expand[]=data.price.product`), `GET /v1/checkout/sessions` (filters
  `status`, `customer`, `customer_details[email]`, `payment_intent`, `created[gt|gte|lt|lte]`,
  newest first), with objects shaped like the official fixtures (stripe/openapi fixtures3).
- The key comes as `Authorization: Bearer sk_...` or as the Basic-auth user name; none, or one
  not known, is 401 with Stripe's `{"error": {"type": "invalid_request_error", ...}}`.
- An id not known is 404 `resource_missing`; an expansion not served, or a bad `limit`, is 400.
- `rate` requests per second (None: no limit) and `throttle_next()` answer 429 with
  `code: rate_limit`. Stripe documents no `Retry-After`; the simulator sends one only when told
  (`retry_after=`), so both cases can be tested.

Sessions are created, changed, completed, expired and recovered from the test. Faults
(`fail_next`) and `latency` (seconds before every answer) make it slow or failing on demand.
Message wording is the simulator's own.
"""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.testing.simulator import Simulator

RECOVERY_DAYS = 30  # how long a recovery URL lasts here (the simulator's choice; Stripe sets expires_at)


def error_body(message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "invalid_request_error"}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    return {"error": error}


class StripeSimulator(Simulator):
    def __init__(
        self,
        api_keys: Iterable[str] = ("sk_test_simulator",),
        *,
        rate: int | None = None,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.api_keys = set(api_keys)
        self.rate = rate
        self.latency = latency
        self.sessions: dict[str, dict[str, Any]] = {}
        self.line_items: dict[str, list[dict[str, Any]]] = {}  # session id -> items
        self.products: dict[str, dict[str, Any]] = {}
        self.rate_limited = 0
        self._starts: deque[float] = deque()
        self._throttle: deque[float | None] = deque()  # Retry-After of each forced 429
        self._state = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/checkout/sessions", self.list_sessions, methods=["GET"]),
            Route("/v1/checkout/sessions/{id}", self.retrieve, methods=["GET"]),
            Route("/v1/checkout/sessions/{id}/line_items", self.list_line_items, methods=["GET"]),
        ]

    # ------------------------------------------------------------------ set up from tests

    def create_session(
        self,
        items: Iterable[dict[str, Any]],
        *,
        currency: str = "eur",
        customer: str | None = None,
        customer_email: str | None = None,
        recovery: bool = False,
        session_id: str | None = None,
        created: int | None = None,
        recovered_from: str | None = None,
    ) -> dict[str, Any]:
        """An open session. Each item: name, unit_amount (minor units), quantity, and optionally
        product (id), images, url, nickname."""
        now = int(time.time())
        with self._state:
            session_id = (
                session_id or f"cs_test_{secrets.token_urlsafe(40).replace('-', 'a').replace('_', 'b')}"
            )
            created = created if created is not None else now
            session: dict[str, Any] = {
                "id": session_id,
                "object": "checkout.session",
                "after_expiration": {
                    "recovery": {
                        "allow_promotion_codes": False,
                        "enabled": recovery,
                        "expires_at": None,
                        "url": None,
                    }
                }
                if recovery
                else None,
                "amount_subtotal": 0,
                "amount_total": 0,
                "cancel_url": "https://example.com/cancel",
                "client_reference_id": None,
                "created": created,
                "currency": currency,
                "customer": customer,
                "customer_details": {"email": customer_email, "name": None, "phone": None}
                if customer_email
                else None,
                "customer_email": customer_email,
                "expires_at": created + 24 * 3600,
                "livemode": False,
                "metadata": {},
                "mode": "payment",
                "payment_intent": None,
                "payment_status": "unpaid",
                "recovered_from": recovered_from,
                "status": "open",
                "success_url": "https://example.com/success",
                "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            }
            self.sessions[session_id] = session
            self._set_items(session, items)
            return session

    def set_items(self, session_id: str, items: Iterable[dict[str, Any]]) -> dict[str, Any]:
        with self._state:
            session = self.sessions[session_id]
            self._set_items(session, items)
            return session

    def complete(self, session_id: str, *, payment_status: str = "paid") -> dict[str, Any]:
        with self._state:
            session = self.sessions[session_id]
            if session["status"] != "open":
                raise ValueError(f"session {session_id} is {session['status']}, not open")
            session["status"] = "complete"
            session["payment_status"] = payment_status
            session["payment_intent"] = f"pi_{secrets.token_hex(12)}"
            session["url"] = None
            return session

    def expire(self, session_id: str, *, at: int | None = None) -> dict[str, Any]:
        """The session runs out; with recovery enabled it gets a recovery URL (for RECOVERY_DAYS)."""
        with self._state:
            session = self.sessions[session_id]
            if session["status"] != "open":
                raise ValueError(f"session {session_id} is {session['status']}, not open")
            when = at if at is not None else int(time.time())
            session["status"] = "expired"
            session["expires_at"] = when
            session["url"] = None
            recovery = (session.get("after_expiration") or {}).get("recovery")
            if recovery and recovery["enabled"]:
                recovery["url"] = f"https://buy.stripe.com/r/test_{secrets.token_urlsafe(24)}"
                recovery["expires_at"] = when + RECOVERY_DAYS * 86400
            return session

    def recover(self, session_id: str) -> dict[str, Any]:
        """The customer follows the recovery URL: a new open session, `recovered_from` the old."""
        old = self.sessions[session_id]
        with self._state:
            items = [dict(line["_given"]) for line in self.line_items[session_id]]
        return self.create_session(
            items,
            currency=old["currency"],
            customer=old["customer"],
            customer_email=old["customer_email"],
            recovered_from=session_id,
        )

    def throttle_next(self, count: int = 1, *, retry_after: float | None = None) -> None:
        with self._state:
            self._throttle.extend([retry_after] * count)

    def _set_items(self, session: dict[str, Any], items: Iterable[dict[str, Any]]) -> None:
        lines = []
        for n, given in enumerate(items):
            product_id = given.get("product") or f"prod_{secrets.token_hex(7)}"
            self.products[product_id] = {
                "id": product_id,
                "object": "product",
                "active": True,
                "description": None,
                "images": list(given.get("images", [])),
                "livemode": False,
                "metadata": {},
                "name": given["name"],
                "url": given.get("url"),
            }
            unit = given["unit_amount"]
            quantity = given.get("quantity", 1)
            lines.append(
                {
                    "id": f"li_{session['id'][-8:]}{n:04d}",
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": unit * quantity,
                    "amount_tax": 0,
                    "amount_total": unit * quantity,
                    "currency": session["currency"],
                    "description": given["name"],
                    "price": {
                        "id": given.get("price") or f"price_{secrets.token_hex(7)}",
                        "object": "price",
                        "active": True,
                        "currency": session["currency"],
                        "nickname": given.get("nickname"),
                        "product": product_id,
                        "type": "one_time",
                        "unit_amount": unit,
                        "unit_amount_decimal": str(unit),
                    },
                    "quantity": quantity,
                    "_given": dict(given, product=product_id),
                }
            )
        self.line_items[session["id"]] = lines
        total = sum(line["amount_total"] for line in lines)
        session["amount_subtotal"] = session["amount_total"] = total

    # ------------------------------------------------------------------ the API

    async def _gate(self, request: Request) -> Response | None:
        if self.latency:
            await asyncio.sleep(self.latency)
        key = _key(request.headers.get("authorization", ""))
        if not key:
            return JSONResponse(
                error_body(
                    "No API key provided. Send your secret key as 'Authorization: Bearer <key>' "
                    "(or as the Basic-auth user name)."
                ),
                401,
            )
        if key not in self.api_keys:
            return JSONResponse(error_body(f"Invalid API Key provided: {_mask(key)}"), 401)
        now = time.monotonic()
        with self._state:
            forced = self._throttle.popleft() if self._throttle else False
            limited = False
            if forced is False and self.rate is not None:
                while self._starts and self._starts[0] <= now - 1.0:
                    self._starts.popleft()
                limited = len(self._starts) >= self.rate
                if not limited:
                    self._starts.append(now)
            if forced is not False or limited:
                self.rate_limited += 1
                headers = {}
                if isinstance(forced, int | float) and not isinstance(forced, bool):
                    headers["Retry-After"] = str(math.ceil(forced))
                return JSONResponse(
                    error_body(
                        "Too many requests in too short a time; back off and retry.", code="rate_limit"
                    ),
                    429,
                    headers=headers,
                )
        return None

    async def retrieve(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        session_id = request.path_params["id"]
        expand = request.query_params.getlist("expand[]")
        with self._state:
            session = self.sessions.get(session_id)
            if session is None:
                return _missing(session_id)
            if any(path not in ("line_items", "line_items.data.price.product") for path in expand):
                return _bad_expand(expand)
            body = dict(session)
            if "line_items" in expand or "line_items.data.price.product" in expand:
                lines = self._lines(session_id, "line_items.data.price.product" in expand)
                body["line_items"] = _page(lines, 10, f"/v1/checkout/sessions/{session_id}/line_items")
        return JSONResponse(body)

    async def list_line_items(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        session_id = request.path_params["id"]
        params = request.query_params
        expand = params.getlist("expand[]")
        limit = _limit(params.get("limit"))
        if limit is None:
            return JSONResponse(error_body("Invalid integer: limit must be 1 to 100.", param="limit"), 400)
        with self._state:
            if session_id not in self.sessions:
                return _missing(session_id)
            if any(path != "data.price.product" for path in expand):
                return _bad_expand(expand)
            lines = self._lines(session_id, "data.price.product" in expand)
        after = params.get("starting_after")
        if after:
            ids = [line["id"] for line in lines]
            lines = lines[ids.index(after) + 1 :] if after in ids else []
        return JSONResponse(_page(lines, limit, f"/v1/checkout/sessions/{session_id}/line_items"))

    async def list_sessions(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        params = request.query_params
        limit = _limit(params.get("limit"))
        if limit is None:
            return JSONResponse(error_body("Invalid integer: limit must be 1 to 100.", param="limit"), 400)
        with self._state:
            found = [dict(s) for s in self.sessions.values() if _listed(s, params)]
        found.sort(key=lambda s: s["created"], reverse=True)
        return JSONResponse(_page(found, limit, "/v1/checkout/sessions"))

    def _lines(self, session_id: str, expand_product: bool) -> list[dict[str, Any]]:
        out = []
        for line in self.line_items[session_id]:
            shown = {k: v for k, v in line.items() if not k.startswith("_")}
            shown["price"] = dict(line["price"])
            if expand_product:
                shown["price"]["product"] = dict(self.products[line["price"]["product"]])
            out.append(shown)
        return out


def _listed(session: dict[str, Any], params: Any) -> bool:
    checks = {
        "status": session["status"],
        "customer": session["customer"],
        "payment_intent": session["payment_intent"],
        "customer_details[email]": (session.get("customer_details") or {}).get("email"),
    }
    for name, actual in checks.items():
        wanted = params.get(name)
        if wanted is not None and wanted != actual:
            return False
    created: int = session["created"]
    bounds: dict[str, Callable[[int], bool]] = {
        "created[gt]": lambda v: created > v,
        "created[gte]": lambda v: created >= v,
        "created[lt]": lambda v: created < v,
        "created[lte]": lambda v: created <= v,
    }
    for name, test in bounds.items():
        value = params.get(name)
        if value is not None and not test(int(value)):
            return False
    return True


def _page(items: list[dict[str, Any]], limit: int, url: str) -> dict[str, Any]:
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}


def _limit(value: str | None) -> int | None:
    if value is None:
        return 10
    return int(value) if value.isdigit() and 1 <= int(value) <= 100 else None


def _missing(session_id: str) -> Response:
    return JSONResponse(
        error_body(f"No such checkout.session: '{session_id}'", code="resource_missing", param="session"), 404
    )


def _bad_expand(expand: list[str]) -> Response:
    return JSONResponse(
        error_body(f"This property cannot be expanded ({', '.join(expand)}).", param="expand"), 400
    )


def _key(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip() or None
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return None
        return user or None
    return None


def _mask(key: str) -> str:
    prefix = key[:8] if key.startswith(("sk_test_", "rk_test_", "sk_live_", "rk_live_")) else key[:3]
    return f"{prefix}{'*' * 8}{key[-4:]}"
