"""Turning one stored inbox item into a CustomerEvent, by the first rule that matches."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jmespath.exceptions import JMESPathError

from tidings.events import CustomerEvent, Identity, IdentityError, normalise_identity, parse_time
from tidings.mapping.rules import MappingRule, evaluate
from tidings.store.codec import json_loads


class MappingError(Exception):
    """The item matched a rule but could not be made into an event (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Unmapped:
    """No rule matched the item's topic, or the matching rule says `skip`."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredItem:
    """What the processor hands the mapper: an inbox row with its body."""

    inbox_id: int
    source: str
    topic: str | None
    body: bytes
    headers: Mapping[str, str]
    received_at: datetime


_SUBSCRIBED = {"subscribed", "true", "yes", "opted_in", "confirmed", "single_opt_in", "double_opt_in"}
_UNSUBSCRIBED = {
    "unsubscribed",
    "not_subscribed",
    "false",
    "no",
    "opted_out",
    "redacted",
    "invalid",
    "cleaned",
    "bounced",
    "spam",
}


def consent_state(value: object) -> str | None:
    """`subscribed`, `unsubscribed`, or None when the value says nothing definite."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _SUBSCRIBED:
        return "subscribed"
    if text in _UNSUBSCRIBED:
        return "unsubscribed"
    return None


class Mapper:
    """The rules of one source: the user's first, then the built-in preset for its kind."""

    def __init__(self, rules: Sequence[MappingRule]) -> None:
        self.rules = tuple(rules)

    def rule_for(self, topic: str | None, document: dict[str, Any]) -> MappingRule | None:
        for rule in self.rules:
            if not any(fnmatch.fnmatchcase(topic or "", pattern) for pattern in rule.topics):
                continue
            if rule.when is not None and not _eval(rule.when, document, "when"):
                continue
            return rule
        return None

    def map(self, item: StoredItem) -> CustomerEvent | Unmapped:
        try:
            payload = json_loads(item.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MappingError(f"body is not JSON: {exc}") from exc
        document = {
            "topic": item.topic,
            "payload": payload,
            "headers": dict(item.headers),
            "source": item.source,
            "received_at": item.received_at.isoformat(),
        }
        rule = self.rule_for(item.topic, document)
        if rule is None:
            return Unmapped(f"no mapping rule for topic {item.topic!r}")
        if rule.skip:
            return Unmapped(f"topic {item.topic!r} is skipped by its mapping rule")
        return self._apply(rule, item, document)

    def _apply(self, rule: MappingRule, item: StoredItem, document: dict[str, Any]) -> CustomerEvent:
        name = rule.event or _eval(rule.event_from or "", document, "event_from")
        if not isinstance(name, str) or not name:
            raise MappingError(f"event_from gave {name!r}, not an event name")
        occurred_at = item.received_at
        if rule.occurred_at is not None:
            raw = _eval(rule.occurred_at, document, "occurred_at")
            if raw is not None:
                try:
                    occurred_at = parse_time(raw)
                except ValueError as exc:
                    raise MappingError(f"occurred_at: {exc}") from exc
        identities = []
        for kind, expression in rule.identities.items():
            value = _eval(expression, document, f"identities.{kind}")
            # A list gives several identities of one kind (an email change: the old and the new).
            for one in value if isinstance(value, list) else [value]:
                if one is None or one == "":
                    continue
                try:
                    identities.append(Identity(kind, normalise_identity(kind, one)))
                except IdentityError:
                    continue  # a malformed address identifies no one; the other identities still may
        if not identities:
            raise MappingError(
                f"no identity found for {name!r} (tried {', '.join(rule.identities) or 'none'})"
            )
        consent = {}
        for channel, expression in rule.consent.items():
            state = consent_state(_eval(expression, document, f"consent.{channel}"))
            if state is not None:
                consent[channel] = state
        return CustomerEvent(
            name=name,
            identities=tuple(sorted(set(identities))),
            occurred_at=occurred_at,
            received_at=item.received_at,
            source=item.source,
            inbox_id=item.inbox_id,
            properties=_fields(rule.properties, document, "properties"),
            traits=_fields(rule.traits, document, "traits"),
            consent=consent,
        )


def _fields(expressions: Mapping[str, str] | str, document: dict[str, Any], section: str) -> dict[str, Any]:
    if isinstance(expressions, str):
        whole = _eval(expressions, document, section)
        if whole is None:
            return {}
        if not isinstance(whole, dict):
            raise MappingError(f"{section}: the expression gave {type(whole).__name__}, not an object")
        return {k: v for k, v in whole.items() if v is not None}
    out = {}
    for key, expression in expressions.items():
        value = _eval(expression, document, f"{section}.{key}")
        if value is not None:
            out[key] = value
    return out


def _eval(expression: str, document: dict[str, Any], where: str) -> Any:
    try:
        return evaluate(expression, document)
    except JMESPathError as exc:
        raise MappingError(f"{where}: {exc}") from exc
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # A few of JMESPath's own functions let Python's errors out on some values (`merge` of a
        # null): that event cannot be mapped, and must not stop the events behind it.
        raise MappingError(f"{where}: {type(exc).__name__}: {exc}") from exc
