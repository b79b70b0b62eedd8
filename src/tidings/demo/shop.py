"""The demo's shop: customers, carts and orders, told to tidings as Shopify tells it.

Each happening becomes the webhook Shopify would send (the REST Admin resource of its topic,
shaped like tests/fixtures/shopify and examples/abandoned-cart/events.jsonl), signed with the
app's client secret (`X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 of the raw body) and POSTed to
tidings' real endpoint. The same happenings are mirrored into a `ShopifySimulator`, so the
flow's live lookup (Shopify's GraphQL Admin API) gives the answer the real shop would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from tidings.testing import ShopifySimulator

SHOP_DOMAIN = "harbour-pottery.myshopify.com"
API_VERSION = "2025-07"
CURRENCY = "EUR"


@dataclass(frozen=True, slots=True)
class Product:
    title: str
    variant: str | None
    sku: str
    price: str  # Shopify writes money as text
    product_id: int
    variant_id: int


MUG = Product("Stoneware Mug", "Sand", "MUG-SAND", "12.50", 8123456789012, 44123456789012)
TOWEL = Product("Linen Tea Towel", None, "TOWEL-LINEN", "15.00", 8123456789013, 44123456789013)
SALT_PIG = Product("Salt Pig", "Ash", "PIG-ASH", "22.00", 8123456789014, 44123456789014)
CUP = Product("Espresso Cup", "Slate", "CUP-SLATE", "9.00", 8123456789015, 44123456789015)

Cart = list[tuple[Product, int]]


def describe(cart: Cart) -> str:
    return ", ".join(f"{n} x {p.title}" for p, n in cart) + f" ({_total(cart)} {CURRENCY})"


@dataclass(slots=True)
class Customer:
    first_name: str
    last_name: str
    customer_id: int
    checkout_id: int
    accepts_marketing: bool = True
    consent: str = "subscribed"
    started_at: datetime | None = None  # when the checkout began
    order: dict[str, Any] | None = None  # the orders/create payload, once paid

    @property
    def email(self) -> str:
        return f"{self.first_name.lower()}@example.com"

    @property
    def token(self) -> str:
        """The checkout token: what the preset calls checkout_id, and the flow's run key."""
        return f"{self.first_name.lower()}-checkout-{self.checkout_id}"

    @property
    def cart_token(self) -> str:
        return f"{self.first_name.lower()}-cart-{self.checkout_id}"


class Shop:
    """Sends Shopify's webhooks for what happens in the shop, and keeps the simulator in step."""

    def __init__(self, url: str, secret: str, simulator: ShopifySimulator, http: httpx.AsyncClient) -> None:
        self.url = url  # tidings' webhook endpoint for this source
        self.secret = secret.encode()
        self.simulator = simulator
        self.http = http
        self.sent: list[tuple[str, int]] = []  # (topic, tidings' HTTP status)

    async def webhook(self, topic: str, body: dict[str, Any], now: datetime) -> int:
        raw = json.dumps(body, separators=(",", ":")).encode()
        signature = base64.b64encode(hmac.new(self.secret, raw, hashlib.sha256).digest()).decode()
        response = await self.http.post(
            self.url,
            content=raw,
            headers={
                "content-type": "application/json",
                "x-shopify-topic": topic,
                "x-shopify-hmac-sha256": signature,
                "x-shopify-shop-domain": SHOP_DOMAIN,
                "x-shopify-api-version": API_VERSION,
                "x-shopify-webhook-id": str(uuid.uuid4()),
                "x-shopify-event-id": str(uuid.uuid4()),
                "x-shopify-triggered-at": _iso(now),
                "user-agent": "Shopify-Captain-Hook",
            },
        )
        self.sent.append((topic, response.status_code))
        return response.status_code

    # ------------------------------------------------------------------ what happens

    async def add_to_cart(self, cart_token: str, cart: Cart, now: datetime) -> int:
        """An anonymous visitor puts things in a cart (carts/create: no customer yet)."""
        return await self.webhook("carts/create", cart_payload(cart_token, cart, now), now)

    async def start_checkout(self, customer: Customer, cart: Cart, now: datetime) -> int:
        customer.started_at = now
        self.simulator.add_checkout(
            _lines(cart),
            currency=CURRENCY,
            token=customer.token,
            cart_token=customer.cart_token,
            email=customer.email,
        )
        return await self.webhook("checkouts/create", checkout_payload(customer, cart, now, now), now)

    async def update_checkout(self, customer: Customer, cart: Cart, now: datetime) -> int:
        self.simulator.set_items(customer.token, _lines(cart))
        started = customer.started_at or now
        return await self.webhook("checkouts/update", checkout_payload(customer, cart, started, now), now)

    def pay(self, customer: Customer, cart: Cart, now: datetime) -> None:
        """The customer pays: Shopify knows the order at once (the webhook may come later)."""
        order = self.simulator.complete_checkout(customer.token)
        customer.order = order_payload(customer, cart, order.id, order.name, now)

    async def order_webhook(self, customer: Customer, now: datetime) -> int:
        assert customer.order is not None, "pay() first"
        return await self.webhook("orders/create", customer.order, now)

    async def unsubscribe(self, customer: Customer, now: datetime) -> int:
        customer.consent = "unsubscribed"
        return await self.webhook("customers/update", customer_payload(customer, now), now)


