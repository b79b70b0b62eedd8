"""Applying canonical events to profiles, inside the processor's transaction.

Every write here is a merge by version, so the result does not depend on arrival order:
- a trait keeps the value of the event with the greatest (occurred_at, inbox id); re-applying the
  same event (a replay) changes nothing, and a late, older event never overwrites a newer value;
- consent per channel likewise, with `unsubscribed` winning a tie, so an older event never undoes
  an unsubscribe;
- aggregate traits (sum, count, max, min) are recomputed from the customer's event log.
Two profiles that one event shows to be the same person are merged into the older one (lowest id),
deterministically, and the merge is recorded.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, tuple_, update

from tidings.events import CustomerEvent, Identity
from tidings.mapping.rules import evaluate
from tidings.profiles.traits import AGGREGATES, TraitRule
from tidings.store.schema import events, identities, profile_merges, profiles, timeline

Version = list[Any]  # [occurred_at as fixed-width UTC text, inbox id]: compares as a tuple


def stamp(when: datetime) -> str:
    """Fixed-width UTC text, so versions compare correctly as strings on every backend."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _newer(a: Version, b: Version | None) -> bool:
    return b is None or tuple(a) >= tuple(b)


@dataclass
class Profile:
    id: int
    traits: dict[str, Any]
    versions: dict[str, Version]
    consent: dict[str, dict[str, Any]]
    changed: bool = False
    notes: list[dict[str, Any]] = field(default_factory=list)  # timeline rows to write


