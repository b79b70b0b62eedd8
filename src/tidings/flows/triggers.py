"""What a new event does to flows, decided in the transaction that applies it to the profile.

For each event, in `occurred_at` order: it may end active runs of its customer (`exit_on`), wake
a run waiting for it (`wait_for`), refresh the triggering event of an active run with the same
key (so a cart updated during the wait is the cart sent), or start a run. A started or woken run
is due at once; the runner takes it from there. Replays of stored events start nothing.

In these conditions `event` is the incoming event, `run.trigger` the run's triggering event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select

from tidings.events import CustomerEvent
from tidings.flows import runs
from tidings.flows.catalog import FlowCatalog
from tidings.flows.context import Journal, event_doc, holds, profile_basics
from tidings.flows.model import Flow
from tidings.mapping.rules import evaluate
from tidings.metrics import Metrics
from tidings.store.prepared import Prepared
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


@dataclass(slots=True)
class _Start:
    """A run an event triggers: started if its (flow, key) has no active run (`run_id` set)."""

    new: runs.NewRun
    run_id: int | None = None


class FlowTriggers:
    def __init__(self, catalog: FlowCatalog, metrics: Metrics) -> None:
        self.catalog = catalog
        self.metrics = metrics

    def on_events(
        self,
        conn: Connection,
        applied: Sequence[AppliedEvent],
        now: datetime,
        profiles: Mapping[int, dict[str, Any]] | None = None,
    ) -> int:
        """Start, wake, refresh or end runs for these events; return how many runs became due.

        `profiles`: the documents (`profile_basics`) of profiles the caller has as they are now; the
        others are read.
        """
        if not self.catalog or not applied:
            return 0
        pids = {a.profile_id for a in applied}
        active: dict[int, list[runs.Run]] = {}
        for run in runs.active_for_profiles(conn, pids):
            active.setdefault(run.profile_id, []).append(run)
        docs = {pid: profiles[pid] for pid in pids if profiles is not None and pid in profiles}
        if len(docs) < len(pids):
            docs.update(_profile_docs(conn, pids - docs.keys()))
        seen = [
            (
                a,
                event_doc(a.event.name, a.event.properties, a.event.occurred_at, a.event.source, a.event_id),
                docs.get(a.profile_id, {"id": a.profile_id, "traits": {}, "consent": {}}),
            )
            for a in applied
        ]
        starts = self._start(conn, seen, now)
        # The run each active (flow, key) has, once read: a refresh changes that one object.
        by_key = {(r.flow, r.run_key): r for rs in active.values() for r in rs if r.status == runs.ACTIVE}
        others: list[runs.Run] = []  # active runs of other customers that events refreshed
        journal = Journal()
        due = 0
        for i, (a, doc, profile) in enumerate(seen):
            for run in active.get(a.profile_id, []):
                if run.status == runs.ACTIVE:
                    due += self._touch(conn, journal, run, a.event, doc, profile, now)
            for name in self.catalog.current:
                start = starts.get((i, name))
                if start is None:
                    continue
                if start.run_id is None:  # already active (another customer's, or earlier in this batch)
                    self._refresh(conn, by_key, others, start.new, doc)
                    continue
                run = self._started(journal, start.new, start.run_id, a, doc, now)
                active.setdefault(a.profile_id, []).append(run)
                by_key[(name, run.run_key)] = run
                due += 1
        runs.save_all(conn, [r for rs in [*active.values(), others] for r in rs if r.dirty], now, bump=True)
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

    @staticmethod
    def _refresh(
        conn: Connection,
        by_key: dict[tuple[str, str], runs.Run],
        others: list[runs.Run],
        new: runs.NewRun,
        doc: dict[str, Any],
    ) -> None:
        """A trigger of a (flow, key) already active: the newer event becomes the run's trigger."""
        existing = by_key.get((new.flow, new.key))
        if existing is None:
            existing = runs.active_run(conn, new.flow, new.key)
            if existing is None:
                return
            by_key[(new.flow, new.key)] = existing
            others.append(existing)
        # One that ended earlier in this batch is no longer active: its end is what is saved.
        if existing.status == runs.ACTIVE and doc["occurred_at"] > str(
            existing.context["event"]["occurred_at"]
        ):
            existing.context = {**existing.context, "event": doc}
            existing.dirty = True

    # ------------------------------------------------------------------ a new run

    def _start(
        self, conn: Connection, seen: list[tuple[AppliedEvent, dict[str, Any], dict[str, Any]]], now: datetime
    ) -> dict[tuple[int, str], _Start]:
        """Which events trigger which flows, by (index in `seen`, flow), and the runs started.

        Decided for the whole batch before any run is touched, in one insert: whether a run
        starts depends only on the event, the profile and the runs stored (the runs this batch
        changes are written after it), and within the batch the first trigger of a (flow, key)
        starts it; a later one finds it active.
        """
        triggered: list[tuple[int, str, Flow, str]] = []
        for i, (a, doc, profile) in enumerate(seen):
            for name, flow in self.catalog.current.items():
                if a.event.name in flow.trigger.names:
                    key = self._trigger_key(name, flow, a, doc, profile, now)
                    if key is not None:
                        triggered.append((i, name, flow, key))
        once: dict[str, set[str]] = {}  # flows that never re-enter: their run keys
        for _, name, flow, key in triggered:
            if flow.reentry == "never":
                once.setdefault(name, set()).add(key)
        ran = {(name, key) for name, keys in once.items() for key in runs.ever_ran(conn, name, keys)}
        starts: dict[tuple[int, str], _Start] = {}
        first: dict[tuple[str, str], _Start] = {}
        for i, name, flow, key in triggered:
            if flow.reentry == "never":
                if (name, key) in ran:
                    continue
                ran.add((name, key))
            a, doc, _ = seen[i]
            new = runs.NewRun(
                flow=name,
                version=self.catalog.versions[name],
                key=key,
                profile_id=a.profile_id,
                step=flow.step_ids()[0],
                context={"event": doc, "first_occurred_at": a.event.occurred_at.isoformat(), "waiting": None},
            )
            start = starts[(i, name)] = _Start(new)
            first.setdefault((name, key), start)  # a later one finds the first's run active
        ids = runs.start(conn, [s.new for s in first.values()], now)
        for (name, key), start in first.items():
            start.run_id = ids.get((name, key))
        return starts

    def _trigger_key(
        self,
        name: str,
        flow: Flow,
        a: AppliedEvent,
        doc: dict[str, Any],
        profile: dict[str, Any],
        now: datetime,
    ) -> str | None:
        """The run key the event starts a run of `flow` with, if it triggers it at all."""
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
        return key

    def _started(
        self,
        journal: Journal,
        new: runs.NewRun,
        run_id: int,
        a: AppliedEvent,
        doc: dict[str, Any],
        now: datetime,
    ) -> runs.Run:
        journal.add(
            run_id=run_id,
            flow=new.flow,
            profile_id=new.profile_id,
            at=now,
            step=new.step,
            kind="trigger",
            outcome="started",
            reason=f"{a.event.name!r} (occurred {doc['occurred_at']}), key {new.key!r}",
            detail={"event_id": a.event_id, "version": new.version},
        )
        self.metrics.flow_runs.labels(new.flow, "started").inc()
        return runs.Run(
            id=run_id,
            flow=new.flow,
            version=new.version,
            run_key=new.key,
            profile_id=new.profile_id,
            status=runs.ACTIVE,
            step=new.step,
            due_at=now,
            wake="start",
            claim=0,
            visits=0,
            context=new.context,
            started_at=now,
        )


def _key(flow: Flow, ctx: dict[str, Any]) -> str | None:
    value = evaluate(flow.run_key, ctx)
    if value is None or value == "":
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _profile_docs(conn: Connection, pids: set[int]) -> dict[int, dict[str, Any]]:
    """The profiles as trigger conditions see them, read."""
    rows = _PROFILES.execute(conn, {"ids": sorted(pids)})
    return {r.id: profile_basics(r.id, r.traits, r.consent) for r in rows}


_PROFILES = Prepared(
    select(profiles.c.id, profiles.c.traits, profiles.c.consent).where(
        profiles.c.id.in_(bindparam("ids", expanding=True))
    )
)
