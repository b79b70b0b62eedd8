"""What a new event does to flows, decided in the transaction that applies it to the profile.

For each event, in `occurred_at` order: it may end active runs of its customer (`exit_on`), wake
a run waiting for it (`wait_for`), refresh the triggering event of an active run with the same
key (so a cart updated during the wait is the cart sent), or start a run. A started or woken run
is due at once; the runner takes it from there. Replays of stored events start nothing.

In these conditions `event` is the incoming event, `run.trigger` the run's triggering event.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from tidings.events import CustomerEvent
from tidings.flows import runs
from tidings.flows.catalog import FlowCatalog
from tidings.flows.context import Journal, event_doc, holds
from tidings.flows.model import Flow
from tidings.mapping.rules import evaluate
from tidings.metrics import Metrics
from tidings.store.schema import profiles

log = logging.getLogger("tidings.flows")

# Sources' clocks disagree a little: an exit event up to this much older than the trigger still
# counts as coming after it.
SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    event: CustomerEvent
    profile_id: int
    event_id: int


class FlowTriggers:
    def __init__(self, catalog: FlowCatalog, metrics: Metrics) -> None:
        self.catalog = catalog
        self.metrics = metrics

    def on_events(self, conn: Connection, applied: Sequence[AppliedEvent], now: datetime) -> int:
        """Start, wake, refresh or end runs for these events; return how many runs became due."""
        if not self.catalog or not applied:
            return 0
        pids = {a.profile_id for a in applied}
        active: dict[int, list[runs.Run]] = {}
        for run in runs.active_for_profiles(conn, pids):
            active.setdefault(run.profile_id, []).append(run)
        docs = _profile_docs(conn, pids)
        journal = Journal()
        due = 0
        for a in applied:
            doc = event_doc(a.event.name, a.event.properties, a.event.occurred_at, a.event.source, a.event_id)
            profile = docs.get(a.profile_id, {"id": a.profile_id, "traits": {}, "consent": {}})
            for run in active.get(a.profile_id, []):
                if run.status == runs.ACTIVE:
                    due += self._touch(conn, journal, run, a.event, doc, profile, now)
            for name, flow in self.catalog.current.items():
                if a.event.name in flow.trigger.names:
                    started = self._trigger(conn, journal, name, flow, a, doc, profile, now)
                    if started is not None:
                        active.setdefault(a.profile_id, []).append(started)
                        due += 1
        for run_list in active.values():
            for run in run_list:
                if run.dirty:
                    runs.save(conn, run, now, bump=True)
        journal.flush(conn)
        return due

    # ------------------------------------------------------------------ an active run

    def _touch(
        self,
        conn: Connection,
        journal: Journal,
        run: runs.Run,
        event: CustomerEvent,
        doc: dict[str, Any],
        profile: dict[str, Any],
        now: datetime,
    ) -> int:
        resolved = self.catalog.resolve(conn, run.flow, run.version)
        if resolved is None:
            return 0
        flow, _ = resolved
        ctx = {"event": doc, "profile": profile, "run": run.doc()}
        first = datetime.fromisoformat(run.context["first_occurred_at"])
        for match in flow.exit_on:
            if event.name in match.names and event.occurred_at >= first - SKEW and holds(match.when, ctx):
                journal.add(
                    run_id=run.id,
                    flow=run.flow,
                    profile_id=run.profile_id,
                    at=now,
                    step=run.step or "",
                    kind="exit",
                    outcome="exited",
                    reason=f"exit event {event.name!r} (occurred {doc['occurred_at']})",
                    detail={"event_id": doc["event_id"]},
                )
                run.end(runs.EXITED, f"exit event {event.name!r}", now)
                self.metrics.flow_runs.labels(run.flow, "exited").inc()
                return 0
        step = flow.step(run.step)
        wait_for = step.wait_for if step is not None and run.context.get("waiting") == run.step else None
        if wait_for is not None and event.name in wait_for.names and holds(wait_for.when, ctx):
            run.context = {**run.context, "matched": doc}
            run.schedule(run.step or "", now, "event")
            return 1
        if event.name in flow.trigger.names and holds(flow.trigger.when, ctx):
            key = _key(flow, ctx)
            trigger = run.context.get("event") or {}
            if key == run.run_key and doc["occurred_at"] > str(trigger.get("occurred_at", "")):
                run.context = {**run.context, "event": doc}  # the latest cart is the one to send
                run.dirty = True
        return 0

    # ------------------------------------------------------------------ a new run

    def _trigger(
        self,
        conn: Connection,
        journal: Journal,
        name: str,
        flow: Flow,
        a: AppliedEvent,
        doc: dict[str, Any],
        profile: dict[str, Any],
        now: datetime,
    ) -> runs.Run | None:
        if now - a.event.occurred_at > flow.trigger.max_age:
            self.metrics.flow_sends.labels(name, "skipped", "stale trigger").inc()
            return None
        ctx = {"event": doc, "profile": profile}
        if not holds(flow.trigger.when, ctx):
            return None
        key = _key(flow, ctx)
        if key is None:
            log.warning(
                "flow trigger without a run key",
                extra={"action": "flow_no_key", "flow": name, "inbox_id": a.event.inbox_id},
            )
            return None
        if flow.reentry == "never" and runs.ever_ran(conn, name, key):
            return None
        version = self.catalog.versions[name]
        context = {"event": doc, "first_occurred_at": a.event.occurred_at.isoformat(), "waiting": None}
        first_step = flow.step_ids()[0]
        run_id = runs.start(
            conn,
            flow=name,
            version=version,
            key=key,
            profile_id=a.profile_id,
            step=first_step,
            context=context,
            now=now,
        )
        if run_id is None:  # already active (for another customer, or earlier in this batch)
            existing = runs.active_run(conn, name, key)
            if existing is not None and doc["occurred_at"] > str(existing.context["event"]["occurred_at"]):
                existing.context = {**existing.context, "event": doc}
                runs.save(conn, existing, now, bump=True)
            return None
        journal.add(
            run_id=run_id,
            flow=name,
            profile_id=a.profile_id,
            at=now,
            step=first_step,
            kind="trigger",
            outcome="started",
            reason=f"{a.event.name!r} (occurred {doc['occurred_at']}), key {key!r}",
            detail={"event_id": a.event_id, "version": version},
        )
        self.metrics.flow_runs.labels(name, "started").inc()
        return runs.Run(
            id=run_id,
            flow=name,
            version=version,
            run_key=key,
            profile_id=a.profile_id,
            status=runs.ACTIVE,
            step=first_step,
            due_at=now,
            wake="start",
            claim=0,
            visits=0,
            context=context,
            started_at=now,
        )


def _key(flow: Flow, ctx: dict[str, Any]) -> str | None:
    value = evaluate(flow.run_key, ctx)
    if value is None or value == "":
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _profile_docs(conn: Connection, pids: set[int]) -> dict[int, dict[str, Any]]:
    """The profiles as trigger conditions see them: id, traits and consent states."""
    rows = conn.execute(
        select(profiles.c.id, profiles.c.traits, profiles.c.consent).where(profiles.c.id.in_(sorted(pids)))
    )
    return {
        r.id: {
            "id": r.id,
            "traits": r.traits,
            "consent": {c: e.get("state", "unknown") for c, e in r.consent.items()},
        }
        for r in rows
    }
