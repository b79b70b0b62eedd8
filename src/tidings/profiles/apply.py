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
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, insert, or_, select, update

from tidings.events import CustomerEvent, Identity
from tidings.mapping.rules import evaluate
from tidings.profiles.traits import AGGREGATES, TraitRule
from tidings.store.prepared import Prepared
from tidings.store.schema import (
    events,
    flow_runs,
    flow_steps,
    identities,
    profile_merges,
    profiles,
    timeline,
)

Version = list[Any]  # [occurred_at as fixed-width UTC text, inbox id]: compares as a tuple


def stamp(when: datetime) -> str:
    """Fixed-width UTC text, so versions compare correctly as strings on every backend."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _newer(a: Version, b: Version | None) -> bool:
    return b is None or tuple(a) >= tuple(b)


# Statements built once: SQLAlchemy then compiles and caches each a single time, and a batch of
# thousands of events pays only for executing them.
@functools.cache
def _find_owners_of(kinds: int) -> Prepared:
    """Owners of identities of `kinds` kinds in one statement: (kind = :kind_i AND value IN
    :values_i) OR ..., each term a search of the (kind, value) key (SQLite: MULTI-INDEX OR). Not a
    row-value IN of (kind, value) pairs: with that SQLite scans the whole table (hundreds of ms at
    a million customers)."""
    return Prepared(
        select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
            or_(
                *(
                    and_(
                        identities.c.kind == bindparam(f"kind_{i}"),
                        identities.c.value.in_(bindparam(f"values_{i}", expanding=True)),
                    )
                    for i in range(kinds)
                )
            )
        )
    )


_LOCK_PROFILES = Prepared(
    select(profiles.c.id)
    .where(profiles.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(profiles.c.id)
    .with_for_update()
)
_LOAD = Prepared(select(profiles).where(profiles.c.id == bindparam("pid")))
_SAVE = Prepared(
    update(profiles)
    .where(profiles.c.id == bindparam("pid"))
    .values(
        traits=bindparam("traits"),
        trait_versions=bindparam("versions"),
        consent=bindparam("consent"),
        aggregates=bindparam("aggregates"),
        updated_at=bindparam("now"),
    )
)
_EXISTING_EVENTS = Prepared(
    select(events.c.inbox_id, events.c.id).where(
        events.c.inbox_id.in_(bindparam("inbox_ids", expanding=True))
    )
)
_INSERT = {table: Prepared(insert(table)) for table in (identities, timeline)}
_INSERT_ID = {table: Prepared(insert(table).returning(table.c.id)) for table in (events, profiles)}
_UPDATE_EVENT = Prepared(update(events).where(events.c.id == bindparam("event_id")))
_CONTRIBUTING = select(
    events.c.name,
    events.c.occurred_at,
    events.c.inbox_id,
    events.c.source,
    events.c.properties,
    events.c.traits,
).where(events.c.profile_id == bindparam("pid"))


@dataclass
class Profile:
    id: int
    traits: dict[str, Any]
    versions: dict[str, Version]
    consent: dict[str, dict[str, Any]]
    aggregates: dict[str, dict[str, Any]]  # trait -> running state (see _aggregate)
    new: bool = False  # created in this batch: no history to rebuild from


class ProfileWriter:
    """Applies a batch of events within one open transaction (`conn`).

    Profiles are read once per batch and written once at `flush`, with the timeline rows, so the
    statements per event are few: its identities (when new), its row in the event log, and the
    event log of its customer when an aggregate trait needs recomputing.
    """

    def __init__(self, conn: Connection, computed: Mapping[str, Sequence[TraitRule]], now: datetime) -> None:
        self.conn = conn
        self.computed = computed
        self.now = now
        self.lock = conn.dialect.name == "postgresql"
        self.aggregates = {t: r for t, r in computed.items() if r and r[0].keep in AGGREGATES}
        # Profiles whose traits, consent or identity changed (written), with the newest event's time.
        self.touched: dict[int, datetime] = {}
        self.reset()

    def reset(self) -> None:
        """Forget what was read: after a rolled-back event, the database is the truth again."""
        self._profiles: dict[int, Profile] = {}
        self._owner: dict[tuple[str, str], int] = {}  # identity -> profile id
        self._looked_up: set[tuple[str, str]] = set()
        self._merged: dict[int, int] = {}  # merged away -> kept
        self._event_ids: dict[int, int] = {}  # inbox id -> event id, for re-applied items
        self._dirty: set[int] = set()
        self._notes: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ public

    def prepare(self, batch: Sequence[CustomerEvent]) -> set[int]:
        """Read what the batch will need in a few statements; on PostgreSQL, lock its profiles.

        The locks are taken in id order up front, so two processors whose batches share
        customers queue behind each other instead of deadlocking. Returns the inbox ids of the
        events applied before (replays).
        """
        self._find_owners({(i.kind, i.value) for e in batch for i in e.identities})
        if self.lock and self._owner:
            _LOCK_PROFILES.execute(self.conn, {"ids": sorted(set(self._owner.values()))})
        if batch:
            rows = _EXISTING_EVENTS.execute(self.conn, {"inbox_ids": [e.inbox_id for e in batch]})
            self._event_ids.update({r.inbox_id: r.id for r in rows})
        return {e.inbox_id for e in batch if e.inbox_id in self._event_ids}

    def apply(self, event: CustomerEvent) -> tuple[int, int]:
        """Apply `event` (in memory, but for the event log); return (profile id, event id)."""
        profile = self._profile_for(event)
        event_id, first_time = self._record_event(profile.id, event)
        version: Version = [stamp(event.occurred_at), event.inbox_id]
        if first_time:
            self._note(
                profile,
                event,
                "event",
                None,
                None,
                {"name": event.name, "source": event.source},
                event_id,
            )
        for name, value in event.traits.items():
            self._set(profile, name, value, version, event, event_id)
        for channel, state in event.consent.items():
            self._consent(profile, channel, state, version, event, event_id)
        self._computed(profile, event, version, event_id, replay=not first_time)
        self._dirty.add(profile.id)
        return profile.id, event_id

    def flush(self) -> None:
        """Write the changed profiles and the timeline rows."""
        if self._dirty:
            _SAVE.execute_many(
                self.conn,
                [
                    {
                        "pid": p.id,
                        "traits": p.traits,
                        "versions": p.versions,
                        "consent": p.consent,
                        "aggregates": p.aggregates,
                        "now": self.now,
                    }
                    for p in (self._profiles[pid] for pid in sorted(self._dirty))
                ],
            )
            self._dirty.clear()
        if self._notes:
            for note in self._notes:
                note["profile_id"] = pid = self._current(note["profile_id"])
                if note["kind"] != "event":
                    self.touched[pid] = max(note["at"], self.touched.get(pid, note["at"]))
            _INSERT[timeline].execute_many(self.conn, self._notes)
            self._notes = []

    # ------------------------------------------------------------------ identity

    def _find_owners(self, keys: set[tuple[str, str]]) -> None:
        unknown = sorted(keys - self._looked_up)
        if not unknown:
            return
        self._looked_up.update(unknown)
        by_kind: dict[str, list[str]] = {}
        for kind, value in unknown:
            by_kind.setdefault(kind, []).append(value)
        params: dict[str, Any] = {}
        for i, (kind, values) in enumerate(sorted(by_kind.items())):
            params[f"kind_{i}"], params[f"values_{i}"] = kind, values
        for row in _find_owners_of(len(by_kind)).execute(self.conn, params):
            self._owner[(row.kind, row.value)] = row.profile_id

    def loaded(self, pid: int) -> Profile | None:
        """The profile as this batch left it, if it is in memory (written at `flush`)."""
        return self._profiles.get(pid)

    def current(self, pid: int) -> int:
        """The profile `pid` is now (after any merge in this batch)."""
        return self._current(pid)

    def _current(self, pid: int) -> int:
        while pid in self._merged:
            pid = self._merged[pid]
        return pid

    def _profile_for(self, event: CustomerEvent) -> Profile:
        keys = [(i.kind, i.value) for i in event.identities]
        self._find_owners(set(keys))
        ids = sorted({self._current(self._owner[k]) for k in keys if k in self._owner})
        if not ids:
            pid = self._insert(
                profiles,
                {
                    "created_at": self.now,
                    "updated_at": self.now,
                    "traits": {},
                    "trait_versions": {},
                    "consent": {},
                    "aggregates": {},
                },
            )
            profile = self._profiles[pid] = Profile(pid, {}, {}, {}, {}, new=True)
        else:
            profile = self._load(ids[0])
            for other in ids[1:]:
                self._merge(profile, self._load(other), event)
        new = [k for k in keys if k not in self._owner]
        if new:
            _INSERT[identities].execute_many(
                self.conn,
                [
                    {"kind": k, "value": v, "profile_id": profile.id, "first_seen_at": self.now}
                    for k, v in new
                ],
            )
        for k in keys:
            self._owner[k] = profile.id
        return profile

    def _insert(self, table: Table, values: dict[str, Any]) -> int:
        return int(_INSERT_ID[table].execute(self.conn, values).scalar_one())

    def _load(self, pid: int) -> Profile:
        cached = self._profiles.get(pid)
        if cached is not None:
            return cached
        row = _LOAD.execute(self.conn, {"pid": pid}).one()
        profile = Profile(
            row.id,
            dict(row.traits),
            dict(row.trait_versions),
            dict(row.consent),
            dict(row.aggregates),
        )
        self._profiles[pid] = profile
        return profile

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
        for table in (identities, events, timeline, flow_runs, flow_steps):
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
        self._merged[gone.id] = keep.id
        self._dirty.discard(gone.id)
        self._dirty.add(keep.id)
        self._notes.append(
            {
                "profile_id": keep.id,
                "kind": "merge",
                "at": event.occurred_at,
                "recorded_at": self.now,
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
        self._aggregate(keep, event, None, set(self.aggregates), rebuild=True)

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
        existing = self._event_ids.get(event.inbox_id)
        if existing is not None:  # a replay: the event's content may have changed with the mapping
            _UPDATE_EVENT.execute(self.conn, {"event_id": existing, **values})
            return existing, False
        event_id = self._insert(events, {"inbox_id": event.inbox_id, **values})
        self._event_ids[event.inbox_id] = event_id
        return event_id, True

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
        old_state = current["state"] if current else "unknown"
        if old_state != state:
            self._note(profile, event, "consent", channel, old_state, state, event_id)

    def _computed(
        self,
        profile: Profile,
        event: CustomerEvent,
        version: Version,
        event_id: int,
        *,
        replay: bool,
    ) -> None:
        doc = _event_doc(event.name, event.occurred_at, event.source, event.properties, event.traits)
        counted = set()
        for trait, rules in self.computed.items():
            matching = [r for r in rules if _listens(r, event.name)]
            if not matching:
                continue
            if trait in self.aggregates:
                counted.add(trait)
                continue
            for rule in matching:
                if rule.when is not None and not evaluate(rule.when, doc):
                    continue
                value = None if rule.clear else evaluate(rule.value or "", doc)
                if value is None and not rule.clear:
                    continue
                self._set(profile, trait, value, version, event, event_id, earliest=rule.keep == "first")
        if counted:
            self._aggregate(profile, event, (version, event_id), counted, rebuild=replay)

    def _aggregate(
        self,
        profile: Profile,
        event: CustomerEvent,
        cause: tuple[Version, int] | None,
        traits: set[str],
        *,
        rebuild: bool,
    ) -> None:
        """Bring aggregate `traits` up to date with `event`.

        Each keeps a running state (a total, plus one slot per distinct key), so a new event costs
        the same whatever the customer's history. A re-applied event, a merge, or a trait with no
        state yet (added to the config later) rebuilds the state from the event log instead.
        """
        stale = {t for t in traits if rebuild or (t not in profile.aggregates and not profile.new)}
        if stale:
            profile.aggregates.update(self._states_from_log(profile.id, stale))
        if cause is not None:
            doc = _event_doc(event.name, event.occurred_at, event.source, event.properties, event.traits)
            version = [stamp(event.occurred_at), event.inbox_id]
            for trait in sorted(traits - stale):
                state = profile.aggregates.setdefault(trait, {"loose": None, "slots": {}})
                for index, rule in enumerate(self.aggregates[trait]):
                    self._fold(state, index, rule, doc, version)
        for trait in sorted(traits):
            result = _result(profile.aggregates.get(trait), self.aggregates[trait][0].keep)
            old = profile.traits.get(trait)
            if old == result or (result is None and trait not in profile.traits):
                continue
            profile.traits[trait] = result
            if cause is not None:
                version_, event_id = cause
                profile.versions[trait] = version_
                self._note(profile, event, "trait", trait, old, result, event_id)

    def _fold(
        self,
        state: dict[str, Any],
        index: int,
        rule: TraitRule,
        doc: dict[str, Any],
        version: Version,
    ) -> None:
        """Add one event's contribution to a trait's running state."""
        if not _listens(rule, doc["name"]) or (rule.when is not None and not evaluate(rule.when, doc)):
            return
        value = self._contribution(rule, doc)
        if value is None:
            return
        key = evaluate(rule.distinct, doc) if rule.distinct is not None else None
        if key is not None:
            slot = f"{index}:{json.dumps(key, sort_keys=True, default=str)}"
            held = state["slots"].get(slot)
            if held is None or tuple(version) >= tuple(held[0]):
                state["slots"][slot] = [version, value]
            return
        loose = state["loose"]
        if rule.keep in ("sum", "count"):
            state["loose"] = (loose or 0) + value
        elif loose is None or (value > loose if rule.keep == "max" else value < loose):
            state["loose"] = value

    def _states_from_log(self, pid: int, traits: set[str]) -> dict[str, dict[str, Any]]:
        """The running state of each trait, rebuilt from every event of the customer."""
        rules_of = {t: self.aggregates[t] for t in traits}
        names = {n for rules in rules_of.values() for r in rules for n in r.names}
        stmt = _CONTRIBUTING
        if not any(any(c in n for c in "*?[") for n in names):
            stmt = stmt.where(events.c.name.in_(bindparam("names", expanding=True)))
        states: dict[str, dict[str, Any]] = {t: {"loose": None, "slots": {}} for t in traits}
        for row in self.conn.execute(stmt, {"pid": pid, "names": sorted(names)}):
            doc = _event_doc(row.name, row.occurred_at, row.source, row.properties, row.traits)
            version = [stamp(row.occurred_at), row.inbox_id]
            for trait, rules in rules_of.items():
                for index, rule in enumerate(rules):
                    self._fold(states[trait], index, rule, doc, version)
        return states

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

    # ------------------------------------------------------------------ timeline

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
        is_event = kind == "event"
        self._notes.append(
            {
                "profile_id": profile.id,
                "kind": kind,
                "at": event.occurred_at,
                "recorded_at": self.now,
                "event_id": event_id,
                "field": name,
                "old": None if is_event else old,
                "new": None if is_event else new,
                "detail": new if is_event else None,
            }
        )


def update_traits(
    conn: Connection, pid: int, traits: Mapping[str, Any], now: datetime, *, source: str
) -> bool:
    """Traits set by something other than an event (a flow's `update_profile` step).

    They are versioned at `now` with arrival 0, so an event that occurred later still wins, as
    for any other trait. Returns whether any value changed.
    """
    row = conn.execute(
        select(profiles.c.traits, profiles.c.trait_versions).where(profiles.c.id == pid)
    ).first()
    if row is None:
        return False
    values, versions = dict(row.traits), dict(row.trait_versions)
    version: Version = [stamp(now), 0]
    notes = []
    for name, value in traits.items():
        if not _newer(version, versions.get(name)):
            continue
        old = values.get(name)
        values[name], versions[name] = value, version
        if old != value:
            notes.append(
                {
                    "profile_id": pid,
                    "kind": "trait",
                    "at": now,
                    "recorded_at": now,
                    "event_id": None,
                    "field": name,
                    "old": old,
                    "new": value,
                    "detail": {"source": source},
                }
            )
    conn.execute(
        update(profiles)
        .where(profiles.c.id == pid)
        .values(traits=values, trait_versions=versions, updated_at=now)
    )
    if notes:
        conn.execute(insert(timeline), notes)
    return bool(notes)


def _result(state: Mapping[str, Any] | None, keep: str) -> Any:
    """An aggregate trait's value from its running state (None: nothing contributed yet)."""
    if state is None:
        return None
    loose, slots = state["loose"], [value for _, value in state["slots"].values()]
    if loose is None and not slots:
        return None
    if keep in ("sum", "count"):
        total = (loose or 0) + sum(slots)
        return round(total, 6) if isinstance(total, float) else total
    values = ([] if loose is None else [loose]) + slots
    return max(values) if keep == "max" else min(values)


def _consent_wins(new: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Newer wins; at the very same version, an unsubscribe wins (never send on a tie)."""
    a, b = tuple(new["version"]), tuple(current["version"])
    if a != b:
        return a > b
    return bool(new["state"] == "unsubscribed" or current["state"] != "unsubscribed")


def _listens(rule: TraitRule, name: str) -> bool:
    return _matches(rule.names, name)


@functools.lru_cache(maxsize=4096)
def _matches(patterns: tuple[str, ...], name: str) -> bool:
    """Remembered: every event asks it of every computed trait's rules (fnmatch was ~4 % of the
    writer thread at 200 events/s), and a shop has few event names."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


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
