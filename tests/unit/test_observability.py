"""Observability: the metrics doc matches the registry, the alert rules and the dashboard use only
metrics (and labels) that exist, the store gauges reflect the store, log lines carry their ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from ruamel.yaml import YAML

from tests.integration.test_standard_webhooks import CONFIG, SECRET, signed
from tidings.clock import FakeClock
from tidings.delivery import outbox
from tidings.exceptions import StoreError
from tidings.logging import JsonFormatter, bound
from tidings.metrics import Metrics
from tidings.observe import StoreGauges
from tidings.store import Store

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "observability.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tidings.json"

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


# --------------------------------------------------------------------------- the registry and the doc


def registry_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exported name (counters with `_total`) -> (type, label names), from a fresh `Metrics()`."""
    metrics = Metrics()
    families = {m.name: m.type for m in metrics.registry.collect()}
    labels = {
        w.describe()[0].name: tuple(w._labelnames)  # the only way to read labels with no series yet
        for w in vars(metrics).values()
        if isinstance(w, MetricWrapperBase)
    }
    assert set(labels) == set(families), "every metric of the registry is an attribute of Metrics"
    return {
        (name + "_total" if kind == "counter" else name): (kind, labels[name])
        for name, kind in families.items()
    }


def exported_names() -> dict[str, str]:
    """Every series name a scrape can show -> the metric it belongs to."""
    out = {}
    for name, (kind, _) in registry_metrics().items():
        base = name.removesuffix("_total") if kind == "counter" else name
        out[name] = name
        for suffix in SUFFIXES.get(kind, ()):
            out[base + suffix] = name
    return out