# --------------------------------------------------------------------------- payloads


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(value: float) -> str:
    return f"{value:.2f}"


def _total(cart: Cart) -> str:
    return _money(sum(float(p.price) * n for p, n in cart))


def _tax(cart: Cart) -> str:
    total = float(_total(cart))
    return _money(total - total / 1.2)  # prices include 20% VAT


def _lines(cart: Cart) -> list[dict[str, Any]]:
    return [
        {
            "title": p.title,
            "variant_title": p.variant,
            "sku": p.sku,
            "price": p.price,
            "quantity": n,
            "product_id": p.product_id,
            "variant_id": p.variant_id,
        }
        for p, n in cart
    ]


def _price_set(amount: str) -> dict[str, Any]:
    money = {"amount": amount, "currency_code": CURRENCY}
    return {"shop_money": money, "presentment_money": dict(money)}


def _customer(customer: Customer, at: datetime) -> dict[str, Any]:
    return {
        "id": customer.customer_id,
        "email": customer.email,
        "created_at": "2026-01-12T09:30:00Z",
        "updated_at": _iso(at),
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "state": "enabled",
        "verified_email": True,
        "phone": None,
        "currency": CURRENCY,
        "tags": "",
        "email_marketing_consent": {
            "state": customer.consent,
            "opt_in_level": "single_opt_in",
            "consent_updated_at": _iso(at),
        },
        "admin_graphql_api_id": f"gid://shopify/Customer/{customer.customer_id}",
    }


def cart_payload(token: str, cart: Cart, now: datetime) -> dict[str, Any]:
    lines = []
    for p, n in cart:
        line_price = _money(float(p.price) * n)
        lines.append(
            {
                "id": p.variant_id,
                "properties": {},
                "quantity": n,
                "variant_id": p.variant_id,
                "key": f"{p.variant_id}:{token[-8:]}",
                "discounted_price": p.price,
                "discounts": [],
                "gift_card": False,
                "grams": 400,
                "line_price": line_price,
                "original_line_price": line_price,
                "original_price": p.price,
                "price": p.price,
                "product_id": p.product_id,
                "sku": p.sku,
                "taxable": True,
                "title": f"{p.title} - {p.variant}" if p.variant else p.title,
                "total_discount": "0.00",
                "vendor": "Harbour Pottery",
                "price_set": _price_set(p.price),
                "line_price_set": _price_set(line_price),
            }
        )
    return {
        "id": token,
        "token": token,
        "line_items": lines,
        "note": None,
        "updated_at": _iso(now),
        "created_at": _iso(now),
    }


