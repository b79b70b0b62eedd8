"""What the demo shows: each new thing in the store and at the simulators as a line, and the summary.

Everything is read back from where tidings keeps it (the inbox, events, the flow journal, the
outbox) and from what the simulators received, never from the script: the demo shows what
tidings did, not what it was meant to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.markup import escape
from sqlalchemy import Connection, func, select

from tidings.app import Tidings
from tidings.clock import ScaledClock
from tidings.store.schema import events, flow_runs, flow_steps, identities, inbox, outbox, profiles
from tidings.testing import ShopifySimulator

_TOKEN = re.compile(r'checkout_token:"([^"]+)"')
SHOPIFY = "Shopify API sim"
_UNTIL = re.compile(r"until (\S+)$")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)(?:\.\d+)?(?:\+00:00|Z)?")


@dataclass(frozen=True, slots=True)
class Line:
    at: datetime
    who: str  # shop | tidings | the simulator that received something
    text: str
    style: str = ""  # a Rich style


def clock_time(text: str) -> str:
    """ISO instants in a reason, as the time of day (the demo's day is one morning)."""
    return _ISO.sub(lambda m: m.group(1), text)


def people(conn: Connection) -> dict[int, str]:
    """Each profile (merged ones too) as its customer's email, else its first identity."""
    into = {r.id: r.merged_into for r in conn.execute(select(profiles.c.id, profiles.c.merged_into))}

    def root(pid: int) -> int:
        seen = 0
        while into.get(pid) is not None and seen < 100:
            pid, seen = int(into[pid] or pid), seen + 1
        return pid

    names: dict[int, str] = {}
    rows = conn.execute(select(identities.c.kind, identities.c.value, identities.c.profile_id))
    for r in sorted(rows, key=lambda r: r.kind != "email"):
        names.setdefault(root(r.profile_id), r.value if r.kind == "email" else f"{r.kind} {r.value}")
    return {pid: names.get(root(pid), f"profile {pid}") for pid in into}


def cart_text(items: Any, value: Any = None) -> str:
    if not isinstance(items, list):
        return ""
    parts = [
        f"{i.get('quantity', 1)} x {i.get('name') or i.get('sku') or '?'}"
        for i in items
        if isinstance(i, dict)
    ]
    money = f" ({value:.2f})" if isinstance(value, int | float) else ""
    return ", ".join(parts) + money


class Feed:
    """New lines since the last look."""

    def __init__(self, tidings: Tidings, shopify: ShopifySimulator) -> None:
        self.tidings = tidings
        self.shopify = shopify
        self._inbox = 0
        self._steps = 0
        self._tape = 0
        self._asked = 0

    async def poll(self) -> list[Line]:
        lines = await self.tidings.store.read(self._read)
        lines += self._received()
        lines += self._asked_shopify()
        return sorted(lines, key=lambda line: line.at)

    def _read(self, conn: Connection) -> list[Line]:
        who = people(conn)
        lines = []
        rows = conn.execute(
            select(
                inbox.c.id,
                inbox.c.topic,
                inbox.c.status,
                inbox.c.error,
                inbox.c.received_at,
                events.c.name,
                events.c.profile_id,
            )
            .outerjoin(events, events.c.inbox_id == inbox.c.id)
            .where(inbox.c.id > self._inbox)
            .order_by(inbox.c.id)
        )
        for r in rows:
            if r.status == "pending":
                break  # shown once processed, in order
            self._inbox = r.id
            if r.name is not None:
                text = escape(f"{r.name} from {r.topic} ({who.get(r.profile_id, '?')})")
                text = f"event {text}"
                lines.append(Line(r.received_at, "tidings", text))
            else:
                lines.append(
                    Line(r.received_at, "tidings", escape(f"{r.topic}: {r.status} {r.error or ''}"), "yellow")
                )
        steps = conn.execute(
            select(flow_steps, flow_runs.c.run_key)
            .join(flow_runs, flow_runs.c.id == flow_steps.c.run_id)
            .where(flow_steps.c.id > self._steps)
            .order_by(flow_steps.c.id)
        )
        for s in steps:
            self._steps = s.id
            lines.append(Line(s.at, "tidings", _step_text(s, who.get(s.profile_id, "?")), _step_style(s)))
        return lines

    def _received(self) -> list[Line]:
        sandbox = self.tidings.sandbox
        if sandbox is None:
            return []
        lines = []
        for r in sandbox.requests(after_id=self._tape):
            self._tape = r.id
            what = ""
            if isinstance(r.body, dict) and r.kind == "klaviyo":
                attributes = (r.body.get("data") or {}).get("attributes") or {}
                metric = _dig(attributes, "metric", "data", "attributes", "name")
                email = _dig(attributes, "profile", "data", "attributes", "email")
                if metric:
                    what = escape(f": {metric!r} for {email}")
            style = "green" if r.status is not None and r.status < 300 else "red"
            lines.append(
                Line(r.at, f"{r.destination} (simulated)", f"{r.method} {r.path} -> {r.status}{what}", style)
            )
        return lines

    def _asked_shopify(self) -> list[Line]:
        lines = []
        clock = self.tidings.clock
        for asked in self.shopify.requests[self._asked :]:
            self._asked += 1
            try:
                variables = json.loads(asked.body).get("variables") or {}
            except (ValueError, AttributeError):
                variables = {}
            found = _TOKEN.search(str(variables.get("query", "")))
            text = f"was checkout {found.group(1)} bought?" if found else f"asked: {variables}"
            at = clock.at_monotonic(asked.at) if isinstance(clock, ScaledClock) else clock.now()
            lines.append(Line(at, SHOPIFY, escape(text), "cyan"))
        return lines


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _step_text(s: Any, customer: str) -> str:
    """A journal line (markup; the data in it escaped)."""
    reason, customer = escape(clock_time(s.reason or "")), escape(customer)
    if s.kind == "trigger":
        return f"run [bold]{s.flow}[/] started for {customer} (checkout {escape(s.run_key)})"
    if s.kind == "send" and s.outcome == "sent":
        detail = s.detail or {}
        payload = detail.get("payload") or {}
        props = payload.get("properties") or {}
        cart = escape(cart_text(props.get("cartItems"), props.get("cartValue")))
        return (
            f"[bold]SEND[/] {detail.get('action')} {payload.get('event', '')!r} to {customer} "
            f"via {detail.get('destination')}: {cart} [dim]({reason})[/]"
        )
    if s.kind == "send":
        return f"[bold]{s.outcome.upper()}[/] send to {customer}: {reason}"
    if s.kind in ("exit", "end"):
        return f"run for {customer} ended ({s.outcome}): {reason}"
    return f"{customer}: {s.kind} {s.outcome}: {reason}"


def _step_style(s: Any) -> str:
    if s.kind == "send":
        return {"sent": "bold green", "skipped": "bold yellow", "delayed": "yellow"}.get(s.outcome, "")
    if s.kind in ("exit", "end"):
        return "magenta"
    return ""


# --------------------------------------------------------------------------- the summary


@dataclass(slots=True)
class Summary:
    webhooks: dict[str, int] = field(default_factory=dict)  # by topic
    events: int = 0
    profiles: int = 0  # not merged into another
    with_email: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    not_sent: list[dict[str, Any]] = field(default_factory=list)
    waiting: int = 0  # runs still active
    timers: list[dict[str, Any]] = field(default_factory=list)  # each wait that timed out: due, fired

    def as_json(self) -> dict[str, Any]:
        return {
            "webhooks_received": sum(self.webhooks.values()),
            "webhooks_by_topic": self.webhooks,
            "events": self.events,
            "profiles": self.profiles,
            "profiles_with_email": self.with_email,
            "sent": self.sent,
            "not_sent": self.not_sent,
            "runs_waiting": self.waiting,
            "timers": self.timers,
        }


def summarize(conn: Connection) -> Summary:
    who = people(conn)
    out = Summary()
    for r in conn.execute(
        select(inbox.c.topic, func.count()).group_by(inbox.c.topic).order_by(inbox.c.topic)
    ):
        out.webhooks[str(r[0])] = int(r[1])
    out.events = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
    roots = [r.id for r in conn.execute(select(profiles.c.id).where(profiles.c.merged_into.is_(None)))]
    out.profiles = len(roots)
    out.with_email = sum(1 for pid in roots if "@" in who.get(pid, "") and " " not in who.get(pid, ""))
    deliveries = {
        r.idempotency_key: r for r in conn.execute(select(outbox.c.idempotency_key, outbox.c.status))
    }
    runs = list(conn.execute(select(flow_runs).order_by(flow_runs.c.id)))
    for run in runs:
        steps = list(
            conn.execute(select(flow_steps).where(flow_steps.c.run_id == run.id).order_by(flow_steps.c.id))
        )
        customer = who.get(run.profile_id, "?")
        out.timers += _timers(steps, customer)
        sends = [s for s in steps if s.kind == "send" and s.outcome == "sent"]
        for s in sends:
            detail = s.detail or {}
            payload = detail.get("payload") or {}
            props = payload.get("properties") or {}
            prefix = f"flow:{run.flow}:{run.id}:{s.step}:"
            status = next((d.status for key, d in deliveries.items() if key.startswith(prefix)), None)
            out.sent.append(
                {
                    "customer": customer,
                    "flow": run.flow,
                    "run_key": run.run_key,
                    "destination": detail.get("destination"),
                    "action": detail.get("action"),
                    "event": payload.get("event"),
                    "cart": props.get("cartItems"),
                    "value": props.get("cartValue"),
                    "checkout_url": props.get("checkoutUrl"),
                    "delivery": status,
                    "at": s.at.isoformat(),
                }
            )
        if sends:
            continue
        if run.status == "active":
            out.waiting += 1
            continue
        skipped = [s for s in steps if s.kind == "send" and s.outcome == "skipped"]
        reason = skipped[-1].reason if skipped else run.end_reason
        out.not_sent.append(
            {
                "customer": customer,
                "flow": run.flow,
                "run_key": run.run_key,
                "status": run.status,
                "reason": reason,
            }
        )
    return out


def _timers(steps: list[Any], customer: str) -> list[dict[str, Any]]:
    """When each wait_for that timed out was due (from its journal line) and when it fired."""
    out = []
    due: datetime | None = None
    for s in steps:
        if s.kind != "wait_for":
            continue
        if s.outcome == "waiting":
            found = _UNTIL.search(s.reason or "")
            due = datetime.fromisoformat(found.group(1)) if found else None
        elif s.outcome == "timeout" and due is not None:
            late = (s.at - due).total_seconds()
            out.append(
                {"customer": customer, "due": due.isoformat(), "fired": s.at.isoformat(), "late": late}
            )
            due = None
    return out


def esp_received(tidings: Tidings) -> list[dict[str, Any]]:
    """The events the Klaviyo simulator accepted (what Klaviyo would have recorded)."""
    out: list[dict[str, Any]] = []
    sandbox = tidings.sandbox
    if sandbox is None:
        return out
    for name, simulator in sandbox.simulators.items():
        for event in list(getattr(simulator, "accepted_events", [])):
            props = event.get("properties") or {}
            metric = event.get("metric")
            out.append(
                {
                    "destination": name,
                    "customer": _dig(event, "profile", "data", "attributes", "email"),
                    "event": _dig(metric, "data", "attributes", "name")
                    if isinstance(metric, dict)
                    else metric,
                    "cart": props.get("cartItems"),
                    "value": props.get("cartValue"),
                    "checkout_url": props.get("checkoutUrl"),
                }
            )
    return out


def recorded_requests(tidings: Tidings) -> list[dict[str, Any]]:
    """Every request the sandbox's simulators received (as GET /api/v1/sandbox/requests gives them)."""
    sandbox = tidings.sandbox
    if sandbox is None:
        return []
    return [json.loads(json.dumps(r.as_json(), default=str)) for r in sandbox.requests()]
