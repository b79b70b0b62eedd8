"""Running a flow's steps for one due run, in one transaction, with the guards before each send.

Before every send, in this order: exit events already in the customer's history (a purchase that
arrived late, or out of order), the source's live answer about the cart (when the flow has
`freshness:`), an address to send to, consent for the channel, the frequency caps (this flow's,
then across all flows), and quiet hours in the customer's time zone (which delay, never drop).
Everything is read at that moment, so the send acts on the newest state. Each decision is
recorded with its reason.

In these conditions and templates `event` is the run's triggering event (the latest for its
key), `matched` the event a `wait_for` received, `cart` the freshest cart known (the live answer,
else the profile's cart traits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from tidings.configmodel import format_duration
from tidings.delivery import outbox
from tidings.delivery.effects import TRACK_EVENT
from tidings.flows import runs
from tidings.flows.catalog import FlowCatalog
from tidings.flows.clock import customer_zone, next_local, quiet_until
from tidings.flows.context import Journal, event_doc, holds, profile_cart, profile_doc, profile_docs
from tidings.flows.model import EXIT, NEXT, Flow, GlobalGuards, Send, Step
from tidings.flows.triggers import SKEW
from tidings.lookups.base import CartState, LookupUnavailable
from tidings.mapping.rules import evaluate
from tidings.metrics import Metrics
from tidings.profiles.apply import update_traits
from tidings.profiles.read import resolve
from tidings.store.prepared import Prepared
from tidings.store.schema import events, flow_steps
from tidings.templating import TemplateProblem

MAX_STEPS = 100  # per firing; a loop always passes a wait (checked with the config)

_EXIT_EVENTS = Prepared(
    select(
        events.c.id,
        events.c.profile_id,
        events.c.name,
        events.c.properties,
        events.c.occurred_at,
        events.c.source,
    )
    .where(
        events.c.profile_id.in_(bindparam("pids", expanding=True)),
        events.c.name.in_(bindparam("names", expanding=True)),
        events.c.occurred_at >= bindparam("since", type_=events.c.occurred_at.type),
    )
    .order_by(events.c.occurred_at)
)


@dataclass(frozen=True, slots=True)
class _Fresh:
    cart: dict[str, Any] | None
    notes: list[str]


@dataclass(frozen=True, slots=True)
class NeedsLookup:
    """The run stands before a send and the source must be asked about the cart first."""

    source: str
    cart_id: str


NOT_ASKED = object()
Live = CartState | LookupUnavailable | None | object


class Executor:
    def __init__(self, catalog: FlowCatalog, guards: GlobalGuards, metrics: Metrics) -> None:
        self.catalog = catalog
        self.guards = guards
        self.metrics = metrics
        self.journal = Journal()
        self._sends: list[dict[str, Any]] = []
        self._profiles: dict[int, dict[str, Any]] = {}
        self._now: datetime | None = None
        self._round: list[runs.Run] = []
        # The round's customers' exit events, read once: (since, names, rows by profile).
        self._exit_rows: tuple[datetime, set[str], dict[int, list[Any]]] | None = None

    def begin(self, conn: Connection, batch: list[runs.Run], now: datetime) -> None:
        """A round: read the customers of `batch` at once; journals and sends are written by
        `finish`, so a round of runs costs a few statements, not a few per run."""
        self.journal = Journal()
        self._sends = []
        self._now = now
        self._profiles = profile_docs(conn, {run.profile_id for run in batch})
        self._round = batch
        self._exit_rows = None

    def finish(self, conn: Connection) -> int:
        """Write the round's journal and sends; return how many sends."""
        self.journal.flush(conn)
        sent = len(self._sends)
        if self._now is not None:
            outbox.enqueue_many(conn, self._sends, self._now)
        self._sends = []
        self._profiles = {}
        self._round, self._exit_rows = [], None
        return sent

    def writes_at_once(self, run: runs.Run) -> bool:
        """Whether running `run` may write before the round ends (an `update_profile` step)."""
        flow = self.catalog.current.get(run.flow)
        return (
            flow is None
            or run.version != self.catalog.versions.get(run.flow)
            or any(step.update_profile is not None for step in flow.steps)
        )

    def execute(
        self, conn: Connection, run: runs.Run, now: datetime, live: Live = NOT_ASKED
    ) -> NeedsLookup | None:
        """Run steps from where the run stands until it waits or ends (within a round: see
        `begin`). On an error nothing of the run is kept; the caller rolls it back."""
        marks = (len(self.journal.lines), len(self._sends))
        try:
            return self._execute(conn, run, now, live)
        except Exception:
            del self.journal.lines[marks[0] :], self._sends[marks[1] :]
            self._profiles.pop(run.profile_id, None)  # an update_profile may have touched it
            raise

    def _execute(self, conn: Connection, run: runs.Run, now: datetime, live: Live) -> NeedsLookup | None:
        resolved = self.catalog.resolve(conn, run.flow, run.version)
        if resolved is None:
            self._end(conn, run, runs.EXITED, "the flow was removed from the config", now)
            return None
        flow, version = resolved
        if version != run.version:
            if run.step not in flow.step_ids():
                self._end(conn, run, runs.EXITED, f"step {run.step!r} is not in version {version}", now)
                return None
            run.version, run.dirty = version, True
        profile = self._profiles.get(run.profile_id)
        current: int | None = run.profile_id
        if profile is None:  # merged into another since, or not read with the round
            current = resolve(conn, str(run.profile_id))
            profile = profile_doc(conn, current) if current is not None else None
        if profile is None:
            self._end(conn, run, runs.EXITED, "the profile was erased", now)
            return None
        run.profile_id = current if current is not None else run.profile_id
        if run.wake == "start":
            reason = self._exit_in_history(conn, flow, run, profile)
            if reason:
                self._end(conn, run, runs.EXITED, reason, now)
                return None
        ids = flow.step_ids()
        step_id = run.step or ids[0]
        for _ in range(MAX_STEPS):
            step = flow.steps[ids.index(step_id)]  # the id exists: checked with the config
            run.visits += 1
            run.dirty = True
            target = self._step(conn, flow, run, step, step_id, profile, now, live)
            if target is None or isinstance(target, NeedsLookup):
                return target  # waiting, ended, or asking the source first
            run.wake = None
            if target == EXIT:
                self._end(conn, run, runs.COMPLETED, f"step {step_id!r} led to exit", now)
                return None
            position = ids.index(step_id) + 1 if target == NEXT else ids.index(target)
            if position >= len(ids):
                self._end(conn, run, runs.COMPLETED, "reached the last step", now)
                return None
            step_id = ids[position]
            run.step = step_id
        self._end(conn, run, runs.FAILED, f"more than {MAX_STEPS} steps without a wait", now)
        return None

    # ------------------------------------------------------------------ steps

    def _step(
        self,
        conn: Connection,
        flow: Flow,
        run: runs.Run,
        step: Step,
        step_id: str,
        profile: dict[str, Any],
        now: datetime,
        live: Live,
    ) -> str | NeedsLookup | None:
        """Do one step; return where to go next, or None when the run waits or ended."""
        note = _Journal(self.journal, run, step_id, now)
        if step.wait is not None:
            if run.context.get("waiting") == step_id and run.wake == "timer":
                run.context = {**run.context, "waiting": None}
                return step.next
            due = now + step.wait.for_ if step.wait.for_ is not None else now
            if step.wait.until is not None:
                tz = customer_zone(profile["traits"], self.guards.default_timezone)
                due = next_local(due, step.wait.until, tz)
            self._wait(run, step_id, due)
            note("wait", "waiting", f"until {due.isoformat()}")
            return None
        if step.wait_for is not None:
            if run.context.get("waiting") == step_id and run.wake in ("event", "timer"):
                matched = run.wake == "event"
                run.context = {**run.context, "waiting": None}
                if matched:
                    note("wait_for", "event", f"{run.context['matched']['name']!r} arrived")
                    return step.on_event
                note("wait_for", "timeout", f"no {' / '.join(step.wait_for.names)} within the timeout")
                return step.on_timeout
            due = now + step.wait_for.timeout
            self._wait(run, step_id, due)
            note("wait_for", "waiting", f"for {' / '.join(step.wait_for.names)} until {due.isoformat()}")
            return None
        if step.branch is not None:
            ctx = self._context(run, profile, now, None)
            taken = holds(step.branch.when, ctx)
            note("branch", "then" if taken else "else", step.branch.when)
            return step.branch.then if taken else step.branch.else_
        if step.update_profile is not None:
            ctx = self._context(run, profile, now, None)
            try:
                traits = step.update_profile.render(ctx)
            except TemplateProblem as exc:
                note("update_profile", "failed", f"template: {exc}")
                return step.next
            update_traits(conn, run.profile_id, traits, now, source=f"flow:{run.flow}")
            profile["traits"].update(traits)
            note("update_profile", "updated", ", ".join(sorted(traits)))
            return step.next
        if step.exit is not None:
            note("exit", "exited", step.exit)
            self._end(conn, run, runs.COMPLETED, step.exit, now, journal=False)
            return None
        assert step.send is not None
        return self._send(conn, flow, run, step, step.send, step_id, profile, now, live, note)

    def _send(
        self,
        conn: Connection,
        flow: Flow,
        run: runs.Run,
        step: Step,
        send: Send,
        step_id: str,
        profile: dict[str, Any],
        now: datetime,
        live: Live,
        note: _Journal,
    ) -> str | NeedsLookup | None:
        reason = self._exit_in_history(conn, flow, run, profile)
        if reason:
            self._end(conn, run, runs.EXITED, reason, now)
            return None
        fresh = self._fresh_cart(conn, flow, run, step_id, profile, now, live, note)
        if not isinstance(fresh, _Fresh):
            return fresh  # asking the source first, delayed, or the cart is gone
        blocked = self._blocked(conn, flow, run, send, profile, now)
        if isinstance(blocked, str):
            note("send", "skipped", blocked)
            self._count(run, "skipped", blocked.split(":")[0])
            return step.next
        if blocked is not None:
            zone_name, until = blocked
            run.schedule(step_id, until, "retry")
            note("send", "delayed", f"quiet hours in {zone_name}; at {until.isoformat()}")
            self._count(run, "delayed", "quiet hours")
            return None
        ctx = self._context(run, profile, now, fresh.cart)
        try:
            payload = send.render(ctx)
        except TemplateProblem as exc:
            note("send", "skipped", f"template: {exc}")
            self._count(run, "skipped", "template")
            return step.next
        for key in ("email", "phone"):
            if profile.get(key) and key not in payload:
                payload[key] = profile[key]
        payload.setdefault("profile_id", run.profile_id)
        if send.action == TRACK_EVENT:
            payload.setdefault("occurred_at", now.isoformat())
        trigger_at = (run.context.get("event") or {}).get("occurred_at")
        self._sends.append(
            {
                "destination": send.destination,
                "action": send.action,
                "idempotency_key": f"flow:{run.flow}:{run.id}:{step_id}:{run.visits}",
                "payload": payload,
                "profile_id": run.profile_id,
                "data_occurred_at": datetime.fromisoformat(trigger_at) if trigger_at else None,
            }
        )
        consent = profile["consent"].get(send.channel, "unknown")
        why = [f"consent {send.channel}: {consent}", f"cart from {(fresh.cart or {}).get('source', 'none')}"]
        note(
            "send",
            "sent",
            "; ".join(why + fresh.notes),
            {"destination": send.destination, "action": send.action, "payload": payload},
        )
        self._count(run, "sent", "")
        return step.next

    def _fresh_cart(
        self,
        conn: Connection,
        flow: Flow,
        run: runs.Run,
        step_id: str,
        profile: dict[str, Any],
        now: datetime,
        live: Live,
        note: _Journal,
    ) -> _Fresh | NeedsLookup | None:
        """The freshest cart: the source's live answer when the flow asks for one."""
        cart = profile_cart(profile)
        if flow.freshness is None:
            return _Fresh(cart, [])
        if live is NOT_ASKED:
            cart_id = evaluate(flow.freshness.cart_id, self._context(run, profile, now, cart))
            if cart_id in (None, ""):
                return _Fresh(cart, ["no cart id to look up"])
            return NeedsLookup(flow.freshness.lookup, str(cart_id))
        if isinstance(live, LookupUnavailable):
            failures = int(run.context.get("lookup_failures", 0)) + 1
            run.context = {**run.context, "lookup_failures": failures}
            if failures < flow.freshness.attempts:
                due = now + flow.freshness.retry_after
                run.schedule(step_id, due, "retry")
                note("send", "delayed", f"live lookup unavailable ({live}); again at {due.isoformat()}")
                self._count(run, "delayed", "lookup unavailable")
                return None
            return _Fresh(cart, [f"live lookup unavailable after {failures} attempts ({live}): profile data"])
        gone = None
        if live is None:
            gone = "the cart is unknown to the source (live lookup)"
        elif isinstance(live, CartState) and live.completed:
            gone = "the checkout was completed (live lookup)"
        elif isinstance(live, CartState) and (not live.exists or live.items == []):
            gone = "the cart is gone or empty (live lookup)"
        if gone is not None:
            self._count(run, "skipped", "freshness")
            self._end(conn, run, runs.EXITED, gone, now)
            return None
        assert isinstance(live, CartState)
        if live.items is None:  # the source confirmed the checkout is open, but did not list it
            return _Fresh(cart, ["live lookup: not completed"])
        return _Fresh({**(cart or {}), **_cart_from(live), "source": "live lookup"}, [])

    def _blocked(
        self, conn: Connection, flow: Flow, run: runs.Run, send: Send, profile: dict[str, Any], now: datetime
    ) -> str | tuple[str, datetime] | None:
        """Why not to send now: a skip's reason, or (zone, until) for quiet hours; None: send."""
        if send.channel == "email" and not profile.get("email"):
            return "no email address"
        consent = profile["consent"].get(send.channel, "unknown")
        policy = flow.guards.consent
        if (policy == "subscribed" and consent != "subscribed") or (
            policy == "not_unsubscribed" and consent == "unsubscribed"
        ):
            return f"consent: {send.channel} is {consent}"
        for cap, scope in ((flow.guards.frequency_cap, run.flow), (self.guards.frequency_cap, None)):
            sent = _sends_since(conn, run.profile_id, now - cap.per, scope) if cap is not None else 0
            if cap is not None and sent + self.journal.sent(run.profile_id, scope) >= cap.max:
                where = "this flow" if scope else "all flows"
                return f"frequency cap: {cap.max} per {format_duration(cap.per)} ({where})"
        quiet = flow.guards.quiet_hours or self.guards.quiet_hours
        if quiet is not None:
            tz = customer_zone(profile["traits"], self.guards.default_timezone)
            until = quiet_until(now, quiet.start, quiet.end, tz)
            if until is not None:
                return tz.key, until
        return None

    # ------------------------------------------------------------------ helpers

    def _context(
        self, run: runs.Run, profile: dict[str, Any], now: datetime, cart: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "event": run.context.get("event"),
            "matched": run.context.get("matched"),
            "run": run.doc(),
            "profile": profile,
            "cart": cart if cart is not None else profile_cart(profile),
            "now": now.isoformat(),
        }

    def _exit_in_history(
        self, conn: Connection, flow: Flow, run: runs.Run, profile: dict[str, Any]
    ) -> str | None:
        """An exit event the customer already has, even one that reached tidings late."""
        names = {n for m in flow.exit_on for n in m.names}
        if not names:
            return None
        first = datetime.fromisoformat(run.context["first_occurred_at"]) - SKEW
        for r in self._history(conn, run.profile_id, names, first):
            doc = event_doc(r.name, r.properties, r.occurred_at, r.source, r.id)
            ctx = {"event": doc, "profile": profile, "run": run.doc()}
            if any(r.name in m.names and holds(m.when, ctx) for m in flow.exit_on):
                return f"exit event {r.name!r} (occurred {doc['occurred_at']}) found before sending"
        return None

    def _history(self, conn: Connection, pid: int, names: set[str], since: datetime) -> list[Any]:
        """The customer's events named `names` since `since`, oldest first. The round's customers
        are read at once, at the first need; a run the round's read does not cover (its profile
        merged since, a flow version not loaded then) is read on its own."""
        if self._exit_rows is None:
            self._exit_rows = self._read_history(conn)
        known, covered, by_profile = self._exit_rows
        if pid in by_profile and names <= covered and since >= known:
            return [r for r in by_profile[pid] if r.name in names and r.occurred_at >= since]
        params = {"pids": [pid], "names": sorted(names), "since": since}
        return _EXIT_EVENTS.execute(conn, params).all()

    def _read_history(self, conn: Connection) -> tuple[datetime, set[str], dict[int, list[Any]]]:
        names = self.catalog.exit_names()
        firsts = [r.context.get("first_occurred_at") for r in self._round]
        if not names or not all(firsts):
            return datetime.max.replace(tzinfo=UTC), set(), {}
        since = min(datetime.fromisoformat(str(f)) for f in firsts) - SKEW
        by_profile: dict[int, list[Any]] = {r.profile_id: [] for r in self._round}
        params = {"pids": sorted(by_profile), "names": sorted(names), "since": since}
        for row in _EXIT_EVENTS.execute(conn, params):
            by_profile[row.profile_id].append(row)
        return since, names, by_profile

    def _wait(self, run: runs.Run, step_id: str, due: datetime) -> None:
        run.context = {**run.context, "waiting": step_id, "matched": None}
        run.schedule(step_id, due, "timer")

    def _end(
        self,
        conn: Connection,
        run: runs.Run,
        status: str,
        reason: str,
        now: datetime,
        *,
        journal: bool = True,
    ) -> None:
        if journal:
            _Journal(self.journal, run, run.step or "", now)("end", status, reason)
        run.end(status, reason, now)
        self.metrics.flow_runs.labels(run.flow, status).inc()

    def _count(self, run: runs.Run, outcome: str, reason: str) -> None:
        self.metrics.flow_sends.labels(run.flow, outcome, reason).inc()