def checkout_payload(customer: Customer, cart: Cart, created: datetime, now: datetime) -> dict[str, Any]:
    total = _total(cart)
    return {
        "id": customer.checkout_id,
        "token": customer.token,
        "cart_token": customer.cart_token,
        "email": customer.email,
        "gateway": None,
        "buyer_accepts_marketing": customer.accepts_marketing,
        "created_at": _iso(created),
        "updated_at": _iso(now),
        "landing_site": "/collections/kitchen",
        "note": None,
        "note_attributes": [],
        "referring_site": "",
        "shipping_lines": [],
        "taxes_included": True,
        "currency": CURRENCY,
        "presentment_currency": CURRENCY,
        "completed_at": None,
        "closed_at": None,
        "phone": None,
        "customer_locale": "en-GB",
        "line_items": [
            {
                "key": f"{p.variant_id}:{customer.token[-8:]}",
                "fulfillment_service": "manual",
                "gift_card": False,
                "grams": 400,
                "presentment_title": p.title,
                "presentment_variant_title": p.variant or "",
                "product_id": p.product_id,
                "quantity": n,
                "requires_shipping": True,
                "sku": p.sku,
                "taxable": True,
                "title": p.title,
                "variant_id": p.variant_id,
                "variant_title": p.variant or "",
                "variant_price": p.price,
                "vendor": "Harbour Pottery",
                "line_price": _money(float(p.price) * n),
                "price": p.price,
            }
            for p, n in cart
        ],
        "name": f"#{customer.checkout_id}",
        "abandoned_checkout_url": (
            f"https://harbour-pottery.example/checkouts/{customer.token}/recover?key={customer.checkout_id}"
        ),
        "discount_codes": [],
        "tax_lines": [],
        "source_name": "web",
        "buyer_accepts_sms_marketing": False,
        "sms_marketing_phone": None,
        "total_discounts": "0.00",
        "total_line_items_price": total,
        "total_price": total,
        "total_tax": _tax(cart),
        "subtotal_price": total,
        "total_duties": None,
        "billing_address": None,
        "shipping_address": None,
        "customer": _customer(customer, created),
    }


def order_payload(customer: Customer, cart: Cart, order_id: int, name: str, now: datetime) -> dict[str, Any]:
    total = _total(cart)
    return {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "buyer_accepts_marketing": customer.accepts_marketing,
        "cancel_reason": None,
        "cancelled_at": None,
        "cart_token": customer.cart_token,
        "checkout_id": customer.checkout_id,
        "checkout_token": customer.token,
        "closed_at": None,
        "confirmed": True,
        "contact_email": customer.email,
        "created_at": _iso(now),
        "currency": CURRENCY,
        "customer_locale": "en-GB",
        "discount_codes": [],
        "email": customer.email,
        "financial_status": "paid",
        "fulfillment_status": None,
        "name": name,
        "note": None,
        "order_status_url": f"https://harbour-pottery.example/orders/{order_id}/authenticate",
        "phone": None,
        "presentment_currency": CURRENCY,
        "processed_at": _iso(now),
        "source_name": "web",
        "subtotal_price": total,
        "tags": "",
        "taxes_included": True,
        "test": False,
        "token": uuid.uuid5(uuid.NAMESPACE_URL, f"order:{order_id}").hex,
        "total_discounts": "0.00",
        "total_line_items_price": total,
        "total_price": total,
        "total_shipping_price_set": _price_set("0.00"),
        "total_tax": _tax(cart),
        "updated_at": _iso(now),
        "customer": _customer(customer, now),
        "line_items": [
            {
                "id": order_id * 10 + i,
                "fulfillable_quantity": n,
                "fulfillment_service": "manual",
                "gift_card": False,
                "grams": 400,
                "name": f"{p.title} - {p.variant}" if p.variant else p.title,
                "price": p.price,
                "price_set": _price_set(p.price),
                "product_exists": True,
                "product_id": p.product_id,
                "properties": [],
                "quantity": n,
                "requires_shipping": True,
                "sku": p.sku,
                "taxable": True,
                "title": p.title,
                "total_discount": "0.00",
                "variant_id": p.variant_id,
                "variant_title": p.variant or "",
                "vendor": "Harbour Pottery",
            }
            for i, (p, n) in enumerate(cart, start=1)
        ],
    }


def customer_payload(customer: Customer, now: datetime) -> dict[str, Any]:
    return {
        **_customer(customer, now),
        "orders_count": 0,
        "total_spent": "0.00",
        "note": None,
        "tax_exempt": False,
        "addresses": [],
        "default_address": None,
        "sms_marketing_consent": None,
    }
