"""What every destination is: settings, limits, and `deliver(effect)` raising classified errors.

A destination only speaks its vendor's HTTP API. What happens after a failure (retry when, give
up when, pause the destination) is decided in one place, `tidings.delivery.dispatcher`, from the
error classes it raises: RetryableDeliveryError (with the vendor's Retry-After),
PermanentDeliveryError (with the vendor's own error text), DestinationAuthError.

Each destination marks its action handlers with `@handles(action)`; `deliver` dispatches on that
table and `actions` is derived from it, so the list of what a destination does is written once.
`KeyRing` is the one implementation of API-key rotation (`api_key` + `next_api_key`) that every
API-key destination uses. The payload each action carries is documented in
docs/destinations/README.md ("Payloads by action").
"""

from __future__ import annotations

import email.utils
import logging
import time
from abc import ABC
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import Field, SecretStr

from tidings.clock import Clock, SystemClock
from tidings.configmodel import ConfigModel, Duration
from tidings.delivery.effects import ACTIONS, Effect, Receipt
from tidings.exceptions import DestinationAuthError, PermanentDeliveryError, RetryableDeliveryError

log = logging.getLogger(__name__)


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
Handler = Callable[[Any, Effect], Awaitable[Receipt]]
H = TypeVar("H", bound=Handler)
_MARK = "_tidings_handles"


def handles(*actions: str) -> Callable[[H], H]:
    """Mark a method `async (self, effect) -> Receipt` as the destination's handler of `actions`."""
    unknown = sorted(set(actions) - set(ACTIONS))
    if not actions or unknown:
        raise TypeError(f"handles() takes actions among {', '.join(ACTIONS)}; not {unknown or 'none'}")

    def mark(method: H) -> H:
        setattr(method, _MARK, (*getattr(method, _MARK, ()), *actions))
        return method

    return mark


class Destination(ABC, Generic[S]):
    kind: ClassVar[str]
    settings_model: ClassVar[type[DestinationSettings]]
    # action -> name of the method that does it, gathered from the `@handles` marks
    handlers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    actions: ClassVar[frozenset[str]]  # derived from `handlers` when the class marks any
    default_base_url: ClassVar[str] = ""
    default_limits: ClassVar[Limits] = Limits()
    # Actions whose repetition is harmless (an upsert, a delete, an event with the vendor's
    # dedupe key). After a crash left the outcome unknown, these are retried; others are parked
    # in the dead letters for an operator, since sending twice is worse than asking.
    idempotent_actions: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a subclass's handler replaces its base's
            own: dict[str, str] = {}
            for attribute, value in vars(klass).items():
                for action in getattr(value, _MARK, ()):
                    if action in own:
                        raise TypeError(f"{klass.__name__}: {own[action]} and {attribute} handle {action}")
                    own[action] = attribute
            found.update(own)
        if found:
            cls.handlers = MappingProxyType(found)
            cls.actions = frozenset(found)
        extra = cls.__dict__.get("idempotent_actions", frozenset()) - getattr(cls, "actions", frozenset())
        if extra:
            raise TypeError(f"{cls.__name__}: idempotent_actions {sorted(extra)} are not among its actions")

    def __init__(
        self, name: str, settings: S, http: httpx.AsyncClient, *, clock: Clock | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.http = http
        self.clock: Clock = clock or SystemClock()

    @property
    def base_url(self) -> str:
        return (self.settings.base_url or self.default_base_url).rstrip("/")

    @property
    def limits(self) -> Limits:
        return self.settings.limits or self.default_limits

    async def deliver(self, effect: Effect) -> Receipt:
        """Make the vendor do `effect`, or raise a DeliveryError saying why not."""
        method = self.handlers.get(effect.action)
        if method is None:
            does = ", ".join(sorted(self.actions)) or "none"
            raise PermanentDeliveryError(
                f"{self.kind} does not support {effect.action!r} (it supports: {does})"
            )
        handler: Callable[[Effect], Awaitable[Receipt]] = getattr(self, method)
        return await handler(effect)

    # helpers for subclasses --------------------------------------------------------------

    async def request(self, method: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
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


def refused_credentials(response: httpx.Response) -> bool:
    """What most vendors answer to a key they do not (or no longer) accept."""
    return response.status_code in (401, 403)


class KeyRing:
    """An API key and the one being rotated in (`api_key`, `next_api_key`).

    When the vendor refuses the key in use, the other is tried at once; the one that works is used
    from then on. So a new key is added, the old one revoked at the vendor, and the settings tidied
    later, without the destination ever pausing. Keys are logged by their setting's name only.
    """

    def __init__(self, destination: str, kind: str, keys: Sequence[tuple[str, SecretStr | None]]) -> None:
        self.destination = destination
        self.kind = kind
        self._keys = [(name, key) for name, key in keys if key is not None]
        if not self._keys:
            raise ValueError(f"{kind}: no API key")
        self._index = 0  # the key in use

    @property
    def in_use(self) -> str:
        """The setting name of the key in use (`api_key` or `next_api_key`)."""
        return self._keys[self._index][0]

    @property
    def key(self) -> str:
        """The key in use, for calls that cannot be retried with another."""
        return self._keys[self._index][1].get_secret_value()

    async def send(
        self,
        call: Callable[[str], Awaitable[httpx.Response]],
        refused: Callable[[httpx.Response], bool] = refused_credentials,
    ) -> httpx.Response:
        """`call(key)` with the key in use; on a refusal, once with each other key.

        Returns the last answer: the vendor's answer to an accepted key, or the refusal of every
        key (the caller turns that into a DestinationAuthError, which pauses the destination).
        A key is adopted only when the vendor's answer shows it passed authentication: not on a
        429 or 5xx, which may come before the key is even looked at.
        """
        index = self._index
        tried = {index}
        while True:
            answer = await call(self._keys[index][1].get_secret_value())
            if not refused(answer):
                status = answer.status_code
                if index != self._index and status < 500 and status != 429:
                    self._index = index
                    self._log(logging.INFO, "%s accepted %s; using it from now on", self._keys[index][0])
                return answer
            untried = [i for i in range(len(self._keys)) if i not in tried]
            if not untried:
                return answer
            following = self._index if self._index in untried else untried[0]
            names = self._keys[index][0], self._keys[following][0]
            self._log(logging.WARNING, "%s refused %s; trying %s", *names)
            tried.add(following)
            index = following

    def _log(self, level: int, message: str, *names: str) -> None:
        """Names of keys only (`api_key`, `next_api_key`), never their values."""
        extra = {"action": "key_rotation", "destination": self.destination}
        extra["key"] = names[-1]  # the key tried next, or now in use
        if len(names) == 2:
            extra["refused"] = names[0]
        log.log(level, message, self.kind, *names, extra=extra)


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
