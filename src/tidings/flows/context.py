"""The documents conditions and templates see, and the journal of what runs did and why."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from tidings.mapping.rules import evaluate
from tidings.store.prepared import Prepared
from tidings.store.schema import flow_steps, identities, profiles


def event_doc(
    name: str, properties: Any, occurred_at: datetime, source: str, event_id: int | None
) -> dict[str, Any]:
    return {
        "name": name,
        "properties": properties or {},
        "occurred_at": occurred_at.isoformat(),
        "source": source,
        "event_id": event_id,
    }


def profile_basics(pid: int, traits: Mapping[str, Any], consent: Mapping[str, Any]) -> dict[str, Any]:
    """A profile as trigger conditions see it: id, traits and the state of each consent channel."""
    return {
        "id": pid,
        "traits": dict(traits),
        "consent": {channel: entry.get("state", "unknown") for channel, entry in consent.items()},
    }


def profile_doc(conn: Connection, pid: int) -> dict[str, Any] | None:
    """The profile as flows see it, read now (so every decision uses the freshest data); None if
    it is gone or merged into another."""
    return profile_docs(conn, {pid}).get(pid)


def profile_docs(conn: Connection, pids: set[int]) -> dict[int, dict[str, Any]]:
    """`profile_doc` for many profiles in two statements; a merged-away profile is left out (its
    runs follow the merge one by one)."""
    if not pids:
        return {}
    rows = _PROFILES.execute(conn, {"ids": sorted(pids)}).all()
    ids: dict[int, dict[str, str]] = {r.id: {} for r in rows}
    for r in _IDENTITIES.execute(conn, {"ids": sorted(ids)}) if ids else ():
        ids[r.profile_id].setdefault(r.kind, r.value)
    return {
        r.id: {
            **profile_basics(r.id, r.traits, r.consent),
            "identities": ids[r.id],
            "email": ids[r.id].get("email"),
            "phone": ids[r.id].get("phone"),
        }
        for r in rows
    }


def profile_cart(profile: dict[str, Any]) -> dict[str, Any] | None:
    """The cart as the profile knows it (built-in cart traits), or None when there is none."""
    traits = profile["traits"]
    if traits.get("cart_id") is None and not traits.get("cart_items"):
        return None
    return {
        "id": traits.get("cart_id"),
        "items": traits.get("cart_items") or [],
        "value": traits.get("cart_value"),
        "currency": traits.get("cart_currency"),
        "checkout_url": traits.get("checkout_url"),
        "source": "profile",
    }


def holds(expression: str | None, doc: dict[str, Any]) -> bool:
    """A condition: absent holds; otherwise JMESPath truthiness (false, null, '', [], {} fail)."""
    if expression is None:
        return True
    return bool(evaluate(expression, doc))


class Journal:
    """Lines of runs' stories, kept in their journal (`flow_steps`); the customer's timeline reads
    them from there (`profiles.read.load_timeline`).

    Lines are buffered and written by `flush` in one statement, whatever their number.
    """

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def add(
        self,
        *,
        run_id: int,
        flow: str,
        profile_id: int,
        at: datetime,
        step: str,
        kind: str,
        outcome: str,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.lines.append(
            {
                "run_id": run_id,
                "flow": flow,
                "profile_id": profile_id,
                "at": at,
                "step": step,
                "kind": kind,
                "outcome": outcome,
                "reason": reason,
                "detail": detail,
            }
        )

    def sent(self, profile_id: int, flow: str | None) -> int:
        """Sends buffered for the customer (of `flow`, or of all flows), not yet flushed."""
        return sum(
            1
            for line in self.lines
            if line["profile_id"] == profile_id
            and line["kind"] == "send"
            and line["outcome"] == "sent"
            and (flow is None or line["flow"] == flow)
        )

    def flush(self, conn: Connection) -> None:
        if self.lines:
            _JOURNAL.execute_many(conn, self.lines)
            self.lines = []


_PROFILES = Prepared(
    select(profiles.c.id, profiles.c.traits, profiles.c.consent).where(
        profiles.c.id.in_(bindparam("ids", expanding=True)), profiles.c.merged_into.is_(None)
    )
)
_IDENTITIES = Prepared(
    select(identities.c.profile_id, identities.c.kind, identities.c.value)
    .where(identities.c.profile_id.in_(bindparam("ids", expanding=True)))
    .order_by(identities.c.first_seen_at, identities.c.kind)
)
_JOURNAL = Prepared(insert(flow_steps))
