"""The operator verbs that mirror the admin API, on a real store: `deliveries show|retry`,
`destinations list|backfill`, `token new`. `--json` prints what the API answers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

import tidings.cli.deliveries as deliveries_cli
from tests.integration.test_admin_api import (
    LIST,
    MC_KEY,
    RW,
    SECRET,
    customers,
    dead_letters,
    delivery_config,
    identify,
    outbox_rows,
)
from tidings.cli import app
from tidings.config import parse_settings
from tidings.delivery import outbox
from tidings.store.schema import outbox as outbox_table
from tidings.testing import WebhookSink
from tidings.testing.mailchimp import MailchimpSimulator

runner = CliRunner()
R = {"authorization": "Bearer read-token-0123456789"}


@pytest.fixture
def sink():
    with WebhookSink(SECRET).running() as server:
        yield server


@pytest.fixture
def mailchimp():
    with MailchimpSimulator(MC_KEY, lists={LIST}).running() as server:
        yield server


@pytest.fixture
def yaml_text(sink, mailchimp) -> str:
    return delivery_config(sink.url, mailchimp.url)


@pytest.fixture
def cli(tmp_path: Path, store_url: str, yaml_text: str):
    """`cli(*args, input=...)`: the command on the same store and config as the running tidings."""
    path = tmp_path / f"tidings-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f'storage:\n  url: "{store_url}"\n{yaml_text}')

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, [*args, "-c", str(path)], input=input)

    return invoke


# ------------------------------------------------------------------ deliveries show


async def test_deliveries_show_prints_the_api_document_or_a_panel(
    running, yaml_text, sink, cli, clock
) -> None:
    async with running(yaml_text) as (tidings, client):
        await identify(client, 1, {"email": "ann@example.com", "first_name": "Ann"}, userId="u1")
        await tidings.processor.drain()
        sink.fail_next(status=503, body={"error": "down for a moment"})
        await tidings.dispatcher.run_once()
        crm = next(r for r in outbox_rows(tidings) if r.destination == "crm")
        api = (await client.get(f"/api/v1/deliveries/{crm.id}", headers=R)).json()

        shown = cli("deliveries", "show", str(crm.id), "--json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout) == api

        panel = cli("deliveries", "show", str(crm.id))
        assert panel.exit_code == 0, panel.output
        for text in (f"Delivery #{crm.id}", "crm", "upsert_contact", "pending", "retry", "503", "down for"):
            assert text in panel.stdout, text

        missing = cli("deliveries", "show", "999999")
        assert missing.exit_code == 1
        assert "No delivery with id 999999" in missing.stderr
        assert cli("deliveries", "show", "abc").exit_code == 2
        assert cli("deliveries", "show", "0").exit_code == 2


# ------------------------------------------------------------------ deliveries retry


async def test_deliveries_retry_all_in_batches_with_json(running, yaml_text, cli, clock, monkeypatch) -> None:
    monkeypatch.setattr(deliveries_cli, "RETRY_BATCH", 2)  # several batches: the progress bar path
    async with running(yaml_text) as (tidings, _):
        ids = await dead_letters(tidings, clock, 5)
        done = cli("deliveries", "retry", "--all", "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {"queued": 5}
        assert {r.status for r in outbox_rows(tidings)} == {"pending"}
        again = cli("deliveries", "retry", "--all")
        assert again.exit_code == 0 and "0 dead letter(s) queued again" in again.stdout

        tidings.store.write_sync(
            lambda c: c.execute(update(outbox_table).where(outbox_table.c.id == ids[0]).values(status="dead"))
        )
        refused = cli("deliveries", "retry", str(ids[0]), str(ids[1]))
        assert refused.exit_code == 1
        assert f"delivery {ids[1]} is pending" in refused.stderr
        assert outbox_rows(tidings)[0].status == "dead"  # nothing retried
        unknown = cli("deliveries", "retry", "999999")
        assert unknown.exit_code == 1 and "no delivery with id 999999" in unknown.stderr
        one = cli("deliveries", "retry", str(ids[0]), "--json")
        assert json.loads(one.stdout) == {"queued": 1}

        assert cli("deliveries", "retry").exit_code == 2  # neither ids nor --all
        assert cli("deliveries", "retry", "1", "--all").exit_code == 2  # both


# ------------------------------------------------------------------ destinations list


async def test_destinations_list_json_is_the_api_document_and_the_table_shows_pauses(
    running, yaml_text, cli, clock
) -> None:
    async with running(yaml_text) as (tidings, client):
        await dead_letters(tidings, clock, 2)
        until = datetime.now(UTC) + timedelta(hours=1)  # the CLI reads the system clock
        tidings.store.write_sync(
            lambda c: outbox.pause(c, "mc", clock.now(), until, "mailchimp: 401 API key")
        )
        clock.set(datetime.now(UTC))
        api = (await client.get("/api/v1/destinations", headers=R)).json()

        listed = cli("destinations", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert json.loads(listed.stdout) == api
        assert [d["deliveries"]["dead"] for d in api] == [2, 0, 0, 0]

        table = cli("destinations", "list")
        assert table.exit_code == 0, table.output
        for text in ("crm", "webhook", "mailchimp", "mandrill", "paused", "mc is paused until"):
            assert text in table.stdout, text
        assert table.stdout.rstrip().endswith("UTC: mailchimp: 401 API key")


# ------------------------------------------------------------------ destinations backfill


async def test_destinations_backfill_asks_queues_in_batches_and_is_idempotent_per_run(
    running, yaml_text, sink, cli, clock
) -> None:
    async with running(yaml_text) as (tidings, client):
        await customers(tidings, client)
        await tidings.dispatcher.drain()

        declined = cli("destinations", "backfill", "crm", input="n\n")
        assert declined.exit_code == 1
        assert "Queue a no-trigger push of 2 profile(s) to 'crm' (webhook)?" in declined.stderr
        assert [r for r in outbox_rows(tidings) if r.status == "pending"] == []

        asked = cli("destinations", "backfill", "crm", "--run", "r1", "--batch-size", "1", input="y\n")
        assert asked.exit_code == 0, asked.output
        assert "Queued 2 push(es) to crm for 2 profile(s) (run r1)" in asked.stdout
        again = cli("destinations", "backfill", "crm", "--run", "r1", "--yes", "--json")
        assert json.loads(again.stdout) == {"destination": "crm", "run": "r1", "profiles": 2, "queued": 0}

        sink.received.clear()
        clock.set(datetime.now(UTC) + timedelta(seconds=1))  # the CLI queued them at the system time
        await tidings.dispatcher.drain()  # the running tidings sends what the CLI queued
        assert sorted(
            (p["data"]["fields"]["FNAME"], p["data"]["backfill"]) for p in sink.received.values()
        ) == [
            ("Ann", True),
            ("Bob", True),
        ]
        api = await client.post("/api/v1/destinations/crm/backfill", json={"run": "r1"}, headers=RW)
        assert api.json()["queued"] == 0  # the API and the CLI share the run


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["nosuch"], 1, "no destination named 'nosuch'"),
        (["mandrill"], 1, "does not keep contacts"),
        (["plain"], 1, "has no profile_sync"),
        (["crm", "--run", "has space"], 2, "--run"),
        (["crm", "--batch-size", "0"], 2, "--batch-size"),
    ],
)
async def test_destinations_backfill_refuses_naming_the_problem(
    running, yaml_text, cli, args, code, said
) -> None:
    async with running(yaml_text) as (tidings, _):
        result = cli("destinations", "backfill", *args, "--yes")
        assert result.exit_code == code, result.output
        assert said in result.stderr
        assert outbox_rows(tidings) == []


# ------------------------------------------------------------------ token new


def test_token_new_prints_a_token_and_an_entry_holding_only_its_hash() -> None:
    result = runner.invoke(app, ["token", "new", "--name", "ci", "--scopes", "read,write"])
    assert result.exit_code == 0, result.output
    token, *entry = result.stdout.splitlines()
    assert token.startswith("tidings_") and len(token) > 40
    yaml_entry = "\n".join(entry)
    assert token not in yaml_entry
    settings = parse_settings(yaml_entry, "t.yaml", {})
    [configured] = settings.server.admin_tokens
    assert (configured.name, configured.scopes, configured.token) == ("ci", ["read", "write"], None)
    other = runner.invoke(app, ["token", "new", "--json"]).stdout
    assert json.loads(other)["token"] != token  # fresh each time


async def test_a_token_from_token_new_opens_the_api(running) -> None:
    made = json.loads(
        runner.invoke(app, ["token", "new", "--name", "robot", "--scopes", "write", "--json"]).stdout
    )
    assert made["scopes"] == ["write"] and made["name"] == "robot"
    config = f"""
server:
  admin_tokens:
    - {{name: robot, token_sha256: "{made["token_sha256"]}", scopes: [write]}}
"""
    async with running(config) as (_, client):
        ok = await client.post(
            "/api/v1/deliveries/retry", json={}, headers={"authorization": f"Bearer {made['token']}"}
        )
        assert ok.status_code == 200, ok.text
        read = await client.get("/api/v1/deliveries", headers={"authorization": f"Bearer {made['token']}"})
        assert read.status_code == 403
        hashed = await client.get(
            "/api/v1/deliveries", headers={"authorization": f"Bearer {made['token_sha256']}"}
        )
        assert hashed.status_code == 401  # the hash is not the secret


@pytest.mark.parametrize(("args", "said"), [(["--scopes", "admin"], "'admin'"), (["--scopes", ""], "''")])
def test_token_new_refuses_an_unknown_scope(args: list[str], said: str) -> None:
    result = runner.invoke(app, ["token", "new", *args])
    assert result.exit_code == 2
    assert said in result.stderr and "--scopes" in result.stderr
