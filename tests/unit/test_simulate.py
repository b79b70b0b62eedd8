"""`tidings simulate` on the shipped abandoned-cart example: what it would send, and a change's effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidings.cli import app
from tidings.config import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "abandoned-cart"
runner = CliRunner()


@pytest.mark.parametrize("config", ["shopify-klaviyo.yaml", "shopify-mailchimp.yaml"])
def test_the_examples_are_valid_configs(config: str) -> None:
    settings = load_settings(EXAMPLE / config, environ={})
    assert "abandoned_cart" in settings.flows


def decisions(args: list[str]) -> list[dict]:
    result = runner.invoke(app, [*args, "--events", str(EXAMPLE / "events.jsonl"), "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["decisions"]


def test_the_example_reminds_only_the_customer_who_abandoned_and_said_yes() -> None:
    found = decisions(["simulate", "-c", str(EXAMPLE / "shopify-klaviyo.yaml")])
    by_outcome = {(d["customer"], d["outcome"]) for d in found}
    # Ann abandoned (and updated her cart), Bob bought, Cat unsubscribed.
    assert by_outcome == {("ann@example.com", "sent"), ("cat@example.com", "skipped")}
    [sent] = [d for d in found if d["outcome"] == "sent"]
    assert sent["at"].startswith("2026-03-02T10:30")  # 30 minutes after the checkout started
    properties = sent["payload"]["properties"]
    assert properties["cartItems"][0]["quantity"] == 4  # the update at 10:20, not the first cart
    assert properties["cartValue"] == 65.0
    assert properties["checkoutUrl"].endswith("/ann0checkout/recover")
    [skipped] = [d for d in found if d["outcome"] == "skipped"]
    assert skipped["reason"] == "consent: email is unsubscribed"


def test_the_mailchimp_example_triggers_the_journey_step() -> None:
    found = decisions(["simulate", "-c", str(EXAMPLE / "shopify-mailchimp.yaml")])
    [sent] = [d for d in found if d["outcome"] == "sent"]
    assert sent["action"] == "trigger_journey"
    assert sent["payload"]["email"] == "ann@example.com"
    assert (sent["payload"]["journey_id"], sent["payload"]["step_id"]) == ("101", "202")


def test_compare_shows_what_a_shorter_wait_would_change(tmp_path: Path) -> None:
    old = EXAMPLE / "shopify-klaviyo.yaml"
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("timeout: 30m", "timeout: 15m"))
    result = runner.invoke(
        app,
        [
            "simulate",
            "--compare",
            str(old),
            str(new),
            "--events",
            str(EXAMPLE / "events.jsonl"),
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    changes = {(c["run_key"], c["occurrence"]): c for c in json.loads(result.output)["changes"]}
    first = changes[("ann0checkout", 1)]
    assert first["kind"] == "changed" and "at" in first["differences"]
    assert first["new"]["at"].startswith("2026-03-02T10:15")
    assert first["new"]["payload"]["properties"]["cartItems"][0]["quantity"] == 2  # before the update
    # The update at 10:20 then starts a second run, which the daily cap stops.
    assert changes[("ann0checkout", 2)]["new"]["reason"] == "frequency cap: 1 per 1d (this flow)"


def test_a_bad_events_line_is_named(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "track", "event": "X", "timestamp": "2026-01-01T00:00:00Z"}\nnot json\n')
    result = runner.invoke(app, ["simulate", "--events", str(events)])
    assert result.exit_code != 0
    assert f"{events}:2: not JSON" in str(result.exception)
