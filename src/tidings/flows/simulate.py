"""Replaying a recorded event stream through the flows on a virtual clock, touching nothing outside.

The events go through the real path (mapping, profiles, flows) into a throwaway SQLite store; the
clock jumps from one event to the next and to every timer due in between, so a month of history
replays in seconds. The dispatcher never runs: what the flows would send is read from their
journal. A flow's live cart lookup is answered from the profile (history cannot be asked now).

Each line of the events file is one of:
- a Segment-style call: `{"type": "track", "event": "Checkout Started", "userId": ...,
  "timestamp": ..., "properties": {...}}` or `{"type": "identify", "traits": {...}}` (`type`
  defaults to track when `event` is given);
- a raw source payload: `{"source": "shop", "topic": "checkouts/create", "body": {...},
  "received_at": ...}`, mapped by that source's mapping as if it had just arrived (no signature).
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

from tidings.api.app import create_app
from tidings.app import Tidings
from tidings.clock import FakeClock
from tidings.config import Settings
from tidings.events import parse_time
from tidings.exceptions import TidingsError
from tidings.flows import runs
from tidings.ingest.segment import SegmentSettings
from tidings.lookups.base import CartLookup, CartState
from tidings.store.schema import flow_runs, flow_steps, identities, inbox, requests

SIM_SOURCE = "_simulated"
HORIZON = timedelta(days=60)  # how long after the last event timers are still followed


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A send the flows would make, or one they skipped or delayed, and why."""

    at: datetime
    flow: str
    run_key: str
    customer: str | None
    step: str
    outcome: str  # sent | skipped | delayed
    reason: str | None
    destination: str | None = None
    action: str | None = None
    payload: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "flow": self.flow,
            "run_key": self.run_key,
            "customer": self.customer,
            "step": self.step,
            "outcome": self.outcome,
            "reason": self.reason,
            "destination": self.destination,
            "action": self.action,
            "payload": self.payload,
        }


@dataclass(slots=True)
class Simulation:
    decisions: list[Decision] = field(default_factory=list)
    events: int = 0
    runs: dict[str, int] = field(default_factory=dict)  # by status

    @property
    def sends(self) -> list[Decision]:
        return [d for d in self.decisions if d.outcome == "sent"]


class _FromProfile(CartLookup):
    """History cannot be asked now: the cart is what the profile says."""

    async def cart(self, cart_id: str) -> CartState | None:
        return CartState(completed=False)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSONL file, each a JSON object; a bad line is an error naming it."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TidingsError(f"{path}:{number}: not JSON: {exc.msg}") from exc
        if not isinstance(item, dict):
            raise TidingsError(f"{path}:{number}: each line must be a JSON object")
        try:
            item["_at"] = _when(item)
        except ValueError as exc:
            raise TidingsError(f"{path}:{number}: {exc}") from exc
        item["_line"] = number
        out.append(item)
    return sorted(out, key=lambda i: (i["_at"], i["_line"]))


def _when(item: dict[str, Any]) -> datetime:
    for key in ("received_at", "timestamp", "occurred_at", "originalTimestamp", "sentAt"):
        if item.get(key) is not None:
            return parse_time(item[key])
    raise ValueError("no time: give `timestamp` (a call) or `received_at` (a raw payload)")


async def simulate(settings: Settings, events: Iterable[dict[str, Any]]) -> Simulation:
    """Every send, skip and delay the flows of `settings` would make for `events`."""
    items = list(events)
    write_key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="tidings-simulate-") as folder:
        sources = {
            **settings.sources,
            SIM_SOURCE: SegmentSettings.model_validate({"kind": "segment", "write_keys": [write_key]}),
        }
        storage = settings.storage.model_copy(
            update={"url": f"sqlite:///{Path(folder) / 'simulate.db'}", "sqlite_synchronous": "OFF"}
        )
        sim = settings.model_copy(update={"sources": sources, "storage": storage, "sandbox": True})
        start = items[0]["_at"] if items else datetime.now().astimezone()
        clock = FakeClock(start)
        async with Tidings(sim, clock=clock, process=False) as tidings:
            tidings.runner.lookups = dict.fromkeys(tidings.runner.lookups, _FromProfile())
            for name, source in settings.sources.items():
                if getattr(source, "lookup", None) is not None:
                    tidings.runner.lookups[name] = _FromProfile()
            app = create_app(tidings, manage_lifecycle=False)
            transport = httpx.ASGITransport(app=app)
            auth = httpx.BasicAuth(write_key, "")
            async with httpx.AsyncClient(
                transport=transport, base_url="http://simulate", auth=auth
            ) as client:
                for item in items:
                    await _fire_until(tidings, clock, item["_at"])
                    await _deliver(tidings, client, item)
                    await tidings.processor.drain()
                    await tidings.runner.drain()
                last = items[-1]["_at"] if items else start
                await _fire_until(tidings, clock, last + HORIZON)
            return await tidings.store.read(lambda conn: _result(conn, len(items)))