class ProfileWriter:
    """Applies events within one open transaction (`conn`)."""

    def __init__(self, conn: Connection, computed: Mapping[str, Sequence[TraitRule]], now: datetime) -> None:
        self.conn = conn
        self.computed = computed
        self.now = now
        self.lock = conn.dialect.name == "postgresql"

    # ------------------------------------------------------------------ public

    def apply(self, event: CustomerEvent) -> tuple[int, int]:
        """Apply `event`; return (profile id, event id)."""
        profile = self._profile_for(event)
        event_id, first_time = self._record_event(profile.id, event)
        version: Version = [stamp(event.occurred_at), event.inbox_id]
        if first_time:
            self._note(
                profile, event, "event", None, None, {"name": event.name, "source": event.source}, event_id
            )
        for name, value in event.traits.items():
            self._set(profile, name, value, version, event, event_id)
        for channel, state in event.consent.items():
            self._consent(profile, channel, state, version, event, event_id)
        self._computed(profile, event, version, event_id)
        self._save(profile)
        return profile.id, event_id

    # ------------------------------------------------------------------ identity

    def lock_profiles_of(self, batch: Sequence[CustomerEvent]) -> None:
        """On PostgreSQL, lock every profile the batch will touch, in id order, up front.

        Two processors applying batches that share customers then queue behind each other
        instead of deadlocking (each would otherwise lock profiles in its own event order).
        """
        if not self.lock or not batch:
            return
        known = self._known({(i.kind, i.value) for e in batch for i in e.identities})
        ids = sorted(set(known.values()))
        if ids:
            self.conn.execute(
                select(profiles.c.id).where(profiles.c.id.in_(ids)).order_by(profiles.c.id).with_for_update()
            ).all()

    def _known(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        if not keys:
            return {}
        rows = self.conn.execute(
            select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                tuple_(identities.c.kind, identities.c.value).in_(sorted(keys))
            )
        )
        return {(r.kind, r.value): r.profile_id for r in rows}

    def _profile_for(self, event: CustomerEvent) -> Profile:
        keys = [(i.kind, i.value) for i in event.identities]
        known = self._known(set(keys))
        ids = sorted(set(known.values()))
        if not ids:
            pid = self._insert(
                insert(profiles).values(
                    created_at=self.now, updated_at=self.now, traits={}, trait_versions={}, consent={}
                )
            )
            profile = Profile(pid, {}, {}, {}, changed=True)
        else:
            profile = self._load(ids[0])
            for other in ids[1:]:
                self._merge(profile, self._load(other), event)
        new = [k for k in keys if k not in known]
        if new:
            self.conn.execute(
                insert(identities),
                [
                    {"kind": k, "value": v, "profile_id": profile.id, "first_seen_at": self.now}
                    for k, v in new
                ],
            )
        return profile

    def _insert(self, stmt: Any) -> int:
        key = self.conn.execute(stmt).inserted_primary_key
        assert key is not None
        return int(key[0])

    def _load(self, pid: int) -> Profile:
        stmt = select(profiles).where(profiles.c.id == pid)
        if self.lock:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).one()
        return Profile(row.id, dict(row.traits), dict(row.trait_versions), dict(row.consent))

    def _merge(self, keep: Profile, gone: Profile, event: CustomerEvent) -> None:
        """Fold `gone` into `keep`: newer trait and consent values win, everything is re-pointed."""
        for name, value in gone.traits.items():
            theirs, mine = gone.versions.get(name), keep.versions.get(name)
            if theirs is None:
                continue
            earliest = self._keeps_first(name)
            if mine is None or (tuple(theirs) < tuple(mine) if earliest else _newer(theirs, mine)):
                keep.traits[name] = value
                keep.versions[name] = theirs
        for channel, entry in gone.consent.items():
            current = keep.consent.get(channel)
            if current is None or _consent_wins(entry, current):
                keep.consent[channel] = entry
        moved = [
            Identity(r.kind, r.value)
            for r in self.conn.execute(
                select(identities.c.kind, identities.c.value).where(identities.c.profile_id == gone.id)
            )
        ]
        for table in (identities, events, timeline):
            self.conn.execute(update(table).where(table.c.profile_id == gone.id).values(profile_id=keep.id))
        self.conn.execute(
            update(profiles).where(profiles.c.id == gone.id).values(merged_into=keep.id, updated_at=self.now)
        )
        self.conn.execute(
            insert(profile_merges).values(
                from_profile_id=gone.id,
                into_profile_id=keep.id,
                at=self.now,
                event_id=None,
                identities=[str(i) for i in moved],
            )
        )
        keep.changed = True
        keep.notes.append(
            {
                "kind": "merge",
                "at": event.occurred_at,
                "event_id": None,
                "field": None,
                "old": None,
                "new": None,
                "detail": {
                    "merged_profile": gone.id,
                    "identities": [str(i) for i in moved],
                    "by_inbox_id": event.inbox_id,
                },
            }
        )
        for trait, rules in self.computed.items():
            if rules and rules[0].keep in AGGREGATES:
                self._aggregate(keep, trait, rules, None)

    def _keeps_first(self, trait: str) -> bool:
        rules = self.computed.get(trait) or ()
        return bool(rules) and all(rule.keep == "first" for rule in rules)

    # ------------------------------------------------------------------ the event log

    def _record_event(self, pid: int, event: CustomerEvent) -> tuple[int, bool]:
        values = {
            "profile_id": pid,
            "name": event.name,
            "source": event.source,
            "occurred_at": event.occurred_at,
            "received_at": event.received_at,
            "applied_at": self.now,
            "identities": [str(i) for i in event.identities],
            "properties": event.properties,
            "traits": event.traits,
            "consent": event.consent,
        }
        existing = self.conn.execute(select(events.c.id).where(events.c.inbox_id == event.inbox_id)).scalar()
        if existing is not None:  # a replay: the event's content may have changed with the mapping
            self.conn.execute(update(events).where(events.c.id == existing).values(**values))
            return existing, False
        return self._insert(insert(events).values(inbox_id=event.inbox_id, **values)), True

    # ------------------------------------------------------------------ traits and consent

    def _set(
        self,
        profile: Profile,
        name: str,
        value: Any,
        version: Version,
        event: CustomerEvent,
        event_id: int,
        *,
        earliest: bool = False,
    ) -> None:
        current = profile.versions.get(name)
        wins = (current is None or tuple(version) <= tuple(current)) if earliest else _newer(version, current)
        if not wins:
            return
        old = profile.traits.get(name)
        profile.versions[name] = version
        profile.traits[name] = value
        profile.changed = True
        if old != value:
            self._note(profile, event, "trait", name, old, value, event_id)

    def _consent(
        self,
        profile: Profile,
        channel: str,
        state: str,
        version: Version,
        event: CustomerEvent,
        event_id: int,
    ) -> None:
        entry = {
            "state": state,
            "version": version,
            "source": event.source,
            "at": event.occurred_at.isoformat(),
        }
        current = profile.consent.get(channel)
        if current is not None and not _consent_wins(entry, current):
            return
        profile.consent[channel] = entry
        profile.changed = True
        old_state = current["state"] if current else "unknown"
        if old_state != state:
            self._note(profile, event, "consent", channel, old_state, state, event_id)

    def _computed(self, profile: Profile, event: CustomerEvent, version: Version, event_id: int) -> None:
        doc = _event_doc(event.name, event.occurred_at, event.source, event.properties, event.traits)
        for trait, rules in self.computed.items():
            matching = [r for r in rules if _listens(r, event.name)]
            if not matching:
                continue
            if rules[0].keep in AGGREGATES:
                self._aggregate(profile, trait, rules, (event, version, event_id))
                continue
            for rule in matching:
                if rule.when is not None and not evaluate(rule.when, doc):
                    continue
                value = None if rule.clear else evaluate(rule.value or "", doc)
                if value is None and not rule.clear:
                    continue
                self._set(profile, trait, value, version, event, event_id, earliest=rule.keep == "first")

    def _aggregate(
        self,
        profile: Profile,
        trait: str,
        rules: Sequence[TraitRule],
        cause: tuple[CustomerEvent, Version, int] | None,
    ) -> None:
        values = self._contributions(profile.id, rules)
        if not values and trait not in profile.traits:
            return  # nothing to count yet: no trait, rather than a zero that order would decide
        keep = rules[0].keep
        result: Any
        if keep in ("sum", "count"):
            total = sum(values)
            result = round(total, 6) if isinstance(total, float) else total
        elif not values:
            result = None
        else:
            result = max(values) if keep == "max" else min(values)
        old = profile.traits.get(trait)
        if old == result or (result is None and trait not in profile.traits):
            return
        profile.traits[trait] = result
        profile.changed = True
        if cause is not None:
            event, version, event_id = cause
            profile.versions[trait] = version
            self._note(profile, event, "trait", trait, old, result, event_id)

    def _contributions(self, pid: int, rules: Sequence[TraitRule]) -> list[Any]:
        """What each of the customer's events gives an aggregate trait (1 each for a count).

        With `distinct`, events sharing a key give one contribution: the latest event's.
        """
        names = {n for r in rules for n in r.names}
        stmt = select(
            events.c.name,
            events.c.occurred_at,
            events.c.inbox_id,
            events.c.source,
            events.c.properties,
            events.c.traits,
        ).where(events.c.profile_id == pid)
        if "*" not in names:
            stmt = stmt.where(events.c.name.in_(names))
        loose: list[Any] = []
        keyed: dict[tuple[int, str], tuple[tuple[datetime, int], Any]] = {}
        for row in self.conn.execute(stmt):
            doc = _event_doc(row.name, row.occurred_at, row.source, row.properties, row.traits)
            for index, rule in enumerate(rules):
                if not _listens(rule, row.name) or (rule.when is not None and not evaluate(rule.when, doc)):
                    continue
                value = self._contribution(rule, doc)
                if value is None:
                    continue
                key = evaluate(rule.distinct, doc) if rule.distinct is not None else None
                if key is None:
                    loose.append(value)
                    continue
                version = (row.occurred_at, row.inbox_id)
                slot = (index, json.dumps(key, sort_keys=True, default=str))
                if slot not in keyed or version >= keyed[slot][0]:
                    keyed[slot] = (version, value)
        return loose + [value for _, value in keyed.values()]

    @staticmethod
    def _contribution(rule: TraitRule, doc: dict[str, Any]) -> Any:
        if rule.keep == "count":
            return 1
        value = evaluate(rule.value or "", doc)
        if rule.keep == "sum":
            value = _number(value)
            if value is not None and rule.negate:
                value = -value
        return value

    # ------------------------------------------------------------------ persistence

    def _note(
        self,
        profile: Profile,
        event: CustomerEvent,
        kind: str,
        name: str | None,
        old: Any,
        new: Any,
        event_id: int | None,
    ) -> None:
        detail = new if kind == "event" else None
        profile.notes.append(
            {
                "kind": kind,
                "at": event.occurred_at,
                "event_id": event_id,
                "field": name,
                "old": None if kind == "event" else old,
                "new": None if kind == "event" else new,
                "detail": detail,
            }
        )

    def _save(self, profile: Profile) -> None:
        if profile.changed:
            self.conn.execute(
                update(profiles)
                .where(profiles.c.id == profile.id)
                .values(
                    traits=profile.traits,
                    trait_versions=profile.versions,
                    consent=profile.consent,
                    updated_at=self.now,
                )
            )
        if profile.notes:
            self.conn.execute(
                insert(timeline),
                [{**note, "profile_id": profile.id, "recorded_at": self.now} for note in profile.notes],
            )
            profile.notes.clear()


def _consent_wins(new: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Newer wins; at the very same version, an unsubscribe wins (never send on a tie)."""
    a, b = tuple(new["version"]), tuple(current["version"])
    if a != b:
        return a > b
    return bool(new["state"] == "unsubscribed" or current["state"] != "unsubscribed")


def _listens(rule: TraitRule, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in rule.names)


def _event_doc(name: str, occurred_at: datetime, source: str, properties: Any, traits: Any) -> dict[str, Any]:
    return {
        "name": name,
        "occurred_at": stamp(occurred_at),
        "source": source,
        "properties": properties or {},
        "traits": traits or {},
    }


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
