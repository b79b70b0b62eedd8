"""What a lookup answers (`CartState`), how it fails (`LookupUnavailable`), and the HTTP plumbing.

Only two outcomes reach the caller: an answer (a state, or None for "the source has no such
cart"), or `LookupUnavailable`, which means "ask again later". Every way a vendor can fail to
answer (timeout, refused connection, 5xx, 429 or a throttled GraphQL answer, a refused
credential, a body that is not what the API documents) is the second, so a flow never mistakes
an outage for "not bought".
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx

from tidings.destinations.base import retry_after as parse_retry_after
from tidings.exceptions import TidingsError

# The keys of one canonical item, as the presets emit them (Shopify's checkout rule) plus the
# links a reminder shows. Every item has all of them, None where the source does not say, so a
# template can test `item.image_url` without tripping over a missing key.
ITEM_KEYS = ("product_id", "variant_id", "sku", "name", "variant", "price", "quantity", "url", "image_url")

Reason = Literal["timeout", "network", "throttled", "auth", "server", "invalid"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CartState:
    completed: bool  # bought: the flow must not send
    exists: bool = True  # False: the source no longer knows it (deleted/expired/emptied)
    items: list[dict[str, Any]] | None = None  # canonical items (ITEM_KEYS); None: not known
    value: float | None = None
    currency: str | None = None
    checkout_url: str | None = None
    updated_at: datetime | None = None


class LookupUnavailable(TidingsError):
    """The source could not answer now (timeout, 5xx, 429, auth): the caller retries later."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason = "server",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after  # seconds the vendor asked us to wait, when it said


class CartLookup(ABC):
    @abstractmethod
    async def cart(self, cart_id: str) -> CartState | None:
        """The cart's current state at the source; None when the source has no such cart."""


def item(**values: Any) -> dict[str, Any]:
    """A canonical item: every key of ITEM_KEYS, None where not given."""
    unknown = set(values) - set(ITEM_KEYS)
    if unknown:
        raise TypeError(f"not canonical item keys: {sorted(unknown)}")
    return {key: values.get(key) for key in ITEM_KEYS}


class HttpLookup(CartLookup):
    """A lookup over HTTP: one timeout per call, transport failures made `LookupUnavailable`."""

    vendor: ClassVar[str]

    def __init__(self, source: str, http: httpx.AsyncClient, *, timeout: float) -> None:
        self.source = source
        self.http = http
        self.timeout = timeout

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, url, timeout=self.timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise LookupUnavailable(
                f"{self.where}: no answer within {self.timeout:g}s ({type(exc).__name__})", reason="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise LookupUnavailable(f"{self.where}: {type(exc).__name__}: {exc}", reason="network") from exc

    @property
    def where(self) -> str:
        return f"source {self.source!r} ({self.vendor} lookup)"

    def refused(self, response: httpx.Response, text: str | None = None) -> LookupUnavailable:
        """The error a non-success answer means; the vendor's own words go with it."""
        status = response.status_code
        detail = f"{self.where}: {self.vendor} answered {status}: {text or excerpt(response)}"
        if status in (401, 403):
            return LookupUnavailable(detail, reason="auth", status=status)
        if status == 429:
            return LookupUnavailable(
                detail, reason="throttled", status=status, retry_after=parse_retry_after(response.headers)
            )
        return LookupUnavailable(
            detail, reason="server", status=status, retry_after=parse_retry_after(response.headers)
        )

    def json_body(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LookupUnavailable(
                f"{self.where}: {self.vendor} answered {response.status_code} with a body that is not JSON",
                reason="invalid",
                status=response.status_code,
            ) from exc

    def invalid(self, what: str) -> LookupUnavailable:
        return LookupUnavailable(f"{self.where}: unexpected answer: {what}", reason="invalid")


def excerpt(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "") if text else response.reason_phrase


def to_float(value: Any) -> float | None:
    """A money amount as the vendor writes it (Shopify: "12.50") as a number; None if not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
