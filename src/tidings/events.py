"""The canonical customer event: what every stage after ingest speaks.

Event names follow Segment's e-commerce spec where one exists (`Product Viewed`, `Product Added`,
`Product Removed`, `Cart Viewed`, `Checkout Started`, `Order Completed`, `Order Refunded`,
`Order Cancelled`), plus `Identify` (traits only), `Consent Changed` and `Privacy Request`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers

PRODUCT_VIEWED = "Product Viewed"
PRODUCT_ADDED = "Product Added"
PRODUCT_REMOVED = "Product Removed"
CART_VIEWED = "Cart Viewed"
CART_UPDATED = "Cart Updated"
CHECKOUT_STARTED = "Checkout Started"
ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"
ORDER_CANCELLED = "Order Cancelled"
IDENTIFY = "Identify"
CONSENT_CHANGED = "Consent Changed"
PRIVACY_REQUEST = "Privacy Request"

CONSENT_STATES = ("subscribed", "unsubscribed", "unknown")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class IdentityError(ValueError):
    """An identifier that cannot be normalised (not an email, not a phone number, empty)."""


def normalise_identity(kind: str, value: object) -> str:
    """The one spelling of an identifier, so the same person matches whatever the source wrote."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise IdentityError(f"{kind} is empty")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if kind == "email":
        text = text.lower()
        if not _EMAIL.match(text):
            raise IdentityError(f"not an email address: {text!r}")
        return text
    if kind == "phone":
        try:
            number = phonenumbers.parse(text, None if text.startswith("+") else "US")
        except phonenumbers.NumberParseException as exc:
            raise IdentityError(f"not a phone number: {text!r}") from exc
        if not phonenumbers.is_possible_number(number):
            raise IdentityError(f"not a possible phone number: {text!r}")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return text


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    """`email`, `phone`, `anonymous_id`, `user_id`, or a per-source id like `shopify:customer`."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerEvent:
    name: str
    identities: tuple[Identity, ...]
    occurred_at: datetime
    received_at: datetime
    source: str
    inbox_id: int  # the stored item it came from: the raw reference, and its arrival order
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, str] = field(default_factory=dict)  # channel -> subscribed | unsubscribed

    @property
    def version(self) -> tuple[datetime, int]:
        """Later `occurred_at` wins; at the same instant, the later arrival wins."""
        return (self.occurred_at, self.inbox_id)


def parse_time(value: object) -> datetime:
    """ISO 8601 text, or unix time in seconds or milliseconds, as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10_000_000_000 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_time(int(text))
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"not a timestamp: {value!r}") from exc
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"not a timestamp: {value!r}")
