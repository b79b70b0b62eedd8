"""What every receiver is: settings, a request in, a verified and split reception out.

A receiver is pure and synchronous: it checks the request's authenticity on the raw bytes, works
out the dedupe keys of what it carries, and splits batches into items. Storing is not its
business; the group committer does that for all receivers alike.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import Field, SecretStr, field_validator

from tidings.clock import Clock
from tidings.configmodel import ConfigModel, Duration, SecretList
from tidings.exceptions import MalformedPayload, UnsupportedMediaType
from tidings.mapping.rules import MappingRule
from tidings.store.codec import json_loads


class SourceSettings(ConfigModel):
    """Settings every source kind shares."""

    kind: str
    max_body_bytes: int | None = Field(default=None, gt=0)
    # Mapping to canonical events: these rules first, then (unless `presets: false`) the kind's own.
    mappings: list[MappingRule] = []
    presets: bool = True


class LookupSettings(ConfigModel):
    """What every source's live lookup (tidings.lookups) takes: where its API is, how long to wait."""

    base_url: str | None = None  # instead of the vendor's own host: a proxy or a local simulator
    timeout: Duration = timedelta(seconds=10)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {url!r} must start with http:// or https://")
        return url.rstrip("/") if url is not None else None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: timedelta) -> timedelta:
        if timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        return timeout


class SignedSourceSettings(SourceSettings):
    """A source whose sender signs with a shared secret: a list, so one can be rotated in."""

    secrets: SecretList

    @field_validator("secrets")
    @classmethod
    def _present(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        if not secrets:
            raise ValueError("at least one secret is required")
        if any(not s.get_secret_value().strip() for s in secrets):
            raise ValueError("a secret must not be empty")
        return secrets


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundRequest:
    """An HTTP request as received, body read in full (within the size limit)."""

    source: str
    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    received_at: datetime

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def media_type(self) -> str:
        return media_type_of(self.headers)


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One event inside a request. It is a duplicate if any of its keys was seen before."""

    keys: tuple[str, ...]
    topic: str | None = None
    payload: bytes | None = None  # None means "the whole request body"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reception:
    """What a receiver made of a verified request."""

    items: Sequence[Item]
    headers: Mapping[str, str] = field(default_factory=dict)
    flagged: str | None = None  # authentic but not interpretable: why
    stored_body: bytes | None = None  # what to keep of the body instead, e.g. with a credential removed
    stored_url: str | None = None  # likewise for the URL (a key in its query string)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What the inbox did with a reception."""

    accepted: int
    duplicates: int
    flagged: bool = False
    ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The HTTP answer a sender expects for an accepted request."""

    status: int
    body: bytes
    media_type: str = "application/json"


S = TypeVar("S", bound=SourceSettings)


class Receiver(ABC, Generic[S]):
    """One kind of sender. Subclasses set `kind`, `settings_model` and implement `receive`."""

    kind: ClassVar[str]
    settings_model: ClassVar[type[SourceSettings]]
    media_types: ClassVar[frozenset[str]] = frozenset({"application/json"})
    kept_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, settings: S, clock: Clock) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock

    @functools.cached_property
    def keys(self) -> list[bytes]:
        """The configured secrets as HMAC keys (for signed kinds)."""
        secrets: list[SecretStr] = getattr(self.settings, "secrets", [])
        return [s.get_secret_value().encode() for s in secrets]

    def check_media_type(self, media_type: str) -> None:
        """Refuse a content type this sender never uses (415), before reading the body."""
        if media_type not in self.media_types:
            expected = ", ".join(sorted(self.media_types))
            got = media_type or "none"
            raise UnsupportedMediaType(f"content type {got} is not accepted here; expected {expected}")

    @abstractmethod
    def receive(self, request: InboundRequest) -> Reception:
        """Verify, extract dedupe keys, split. Raise an IngestError to refuse the request."""

    def reply(self, reception: Reception, outcome: Outcome) -> Reply:
        body = {
            "status": "flagged" if outcome.flagged else "accepted",
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
        }
        return Reply(status=200, body=json.dumps(body).encode())

    # helpers for subclasses -------------------------------------------------------------

    def keep_headers(self, request: InboundRequest) -> dict[str, str]:
        return {h: v for h in self.kept_headers if (v := request.header(h)) is not None}

    def flag(self, request: InboundRequest, reason: str, topic: str | None = None) -> Reception:
        """An authentic request we cannot interpret: stored and flagged, never dropped.

        It is keyed on a hash of its body so a sender's retry of the same bytes is a duplicate.
        """
        return Reception(
            items=[Item(keys=(content_key(request.body),), topic=topic)],
            headers=self.keep_headers(request),
            flagged=reason,
        )


def media_type_of(headers: Mapping[str, str]) -> str:
    return (headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def content_key(body: bytes) -> str:
    """A dedupe key for senders that give no id of their own."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def parse_json(body: bytes) -> Any:
    """Decode JSON or raise MalformedPayload naming the position of the problem."""
    try:
        return json_loads(body)
    except UnicodeDecodeError as exc:
        raise MalformedPayload("body is not UTF-8", code="malformed_json") from exc
    except json.JSONDecodeError as exc:
        raise MalformedPayload(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", code="malformed_json"
        ) from exc


def compact(value: Any) -> bytes:
    """The stored form of a JSON item split out of a batch."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