class _Journal:
    """Records lines of one step of one run."""

    def __init__(self, journal: Journal, run: runs.Run, step_id: str, now: datetime) -> None:
        self.journal, self.run, self.step_id, self.now = journal, run, step_id, now

    def __call__(
        self, kind: str, outcome: str, reason: str | None, detail: dict[str, Any] | None = None
    ) -> None:
        self.journal.add(
            run_id=self.run.id,
            flow=self.run.flow,
            profile_id=self.run.profile_id,
            at=self.now,
            step=self.step_id,
            kind=kind,
            outcome=outcome,
            reason=reason,
            detail=detail,
        )


def _cart_from(state: CartState) -> dict[str, Any]:
    data = asdict(state) if is_dataclass(state) else {}
    found = {
        k: v for k, v in data.items() if v is not None and k not in ("completed", "exists", "updated_at")
    }
    if state.updated_at is not None:
        found["updated_at"] = state.updated_at.isoformat()
    return found


def _sends_since(conn: Connection, profile_id: int, since: datetime, flow: str | None) -> int:
    params = {"pid": profile_id, "since": since, "flow": flow}
    return int(_SENDS_SINCE[flow is not None].execute(conn, params).scalar_one())


_SENT = select(func.count()).where(
    flow_steps.c.profile_id == bindparam("pid"),
    flow_steps.c.kind == "send",
    flow_steps.c.outcome == "sent",
    flow_steps.c.at > bindparam("since", type_=flow_steps.c.at.type),
)
# By whether the count is of one flow's sends.
_SENDS_SINCE = {False: Prepared(_SENT), True: Prepared(_SENT.where(flow_steps.c.flow == bindparam("flow")))}