async def _fire_until(tidings: Tidings, clock: FakeClock, until: datetime) -> None:
    """Move the clock to each timer due before `until`, firing it, then to `until`."""
    while True:
        due = await tidings.store.read(runs.next_due)
        if due is None or due > until:
            break
        clock.set(max(clock.now(), due))
        await tidings.runner.drain()
    clock.set(max(clock.now(), until))


async def _deliver(tidings: Tidings, client: httpx.AsyncClient, item: dict[str, Any]) -> None:
    body = {k: v for k, v in item.items() if not k.startswith("_")}
    if "source" in body and "body" in body:
        await tidings.store.write(lambda conn: _store_raw(conn, body, item["_at"]))
        return
    kind = body.pop("type", "track" if "event" in body else "identify")
    body.setdefault("messageId", f"sim-{item['_line']}")
    response = await client.post(f"/v1/{kind}", json=body)
    if response.status_code != 200:
        raise TidingsError(f"event on line {item['_line']}: {response.json().get('detail', response.text)}")


def _store_raw(conn: Any, item: dict[str, Any], at: datetime) -> None:
    raw = json.dumps(item["body"]).encode()
    request_id = conn.execute(
        insert(requests)
        .values(source=item["source"], received_at=at, method="POST", url="simulate", headers={}, body=raw)
        .returning(requests.c.id)
    ).scalar_one()
    conn.execute(
        insert(inbox).values(
            request_id=request_id,
            source=item["source"],
            item_index=0,
            dedupe_key=f"simulate:{request_id}",
            topic=item.get("topic"),
            payload=None,
            received_at=at,
            status="pending",
        )
    )


def _result(conn: Any, count: int) -> Simulation:
    emails = {
        r.profile_id: r.value
        for r in conn.execute(
            select(identities.c.profile_id, identities.c.value).where(identities.c.kind == "email")
        )
    }
    keys = {
        r.id: (r.run_key, r.profile_id)
        for r in conn.execute(select(flow_runs.c.id, flow_runs.c.run_key, flow_runs.c.profile_id))
    }
    out = Simulation(events=count)
    for r in conn.execute(select(flow_runs.c.status)):
        out.runs[r.status] = out.runs.get(r.status, 0) + 1
    rows = conn.execute(
        select(flow_steps).where(flow_steps.c.kind == "send").order_by(flow_steps.c.at, flow_steps.c.id)
    )
    for r in rows:
        key, pid = keys.get(r.run_id, ("?", r.profile_id))
        detail = r.detail or {}
        out.decisions.append(
            Decision(
                at=r.at,
                flow=r.flow,
                run_key=key,
                customer=emails.get(pid),
                step=r.step,
                outcome=r.outcome,
                reason=r.reason,
                destination=detail.get("destination"),
                action=detail.get("action"),
                payload=detail.get("payload"),
            )
        )
    return out


def _keyed(result: Simulation) -> dict[tuple[str, str, str, int], Decision]:
    """Final decisions (not delays) by flow, run key, step and occurrence."""
    out: dict[tuple[str, str, str, int], Decision] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for d in result.decisions:
        if d.outcome == "delayed":
            continue
        base = (d.flow, d.run_key, d.step)
        seen[base] = seen.get(base, 0) + 1
        out[(*base, seen[base])] = d
    return out


@dataclass(frozen=True, slots=True)
class Change:
    """How one send differs between two configs."""

    key: tuple[str, str, str, int]  # flow, run key, step, and which time for that key (1, 2, ...)
    kind: str  # added | removed | changed
    old: Decision | None
    new: Decision | None
    differences: list[str]


def compare(old: Simulation, new: Simulation) -> list[Change]:
    """Send by send (flow, run key, step), what the new config would do differently."""
    before, after = _keyed(old), _keyed(new)
    changes = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            changes.append(Change(key, "added" if a is None else "removed", a, b, []))
            continue
        differences = []
        for name in ("outcome", "at", "destination", "action", "payload", "reason"):
            if getattr(a, name) != getattr(b, name):
                differences.append(name)
        if differences:
            changes.append(Change(key, "changed", a, b, differences))
    return changes
