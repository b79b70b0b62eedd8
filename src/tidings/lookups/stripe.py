"""Stripe: is this Checkout Session still unpaid? Asked of `GET /v1/checkout/sessions/{id}`.

The flow holds the session id (`cs_...`, the preset's `checkout_id`). The session's `status`
answers most of it:

- `complete`: bought (with a delayed payment method `payment_status` may still be `unpaid`, but
  the customer finished the checkout, so there is nothing to remind them of).
- `open`: not bought; the current line items come from `/line_items` (with each price's product
  expanded, for names, images and links), the link is the session's `url`.
- `expired`: the session itself can never be paid. With recovery enabled
  (`after_expiration.recovery`), the customer may have come back through the recovery link and
  paid in a *new* session whose `recovered_from` names this one; the customer's completed
  sessions since this one was created are listed to find it (one call, by customer or email).
  Otherwise the recovery link, while it lasts, is where a reminder points; without one the
  session is gone (`exists=False`).

A session Stripe does not know is a 404 with `error.code = resource_missing`: None. Any other
4xx/5xx, a 429, or a refused key is `LookupUnavailable`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from tidings.clock import Clock, SystemClock
from tidings.ingest.stripe import StripeLookupSettings
from tidings.lookups.base import CartState, HttpLookup, item

DEFAULT_BASE_URL = "https://api.stripe.com"
LINE_ITEMS = 100  # Stripe's largest page

# Stripe counts these currencies' amounts in whole units, these in thousandths (the same table as
# the mapping function from_minor_units).
_ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
_THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


class StripeCartLookup(HttpLookup):
    vendor = "Stripe"

    def __init__(
        self,
        source: str,
        settings: StripeLookupSettings,
        http: httpx.AsyncClient,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(source, http, timeout=settings.timeout.total_seconds())
        self.settings = settings
        self.clock = clock or SystemClock()
        self.base = settings.base_url or DEFAULT_BASE_URL

    async def cart(self, cart_id: str) -> CartState | None:
        session_id = cart_id.strip() if isinstance(cart_id, str) else ""
        if not session_id.startswith("cs_"):
            raise ValueError(
                f"{session_id!r} is not a Checkout Session id (they start cs_live_ or cs_test_)"
                if session_id
                else "a Stripe Checkout Session id is empty"
            )
        session = await self._get(f"/v1/checkout/sessions/{quote(session_id, safe='')}")
        if session is None:
            return None
        status = session.get("status")
        currency = session.get("currency")
        value = minor_to_major(session.get("amount_total"), currency)
        code = currency.upper() if isinstance(currency, str) else None
        if status == "complete":
            return CartState(completed=True, value=value, currency=code)
        if status == "open":
            return CartState(
                completed=False,
                items=await self._items(session_id),
                value=value,
                currency=code,
                checkout_url=session.get("url"),
            )
        if status == "expired":
            return await self._expired(session, value, code)
        raise self.invalid(f"Checkout Session status {status!r}")

    async def _expired(self, session: dict[str, Any], value: float | None, currency: str | None) -> CartState:
        expired_at = _time(session.get("expires_at"))
        recovery = (session.get("after_expiration") or {}).get("recovery") or {}
        if not recovery.get("enabled"):
            return CartState(
                completed=False, exists=False, value=value, currency=currency, updated_at=expired_at
            )
        recovered = await self._recovered_purchase(session)
        if recovered is not None:
            currency_of = recovered.get("currency")
            return CartState(
                completed=True,
                value=minor_to_major(recovered.get("amount_total"), currency_of),
                currency=currency_of.upper() if isinstance(currency_of, str) else currency,
            )
        url = recovery.get("url")
        until = _time(recovery.get("expires_at"))
        if not url or (until is not None and until <= self.clock.now()):
            return CartState(
                completed=False, exists=False, value=value, currency=currency, updated_at=expired_at
            )
        return CartState(
            completed=False,
            items=await self._items(session["id"]),
            value=value,
            currency=currency,
            checkout_url=url,
            updated_at=expired_at,
        )

    async def _recovered_purchase(self, session: dict[str, Any]) -> dict[str, Any] | None:
        """The customer's completed session recovered from this one, if any."""
        params: list[tuple[str, str]] = [("status", "complete"), ("limit", "100")]
        created = session.get("created")
        if isinstance(created, int):
            params.append(("created[gte]", str(created)))
        customer = session.get("customer")
        customer_id = customer.get("id") if isinstance(customer, dict) else customer
        email = (session.get("customer_details") or {}).get("email") or session.get("customer_email")
        if isinstance(customer_id, str) and customer_id:
            params.append(("customer", customer_id))
        elif isinstance(email, str) and email:
            params.append(("customer_details[email]", email))
        else:
            return None  # no one to ask about
        listing = await self._get("/v1/checkout/sessions", params=params)
        for candidate in (listing or {}).get("data") or []:
            if isinstance(candidate, dict) and candidate.get("recovered_from") == session.get("id"):
                return candidate
        return None

    async def _items(self, session_id: str) -> list[dict[str, Any]]:
        listing = await self._get(
            f"/v1/checkout/sessions/{quote(session_id, safe='')}/line_items",
            params=[("limit", str(LINE_ITEMS)), ("expand[]", "data.price.product")],
        )
        data = (listing or {}).get("data")
        if not isinstance(data, list):
            raise self.invalid("line_items has no data list")
        return [_item(line) for line in data if isinstance(line, dict)]

    async def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> dict[str, Any] | None:
        """The object at `path`; None when Stripe says there is no such object."""
        headers = {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}
        if self.settings.stripe_version:
            headers["Stripe-Version"] = self.settings.stripe_version
        response = await self.request("GET", f"{self.base}{path}", params=params, headers=headers)
        if response.status_code == 200:
            body = self.json_body(response)
            if not isinstance(body, dict):
                raise self.invalid("the body is not a JSON object")
            return body
        error = _error(response)
        if response.status_code == 404 and error.get("code") == "resource_missing":
            return None
        raise self.refused(response, error.get("message"))


