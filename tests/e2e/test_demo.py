"""`tidings demo` as a new user runs it: no config, no account, an empty directory, about a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
TIDINGS = Path(sys.executable).parent / "tidings"
SPEED = 120  # the flow's 30-minute wait in 15 s


def key(item: dict[str, Any]) -> str:
    """What makes a send the same send, on either side: who, which event, which cart."""
    return json.dumps(
        {k: item[k] for k in ("customer", "event", "cart", "value", "checkout_url")}, sort_keys=True
    )


def test_the_demo_tells_the_abandoned_cart_story_in_about_a_minute(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["COLUMNS"] = "200"
    began = time.monotonic()
    done = subprocess.run(
        [str(TIDINGS), "demo", "--speed", str(SPEED), "--json"],
        cwd=tmp_path,  # an empty directory: no tidings.yaml anywhere near
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-3000:]
    assert took < 60, f"the demo took {took:.0f} s"
    assert list(tmp_path.iterdir()) == []  # its store was temporary, and elsewhere
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["settled"] and result["runs_waiting"] == 0
    assert result["url"].startswith("http://127.0.0.1:")
    assert result["webhooks_by_topic"] == {
        "carts/create": 1,
        "checkouts/create": 4,
        "checkouts/update": 1,
        "customers/update": 1,
        "orders/create": 2,
    }
    assert (result["profiles"], result["profiles_with_email"]) == (5, 4)  # Dan stayed anonymous

    # Ann left: one reminder, with her cart as she last changed it.
    [sent] = result["sent"]
    assert (sent["customer"], sent["event"], sent["destination"], sent["delivery"]) == (
        "ann@example.com",
        "Abandoned Cart",
        "klaviyo",
        "delivered",
    )
    assert [(i["name"], i["quantity"]) for i in sent["cart"]] == [
        ("Stoneware Mug", 4),
        ("Linen Tea Towel", 1),
    ]
    assert sent["value"] == 65.0
    story_start = datetime.fromisoformat(result["story_start"])
    assert timedelta(minutes=30) < datetime.fromisoformat(sent["at"]) - story_start < timedelta(minutes=32)
    why_not = {n["customer"]: n["reason"] for n in result["not_sent"]}
    assert why_not == {
        "bob@example.com": "exit event 'Order Completed'",  # he paid
        "cat@example.com": "consent: email is unsubscribed",
        "eve@example.com": "the checkout was completed (live lookup)",  # her webhook came late
    }

    # The summary's sends are exactly what the ESP simulator accepted, and what it was sent.
    assert Counter(map(key, result["sent"])) == Counter(map(key, result["esp_received"]))
    events = [r for r in result["sandbox_requests"] if r["path"] == "/api/events"]
    assert len(events) == len(result["sent"])
    assert all(r["method"] == "POST" and r["status"] == 202 for r in result["sandbox_requests"])
    attributes = events[0]["body"]["data"]["attributes"]
    assert attributes["profile"]["data"]["attributes"]["email"] == "ann@example.com"
    assert attributes["properties"]["cartItems"] == sent["cart"]

    # The accelerated clock fires timers on time, not a poll interval (here two virtual minutes) late.
    assert len(result["timers"]) == 3  # Ann, Cat, Eve; Bob's run ended at his order
    assert max(t["late"] for t in result["timers"]) < 20, result["timers"]

    # What was shown live, as it happened (on stderr with --json).
    shown = done.stderr
    assert f"{result['url']}/ui/" in shown and "Bearer tidings_" in shown
    for line in ("Checkout Started", "SEND", "SKIPPED", "live lookup", "Klaviyo", "Summary"):
        assert line.lower() in shown.lower(), line


def test_the_demo_runs_the_abandoned_cart_example_s_flow() -> None:
    yaml = YAML(typ="safe")
    demo = yaml.load((ROOT / "src/tidings/demo/config.yaml").read_text())
    example = yaml.load((ROOT / "examples/abandoned-cart/shopify-klaviyo.yaml").read_text())
    assert demo["flows"] == example["flows"]
    assert demo["guards"] == example["guards"]
    assert demo["sandbox"] is True
    assert demo["server"]["listen"].startswith("127.0.0.1:")


def test_a_busy_port_is_refused_by_name(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(TIDINGS), "demo", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_speed_out_of_range_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(TIDINGS), "demo", "--speed", "5000"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "--speed must be between 1 and 300" in done.stderr
