"""`tidings profile show|timeline` and `tidings replay`, reading and writing a real store."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import tidings.cli.profiles  # noqa: F401  (registers the verbs, until tidings.cli imports it)
from tests.integration.test_replay import FIXED, WRONG, customer, post
from tidings.cli import app

runner = CliRunner()
READ = "read-token-0123456789"
CONFIG = f"""
server:
  admin_tokens:
    - {{name: dashboards, token: "{READ}", scopes: [read]}}
sources:
  web:
    kind: segment
    write_keys: ["wk_test"]
"""
SEGMENT = {"authorization": "Basic d2tfdGVzdDo=", "content-type": "application/json"}  # wk_test:


def config_file(tmp_path: Path, store_url: str, yaml_text: str) -> str:
    path = tmp_path / f"tidings-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f'storage:\n  url: "{store_url}"\n{yaml_text}')
    return str(path)


async def send(client, call: str, body: dict[str, Any]) -> None:
    response = await client.post(f"/v1/{call}", content=json.dumps(body).encode(), headers=SEGMENT)
    assert response.status_code == 200, response.text


async def a_customer(tidings, client, u: str) -> None:
    await send(
        client,
        "identify",
        {
            "messageId": "m0",
            "userId": u,
            "timestamp": "2026-03-01T10:00:00Z",
            "traits": {"email": f"{u}@example.com", "first_name": "Ann", "email_consent": "subscribed"},
        },
    )
    await send(
        client,
        "track",
        {
            "messageId": "m1",
            "userId": u,
            "event": "Product Viewed",
            "timestamp": "2026-03-01T10:05:00Z",
            "properties": {"name": "Blue Mug", "sku": "S-1"},
        },
    )
    await tidings.processor.drain()


async def test_profile_show_json_is_the_api_document(running, store_url: str, tmp_path: Path) -> None:
    u = uuid.uuid4().hex[:10]
    config = config_file(tmp_path, store_url, CONFIG)
    async with running(CONFIG) as (tidings, client):
        await a_customer(tidings, client, u)
        api = await client.get(
            f"/api/v1/profiles/{u}@example.com", headers={"authorization": f"Bearer {READ}"}
        )
        assert api.status_code == 200

        for ref in (f"{u}@example.com", f"user_id:{u}", str(api.json()["id"])):
            result = runner.invoke(app, ["profile", "show", ref, "--json", "-c", config])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout) == api.json()


async def test_profile_show_prints_identities_traits_and_consent(
    running, store_url: str, tmp_path: Path
) -> None:
    u = uuid.uuid4().hex[:10]
    config = config_file(tmp_path, store_url, CONFIG)
    async with running(CONFIG) as (tidings, client):
        await a_customer(tidings, client, u)
    result = runner.invoke(app, ["profile", "show", f"{u}@example.com", "-c", config], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in (f"{u}@example.com", "user_id", u, "first_name", "Ann", "Blue Mug", "subscribed"):
        assert text in result.stdout, text


async def test_an_unknown_profile_exits_1(running, store_url: str, tmp_path: Path) -> None:
    config = config_file(tmp_path, store_url, CONFIG)
    async with running(CONFIG):
        pass
    for verb in ("show", "timeline"):
        result = runner.invoke(app, ["profile", verb, "nobody@example.com", "--json", "-c", config])
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "nobody@example.com" in result.stderr


async def test_profile_timeline_newest_first(running, store_url: str, tmp_path: Path) -> None:
    u = uuid.uuid4().hex[:10]
    config = config_file(tmp_path, store_url, CONFIG)
    async with running(CONFIG) as (tidings, client):
        await a_customer(tidings, client, u)

    full = runner.invoke(app, ["profile", "timeline", f"{u}@example.com", "--json", "-c", config])
    assert full.exit_code == 0, full.output
    entries = json.loads(full.stdout)["entries"]
    assert [(e["kind"], e["name"]) for e in entries if e["kind"] == "event"] == [
        ("event", "Product Viewed"),
        ("event", "Identify"),
    ]
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)

    head = runner.invoke(app, ["profile", "timeline", f"user_id:{u}", "-n", "2", "--json", "-c", config])
    assert head.exit_code == 0, head.output
    page = json.loads(head.stdout)
    assert page["entries"] == entries[:2]
    assert page["next_offset"] == 2

    table = runner.invoke(
        app, ["profile", "timeline", f"{u}@example.com", "-c", config], env={"COLUMNS": "160"}
    )
    assert table.exit_code == 0, table.output
    assert table.stdout.index("Product Viewed") < table.stdout.index("Identify")
    assert "first_name" in table.stdout


async def test_replay_after_a_mapping_fix(running, clock, store_url: str, tmp_path: Path) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    async with running(WRONG) as (tidings, client):
        await post(client, clock, "app", customer(email, "gold", "2026-03-02T00:00:00Z"))
        await post(client, clock, "other", customer(email, "silver", "2026-03-01T00:00:00Z"))
        await tidings.processor.drain()
    wrong = config_file(tmp_path, store_url, WRONG)
    fixed = config_file(tmp_path, store_url, FIXED)
    since = (clock.now().replace(microsecond=0)).isoformat()

    def cli(*args: str, config: str = fixed, stdin: str | None = None) -> Any:
        return runner.invoke(app, [*args, "-c", config], input=stdin)

    async def replay_cli(*args: str, config: str = fixed, stdin: str | None = None) -> Any:
        # in a thread: the verb runs its own event loop
        return await asyncio.to_thread(cli, "replay", *args, config=config, stdin=stdin)

    declined = await replay_cli("--since", since, stdin="n\n")
    assert declined.exit_code == 1
    assert "Replay 2 stored event(s) (2 failed)?" in declined.stdout
    assert cli("profile", "show", email, "--json").exit_code == 1

    only_app = await replay_cli("--since", since, "--source", "app", "--yes", "--json")
    assert only_app.exit_code == 0, only_app.output
    summary = json.loads(only_app.stdout)
    assert {k: summary[k] for k in ("replayed", "processed", "unmapped", "failed")} == {
        "replayed": 1,
        "processed": 1,
        "unmapped": 0,
        "failed": 0,
    }
    shown = cli("profile", "show", email, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["traits"]["plan"] == "gold"

    everything = await replay_cli("--since", since, "--yes")
    assert everything.exit_code == 0, everything.output
    assert "Replayed 2: 2 processed, 0 unmapped, 0 failed" in everything.stdout
    again = cli("profile", "show", email, "--json")
    assert json.loads(again.stdout)["traits"] == json.loads(shown.stdout)["traits"]  # silver is older

    broken = await replay_cli("--since", since, "--yes", config=wrong)
    assert broken.exit_code == 0, broken.output
    assert "Replayed 2: 0 processed, 0 unmapped, 2 failed" in broken.stdout
    assert "no identity found" in broken.stdout

    later = await replay_cli("--since", "2099-01-01T00:00:00Z", "--yes")
    assert later.exit_code == 0
    assert "Nothing to replay" in later.stdout


async def test_replay_refuses_bad_options(running, store_url: str, tmp_path: Path) -> None:
    async with running(FIXED):
        pass
    config = config_file(tmp_path, store_url, FIXED)
    for args, named in (
        (["--since", "yesterday"], "--since"),
        (["--since", "2h", "--until", "3h"], "--until"),
        (["--since", "2h", "--source", "nope"], "--source"),
    ):
        result = await asyncio.to_thread(runner.invoke, app, ["replay", *args, "--yes", "-c", config])
        assert result.exit_code == 2, args
        assert named in result.stderr
