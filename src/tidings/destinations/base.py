"""What every destination is: settings, limits, and `deliver(effect)` raising classified errors.

A destination only speaks its vendor's HTTP API. What happens after a failure (retry when, give
up when, pause the destination) is decided in one place, `tidings.delivery.dispatcher`, from the
error classes it raises: RetryableDeliveryError (with the vendor's Retry-After),
PermanentDeliveryError (with the vendor's own error text), DestinationAuthError.
"""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import Field

from tidings.configmodel import ConfigModel, Duration
from tidings.delivery.effects import Effect, Receipt
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError


class RateWindow(ConfigModel):
    """At most `requests` in any `per` window."""

    requests: int = Field(gt=0)
    per: Duration


class Limits(ConfigModel):
    """A destination's budget, enforced before sending (the vendor's documented limits by default)."""

    concurrency: int | None = Field(default=None, gt=0)
    windows: list[RateWindow] = []


class ProfileSync(ConfigModel):
    """Which profile traits go to which vendor fields; a change to one of them pushes the contact."""

    fields: dict[str, str] = {}  # vendor field -> JMESPath over {profile: {traits, consent, identities}}


class DestinationSettings(ConfigModel):
    kind: str
    base_url: str | None = None  # EU data centres, staging, local simulators
    timeout: Duration = timedelta(seconds=30)
    limits: Limits | None = None  # None: the vendor's documented limits
    profile_sync: ProfileSync | None = None


S = TypeVar("S", bound=DestinationSettings)


class Destination(ABC, Generic[S]):
    kind: ClassVar[str]
    settings_model: ClassVar[type[DestinationSettings]]
    actions: ClassVar[frozenset[str]]
    default_base_url: ClassVar[str] = ""
    default_limits: ClassVar[Limits] = Limits()
    # Actions whose repetition is harmless (an upsert, a delete, an event with the vendor's
    # dedupe key). After a crash left the outcome unknown, these are retried; others are parked
    # in the dead letters for an operator, since sending twice is worse than asking.
    idempotent_actions: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, settings: S, http: httpx.AsyncClient) -> None:
        self.name = name
        self.settings = settings
        self.http = http

    @property
    def base_url(self) -> str:
        return (self.settings.base_url or self.default_base_url).rstrip("/")

    @property
    def limits(self) -> Limits:
        return self.settings.limits or self.default_limits

    @abstractmethod
    async def deliver(self, effect: Effect) -> Receipt:
        """Make the vendor do `effect`, or raise a DeliveryError saying why not."""

    # helpers for subclasses --------------------------------------------------------------

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; transport failures and timeouts become retryable errors."""
        try:
            return await self.http.request(
                method, url, timeout=self.settings.timeout.total_seconds(), **kwargs
            )
        except httpx.TimeoutException as exc:
            raise RetryableDeliveryError(f"{self.kind}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RetryableDeliveryError(f"{self.kind}: {type(exc).__name__}: {exc}") from exc

    def check(self, response: httpx.Response, *, error_text: str | None = None) -> None:
        """Raise the error class a non-2xx answer means; the vendor's own words go with it."""
        status = response.status_code
        if status < 300:
            return
        text = error_text if error_text is not None else _excerpt(response)
        detail = f"{self.kind} answered {status}: {text}"
        if status == 429 or status >= 500 or status == 408:
            raise RetryableDeliveryError(detail, status=status, retry_after=retry_after(response.headers))
        if status in (401, 403):
            raise DestinationAuthError(detail, status=status)
        raise PermanentDeliveryError(detail, status=status)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `Retry-After` (seconds or an HTTP date) or an `X-RateLimit-Reset` epoch."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.replace(".", "", 1).isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value) if value else None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    reset = headers.get("x-ratelimit-reset")
    if reset and reset.isdigit():
        seconds = float(reset)
        return max(0.0, seconds - time.time()) if seconds > 1_000_000_000 else seconds
    return None


def _excerpt(response: httpx.Response, limit: int = 500) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "") if text else response.reason_phrase