def doc_table() -> dict[str, tuple[str, tuple[str, ...], str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `(tidings_\w+)` \| (\w+) \|([^|]*)\| (.+) \|$", line)
        if m:
            name, kind, labels, meaning = m.groups()
            assert name not in rows, f"{name} is in the metrics table twice"
            rows[name] = (kind, tuple(re.findall(r"`(\w+)`", labels)), meaning.strip())
    return rows


def test_every_metric_is_documented_with_its_type_and_labels_and_nothing_else_is() -> None:
    registry = registry_metrics()
    documented = doc_table()
    assert sorted(set(registry) - set(documented)) == [], "add these to docs/observability.md"
    assert sorted(set(documented) - set(registry)) == [], "documented but not in tidings.metrics"
    for name, (kind, labels) in registry.items():
        doc_kind, doc_labels, meaning = documented[name]
        assert doc_kind == kind, f"{name} is a {kind}, documented as a {doc_kind}"
        assert doc_labels == labels, f"{name} has labels {labels}, documented as {doc_labels}"
        assert len(meaning) > 10, f"{name} needs a meaning"


# --------------------------------------------------------------------------- alerts and dashboard


def alert_rules() -> list[dict[str, Any]]:
    data = YAML(typ="safe").load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def check_expression(expr: str) -> set[str]:
    """The metrics `expr` uses; fails on an unknown series or a label those metrics do not have."""
    names = exported_names()
    metrics = registry_metrics()
    used = re.findall(r"\btidings_[a-z0-9_]+", expr)
    assert used, f"no tidings metric in {expr!r}"
    unknown = sorted({u for u in used if u not in names})
    assert unknown == [], f"{expr!r} uses series that tidings does not export: {unknown}"
    allowed = {"le"} | {label for u in used for label in metrics[names[u]][1]}
    for series, matchers in re.findall(r"(tidings_[a-z0-9_]+)\{([^}]*)\}", expr):
        own = set(metrics[names[series]][1]) | ({"le"} if series.endswith("_bucket") else set())
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in own, f"{series} has no label {label!r} ({expr!r})"
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in re.findall(r"\w+", group):
            assert label in allowed, f"grouping by {label!r}, which no metric of {expr!r} has"
    for label in re.findall(r"label_values\(\s*tidings_\w+\s*,\s*(\w+)\s*\)", expr):
        assert label in allowed, f"label_values of {label!r}, which the metric lacks"
    assert expr.count("(") == expr.count(")"), f"unbalanced parentheses in {expr!r}"
    return {names[u] for u in used}


def test_alert_rules_use_only_metrics_and_labels_that_exist() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert re.fullmatch(r"Tidings[A-Za-z0-9]+", rule["alert"])
        check_expression(rule["expr"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_the_alerts_the_brief_asks_for_exist_and_are_documented() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    doc = DOC.read_text()
    for name in by_name:
        assert f"| `{name}` |" in doc, f"{name} is not in the alerts table"
        assert f"**{name}.**" in doc, f"docs/observability.md does not say what to do when {name} fires"
    assert "tidings_delivered_data_age_seconds_bucket[5m]" in by_name["TidingsFreshnessSLOBreached"]
    assert "histogram_quantile(0.99" in by_name["TidingsFreshnessSLOBreached"]
    assert "tidings_deliveries_dead" in by_name["TidingsDeadLettersGrowing"]
    assert "tidings_destination_paused" in by_name["TidingsDestinationPaused"]
    assert "tidings_flow_timers_overdue" in by_name["TidingsFlowTimersOverdue"]
    assert "overloaded" in by_name["TidingsIngestOverloaded"]
    assert "store_unavailable" in by_name["TidingsIngestStoreUnavailable"]
    documented_alerts = set(re.findall(r"^\| `(Tidings\w+)` \|", doc, re.MULTILINE))
    assert documented_alerts == set(by_name), "the alerts table lists exactly the rules"


def test_the_dashboard_uses_only_metrics_that_exist_and_shows_what_operators_need() -> None:
    board = dashboard()
    used: set[str] = set()
    for expr in dashboard_expressions():
        used |= check_expression(expr)
    needed = {
        "tidings_ingest_items_total",
        "tidings_ingest_ack_seconds",
        "tidings_event_processing_delay_seconds",
        "tidings_deliveries_total",
        "tidings_delivered_data_age_seconds",
        "tidings_deliveries_dead",
        "tidings_destination_paused",
        "tidings_flow_timers_pending",
        "tidings_flow_timers_overdue",
        "tidings_flow_sends_total",
    }
    assert sorted(needed - used) == []
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "source", "destination"} <= variables
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"


# --------------------------------------------------------------------------- gauges read from the store


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    s.upgrade()
    try:
        yield s
    finally:
        s.close()


def add_effect(store: Store, clock: FakeClock, destination: str, key: str) -> int:
    from sqlalchemy import select

    from tidings.store.schema import outbox as table

    def write(conn: Any) -> int:
        outbox.enqueue(
            conn,
            destination=destination,
            action="track_event",
            idempotency_key=key,
            payload={},
            now=clock.now(),
        )
        return int(conn.execute(select(table.c.id).where(table.c.idempotency_key == key)).scalar_one())

    return store.write_sync(write)


def settle_as(conn: Any, effect_id: int, outcome: str, now: Any, error: str | None = None) -> None:
    one = outbox.Settlement(
        effect_id=effect_id, action="upsert_contact", attempt=1, outcome=outcome, error=error
    )
    outbox.settle(conn, [one], now)


async def test_gauges_count_dead_letters_and_unsettled_deliveries_per_destination(store, clock) -> None:
    dead = [add_effect(store, clock, "crm", f"crm-{n}") for n in range(3)]
    delivered = add_effect(store, clock, "crm", "crm-ok")
    add_effect(store, clock, "crm", "crm-waiting")
    add_effect(store, clock, "esp", "esp-waiting")
    claimed = store.write_sync(
        lambda conn: outbox.claim(
            conn, clock.now(), destinations=["esp"], limit=1, lease=timedelta(minutes=5)
        )
    )
    assert [c.effect.destination for c in claimed] == ["esp"]  # one in flight
    now = clock.now()

    def settle(conn: Any) -> None:
        for effect_id in dead:
            settle_as(conn, effect_id, "dead", now, "400: refused")
        settle_as(conn, delivered, "delivered", now)

    store.write_sync(settle)
    metrics = Metrics()
    gauges = StoreGauges(store, metrics, clock, destinations=["crm", "esp", "idle"])
    await gauges.refresh()
    assert sample(metrics, "tidings_deliveries_dead", destination="crm") == 3
    assert sample(metrics, "tidings_deliveries_dead", destination="esp") == 0
    assert sample(metrics, "tidings_deliveries_pending", destination="crm") == 1  # delivered ones aren't
    assert sample(metrics, "tidings_deliveries_pending", destination="esp") == 1  # in flight counts
    # A configured destination with nothing held still has its series, at 0.
    assert sample(metrics, "tidings_deliveries_dead", destination="idle") == 0
    assert sample(metrics, "tidings_deliveries_pending", destination="idle") == 0
    assert sample(metrics, "tidings_destination_paused", destination="idle") == 0

    # An operator sends two dead letters again: the gauges follow at the next refresh.
    store.write_sync(lambda conn: outbox.retry_dead(conn, clock.now(), dead[:2]))
    await gauges.refresh()
    assert sample(metrics, "tidings_deliveries_dead", destination="crm") == 1
    assert sample(metrics, "tidings_deliveries_pending", destination="crm") == 3


async def test_a_destination_no_longer_configured_shows_while_it_holds_rows_then_disappears(
    store, clock
) -> None:
    old = add_effect(store, clock, "old", "old-1")
    store.write_sync(lambda conn: settle_as(conn, old, "dead", clock.now(), "gone"))
    metrics = Metrics()
    gauges = StoreGauges(store, metrics, clock, destinations=["crm"])
    await gauges.refresh()
    assert sample(metrics, "tidings_deliveries_dead", destination="old") == 1
    store.write_sync(lambda conn: settle_as(conn, old, "delivered", clock.now()))
    await gauges.refresh()
    assert sample(metrics, "tidings_deliveries_dead", destination="old") is None
    assert sample(metrics, "tidings_deliveries_dead", destination="crm") == 0


async def test_paused_is_1_while_the_pause_lasts(store, clock) -> None:
    now = clock.now()
    store.write_sync(lambda conn: outbox.pause(conn, "esp", now, now + timedelta(minutes=5), "401"))
    metrics = Metrics()
    gauges = StoreGauges(store, metrics, clock, destinations=["crm", "esp"])
    await gauges.refresh()
    assert sample(metrics, "tidings_destination_paused", destination="esp") == 1
    assert sample(metrics, "tidings_destination_paused", destination="crm") == 0
    clock.advance(timedelta(minutes=5, seconds=1))
    await gauges.refresh()
    assert sample(metrics, "tidings_destination_paused", destination="esp") == 0
    assert sample(metrics, "tidings_store_gauges_refreshed_timestamp_seconds") == clock.now().timestamp()


async def test_inbox_backlog_and_its_oldest_event(running, clock) -> None:
    body = json.dumps({"type": "user.created", "data": {"email": "ann@example.com"}}).encode()
    async with running(CONFIG) as (tidings, client):
        gauges = StoreGauges(tidings.store, tidings.metrics, clock)
        await gauges.refresh()
        assert sample(tidings.metrics, "tidings_inbox_pending") == 0
        assert sample(tidings.metrics, "tidings_inbox_oldest_pending_seconds") == 0
        for n in range(2):
            response = await client.post(
                "/hooks/app", content=body, headers=signed(body, f"m{n}", clock.now())
            )
            assert response.status_code == 200
        clock.advance(90)
        await gauges.refresh()
        assert sample(tidings.metrics, "tidings_inbox_pending") == 2
        assert sample(tidings.metrics, "tidings_inbox_oldest_pending_seconds") == 90
        await tidings.processor.drain()
        await gauges.refresh()
        assert sample(tidings.metrics, "tidings_inbox_pending") == 0
        assert sample(tidings.metrics, "tidings_inbox_oldest_pending_seconds") == 0
        # And a scrape shows them.
        scrape = (await client.get("/metrics")).text
        assert "tidings_inbox_pending 0.0" in scrape


async def test_a_scrape_shows_the_store_gauges(running, clock) -> None:
    config = (
        CONFIG
        + 'destinations:\n  crm:\n    kind: webhook\n    url: "http://127.0.0.1:9/x"\n'
        + f'    secret: "{SECRET}"\n'
    )
    async with running(config) as (tidings, client):
        gauges = StoreGauges(tidings.store, tidings.metrics, clock, destinations=list(tidings.destinations))
        await gauges.refresh()
        scrape = (await client.get("/metrics")).text
        assert 'tidings_deliveries_dead{destination="crm"} 0.0' in scrape
        assert 'tidings_destination_paused{destination="crm"} 0.0' in scrape


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_the_refresh_loop_runs_until_stopped(store, clock) -> None:
    metrics = Metrics()
    gauges = StoreGauges(store, metrics, clock, destinations=["crm"], every=0.01)
    stopping = asyncio.Event()
    task = asyncio.create_task(gauges.run(stopping))
    await wait_until(lambda: sample(metrics, "tidings_deliveries_pending", destination="crm") == 0)
    dead = add_effect(store, clock, "crm", "k")
    store.write_sync(lambda conn: settle_as(conn, dead, "dead", clock.now(), "x"))
    await wait_until(lambda: sample(metrics, "tidings_deliveries_dead", destination="crm") == 1)
    stopping.set()
    await asyncio.wait_for(task, 5)


class FailingStore:
    """A store whose reads fail (database down), counting the attempts."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, fn: Any) -> Any:
        self.reads += 1
        raise StoreError("store read failed: OperationalError: unable to open database file")


async def test_a_failing_store_is_logged_once_and_the_gauges_keep_their_values(clock, caplog) -> None:
    from tidings.observe import StoreSnapshot

    metrics = Metrics()
    failing = FailingStore()
    gauges = StoreGauges(failing, metrics, clock, destinations=["crm"], every=0.005)  # type: ignore[arg-type]
    gauges.apply(StoreSnapshot(at=clock.now(), dead={"crm": 4}))
    caplog.set_level(logging.INFO, logger="tidings")
    stopping = asyncio.Event()
    task = asyncio.create_task(gauges.run(stopping))
    await wait_until(lambda: failing.reads >= 4)
    stopping.set()
    await asyncio.wait_for(task, 5)
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert actions.count("store_gauges_failed") == 1
    assert sample(metrics, "tidings_deliveries_dead", destination="crm") == 4


# --------------------------------------------------------------------------- logs


@pytest.fixture
def json_log():
    """Lines the `tidings` logger writes, formatted as in production, parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tidings")
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


async def test_an_ingest_log_line_carries_the_request_id_and_the_inbox_ids(running, clock, json_log) -> None:
    broken = b'{"type": "t", "email": "x"'
    async with running(CONFIG) as (_, client):
        response = await client.post(
            "/hooks/app",
            content=broken,
            headers={**signed(broken, "f1", clock.now()), "x-request-id": "req-42"},
        )
        assert response.json()["status"] == "flagged"
        assert response.headers["x-request-id"] == "req-42"
        refused = await client.post(
            "/hooks/nope", content=b"{}", headers={"content-type": "application/json"}
        )
        assert refused.status_code == 404
    lines = json_log()
    [flagged] = [line for line in lines if line.get("action") == "ingest_flagged"]
    assert flagged["request_id"] == "req-42"
    assert flagged["source"] == "app"
    assert len(flagged["inbox_ids"]) == 1 and isinstance(flagged["inbox_ids"][0], int)
    assert {"ts", "level", "logger", "msg"} <= set(flagged)
    [refusal] = [line for line in lines if line.get("action") == "ingest_refused"]
    assert refusal["request_id"] == refused.headers["x-request-id"] != "req-42"  # a fresh one
    assert refusal["error"] == "unknown_source"


def test_bound_fields_reach_every_line_inside_the_block_only(json_log) -> None:
    log = logging.getLogger("tidings.delivery")
    with bound(outbox_id=7, destination="crm"):
        log.warning("sent to the dead letters", extra={"action": "delivery_dead"})
        with bound(attempt=3):
            log.info("inner", extra={"action": "x"})
    log.info("outside", extra={"action": "y"})
    first, inner, outside = json_log()
    assert first["outbox_id"] == 7 and first["destination"] == "crm" and first["action"] == "delivery_dead"
    assert inner["outbox_id"] == 7 and inner["attempt"] == 3
    assert "outbox_id" not in outside and "attempt" not in outside


async def test_bound_fields_stay_with_their_task(json_log) -> None:
    log = logging.getLogger("tidings.delivery")

    async def send(outbox_id: int) -> None:
        with bound(outbox_id=outbox_id):
            await asyncio.sleep(0)  # the other send runs in between
            log.info("sent", extra={"action": "delivered"})

    await asyncio.gather(send(1), send(2))
    assert sorted(line["outbox_id"] for line in json_log()) == [1, 2]


def test_every_logged_action_is_documented() -> None:
    """Each `"action": "..."` written in src/ is in the doc's table of actions (`<loop>_failed` too)."""
    doc = DOC.read_text()
    table = doc.split("| `action` | Level | Meaning |", 1)[1].split("\n\n", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
    logged: set[str] = set()
    for path in (ROOT / "src" / "tidings").rglob("*.py"):
        text = path.read_text()
        logged |= set(re.findall(r"\"action\": \"([a-z_]+)\"", text))
        if 'f"{self.name}_failed"' in text or "(Loop)" in text:
            logged |= {f"{n}_failed" for n in re.findall(r"class \w+\(Loop\):\s+name = \"(\w+)\"", text)}
    missing = sorted(logged - documented)
    assert missing == [], f"add these actions to the table in docs/observability.md: {missing}"