def minor_to_major(amount: Any, currency: Any) -> float | None:
    """An amount in the currency's minor units (cents) in major units."""
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        return None
    code = currency.lower() if isinstance(currency, str) else ""
    if code in _ZERO_DECIMAL:
        return float(amount)
    digits = 3 if code in _THREE_DECIMAL else 2
    return round(float(amount) / (10.0**digits), digits)


def _item(line: dict[str, Any]) -> dict[str, Any]:
    price: dict[str, Any] = line["price"] if isinstance(line.get("price"), dict) else {}
    product = price.get("product")
    product_obj: dict[str, Any] = product if isinstance(product, dict) else {}
    currency = line.get("currency") or price.get("currency")
    quantity = line.get("quantity")
    unit = minor_to_major(price.get("unit_amount"), currency)
    if unit is None and isinstance(quantity, int) and quantity > 0:
        # Prices without a unit amount (tiered, customer-chosen): what this line costs each.
        subtotal = minor_to_major(line.get("amount_subtotal"), currency)
        unit = round(subtotal / quantity, 3) if subtotal is not None else None
    images = product_obj.get("images")
    return item(
        product_id=product_obj.get("id") if product_obj else (product if isinstance(product, str) else None),
        variant_id=price.get("id"),
        name=line.get("description") or product_obj.get("name"),
        variant=price.get("nickname"),
        price=unit,
        quantity=quantity,
        url=product_obj.get("url"),
        image_url=images[0] if isinstance(images, list) and images else None,
    )


def _time(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _error(response: httpx.Response) -> dict[str, Any]:
    """Stripe's `{"error": {"type", "code", "message", ...}}`; empty when the body is not that."""
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}
