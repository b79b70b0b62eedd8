"""tidings.yaml loading: every problem at once, located by file, line and key; secrets out of sight."""

from __future__ import annotations

import re
import textwrap
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

from tidings.config import Settings, load_settings, parse_duration, parse_settings
from tidings.exceptions import ConfigProblem, ConfigurationError
from tidings.ingest.registry import RECEIVERS

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_WHSEC = "whsec_b3RoZXItc2VjcmV0LW9mLTI0LWJ5dGVzIQ=="


def parse(yaml_text: str, environ: dict[str, str] | None = None, file: str = "tidings.yaml") -> Settings:
    return parse_settings(textwrap.dedent(yaml_text), file, environ or {})


def problems_of(yaml_text: str, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigurationError) as caught:
        parse(yaml_text, environ)
    return caught.value.problems


def located(problems: list[ConfigProblem]) -> list[tuple[int | None, str]]:
    return [(p.line, p.path) for p in problems]


# ------------------------------------------------------------------ errors: where, and all at once


def test_three_mistakes_are_three_problems_each_with_its_line_and_key() -> None:
    problems = problems_of(
        """\
        server:
          listen: localhost
          max_body_bytes: 0
        storage:
          dedupe_window: forever
        """
    )
    assert located(problems) == [
        (2, "server.listen"),
        (3, "server.max_body_bytes"),
        (5, "storage.dedupe_window"),
    ]
    assert "HOST:PORT" in problems[0].message
    assert "not a duration" in problems[2].message


def test_a_problem_reads_file_line_key_message() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_settings("server:\n  listen: nowhere\n", "/etc/tidings/tidings.yaml", {})
    [problem] = caught.value.problems
    assert (
        str(problem) == "/etc/tidings/tidings.yaml:2: server.listen: expected HOST:PORT, e.g. 127.0.0.1:8080"
    )
    assert str(problem) in str(caught.value)
    assert str(caught.value).startswith("1 problem(s)")


def test_problems_from_every_stage_are_reported_together_in_line_order() -> None:
    problems = problems_of(
        """\
        sources:
          app:
            kind: standard-webhooks
            secrets: ["${APP_SECRET}"]
            colour: blue
        server:
          listen: nope
        """
    )
    assert located(problems) == [
        (4, "sources.app.secrets[0]"),  # substitution
        (5, "sources.app.colour"),  # validation
        (7, "server.listen"),
    ]


def test_unknown_keys_are_errors_with_their_line() -> None:
    problems = problems_of(
        f"""\
        server:
          listn: 127.0.0.1:9000
        sources:
          app:
            kind: standard-webhooks
            secrets: ["{WHSEC}"]
            tolerence: 10m
        extras: true
        """
    )
    assert located(problems) == [(2, "server.listn"), (7, "sources.app.tolerence"), (8, "extras")]
    assert {p.message for p in problems} == {"unknown key"}


def test_a_missing_required_key_is_named_at_its_parents_line() -> None:
    problems = problems_of(
        """\
        server:
          admin_tokens:
            - token: "0123456789abcdef-long-enough"
        sources:
          app:
            kind: standard-webhooks
        """
    )
    assert located(problems) == [(3, "server.admin_tokens[0].name"), (5, "sources.app.secrets")]
    assert all("required" in p.message for p in problems)


def test_an_unknown_source_kind_lists_the_known_kinds() -> None:
    [problem] = problems_of(
        """\
        sources:
          crm:
            kind: pipedrive
            secrets: [x]
        """
    )
    assert (problem.line, problem.path) == (3, "sources.crm.kind")
    assert "pipedrive" in problem.message
    for kind in RECEIVERS:
        assert kind in problem.message


def test_a_source_without_kind_says_which_kinds_exist() -> None:
    [problem] = problems_of("sources:\n  crm:\n    secrets: [x]\n")
    assert (problem.line, problem.path) == (2, "sources.crm.kind")
    assert "standard-webhooks" in problem.message


def test_a_source_name_that_cannot_be_a_url_segment_is_refused() -> None:
    [problem] = problems_of(f"sources:\n  my shop:\n    kind: standard-webhooks\n    secrets: ['{WHSEC}']\n")
    assert (problem.line, problem.path) == (2, "sources.my shop")
    assert "name" in problem.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("server:\n  listen: [127.0.0.1\nstorage: {}\n", 3),
        ("server:\n  listen: 1\n   bad: indentation\n", 3),
        ("sources:\n  a: {kind: x\n", 3),
    ],
    ids=["unclosed-list", "indentation", "unclosed-map"],
)
def test_invalid_yaml_reports_its_line(text: str, line: int) -> None:
    [problem] = problems_of(text)
    assert problem.line == line
    assert problem.message.startswith("invalid YAML")


def test_the_top_level_must_be_a_mapping() -> None:
    [problem] = problems_of("- server\n- storage\n")
    assert problem.line == 1
    assert "mapping" in problem.message


def test_an_empty_file_is_the_defaults() -> None:
    assert parse("") == Settings()
    assert parse("# nothing but a comment\n") == Settings()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError) as caught:
        load_settings(missing, {})
    [problem] = caught.value.problems
    assert problem.file == str(missing)
    assert "cannot read" in problem.message


def test_load_settings_names_the_file_it_read(tmp_path: Path) -> None:
    config = tmp_path / "tidings.yaml"
    config.write_text("server:\n  listen: bad\n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config, {})
    assert str(caught.value.problems[0]).startswith(f"{config}:2: server.listen:")


# ------------------------------------------------------------------ ${VAR} substitution


def test_environment_variables_are_substituted_anywhere_in_a_value() -> None:
    settings = parse(
        """\
        server:
          listen: "${HOST}:${PORT}"
          max_pending_writes: ${PENDING}
        sources:
          app:
            kind: standard-webhooks
            secrets: ["${APP_SECRET}"]
        """,
        {"HOST": "0.0.0.0", "PORT": "9000", "PENDING": "50", "APP_SECRET": WHSEC},
    )
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    assert settings.server.max_pending_writes == 50
    assert [s.get_secret_value() for s in settings.sources["app"].secrets] == [WHSEC]


@pytest.mark.parametrize(
    ("environ", "window"),
    [({}, timedelta(days=3)), ({"WINDOW": "1h"}, timedelta(hours=1)), ({"WINDOW": ""}, timedelta(days=3))],
    ids=["unset", "set", "empty"],
)
def test_a_default_is_used_when_the_variable_is_unset_or_empty(environ, window) -> None:
    settings = parse("storage:\n  dedupe_window: ${WINDOW:-3d}\n", environ)
    assert settings.storage.dedupe_window == window


def test_a_missing_variable_names_itself_the_key_and_the_line() -> None:
    [problem] = problems_of(
        """\
        sources:
          app:
            kind: standard-webhooks
            secrets:
              - "${APP_SECRET}"
        """
    )
    assert (problem.line, problem.path) == (5, "sources.app.secrets[0]")
    assert "APP_SECRET" in problem.message
    assert "not set" in problem.message


def test_a_variable_set_to_nothing_is_not_an_empty_secret() -> None:
    [problem] = problems_of(
        "sources:\n  app:\n    kind: standard-webhooks\n    secrets: ['${APP_SECRET}']\n",
        {"APP_SECRET": ""},
    )
    assert (problem.line, problem.path) == (4, "sources.app.secrets")
    assert "empty" in problem.message


def test_double_dollar_escapes_a_literal_reference() -> None:
    settings = parse(
        """\
        server:
          admin_tokens:
            - name: "costs $$5, literally $${NOT_A_VAR}"
              token: "${TOKEN}"
        """,
        {"TOKEN": "0123456789abcdef-token", "NOT_A_VAR": "surprise"},
    )
    assert settings.server.admin_tokens[0].name == "costs $$5, literally ${NOT_A_VAR}"


# ------------------------------------------------------------------ *_file secrets


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_file_secret_is_read_and_stripped(tmp_path: Path) -> None:
    token = write(tmp_path / "admin-token", "  0123456789abcdef-from-a-file\n\n")
    settings = parse(
        f"""\
        server:
          admin_tokens:
            - name: ops
              token_file: {token}
        """
    )
    assert settings.server.admin_tokens[0].token.get_secret_value() == "0123456789abcdef-from-a-file"


def test_a_secret_list_file_holds_one_secret_per_line(tmp_path: Path) -> None:
    secrets = write(tmp_path / "app-secrets", f"{WHSEC}\n\n  {OTHER_WHSEC}  \n")
    settings = parse(f"sources:\n  app:\n    kind: standard-webhooks\n    secrets_file: {secrets}\n")
    assert [s.get_secret_value() for s in settings.sources["app"].secrets] == [WHSEC, OTHER_WHSEC]


def test_a_relative_secret_file_is_found_next_to_the_config(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "secrets").mkdir()
    write(tmp_path / "secrets" / "app", WHSEC + "\n")
    config = write(
        tmp_path / "tidings.yaml",
        "sources:\n  app:\n    kind: standard-webhooks\n    secrets_file: secrets/app\n",
    )
    monkeypatch.chdir("/")
    settings = load_settings(config, {})
    assert settings.sources["app"].secrets[0].get_secret_value() == WHSEC


def test_a_secret_file_path_may_come_from_the_environment(tmp_path: Path) -> None:
    write(tmp_path / "app", WHSEC)
    settings = parse(
        "sources:\n  app:\n    kind: standard-webhooks\n    secrets_file: ${SECRETS_DIR}/app\n",
        {"SECRETS_DIR": str(tmp_path)},
    )
    assert settings.sources["app"].secrets[0].get_secret_value() == WHSEC


def test_a_missing_secret_file_is_named_once_with_key_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    [problem] = problems_of(f"sources:\n  app:\n    kind: standard-webhooks\n    secrets_file: {missing}\n")
    assert (problem.line, problem.path) == (4, "sources.app.secrets_file")
    assert str(missing) in problem.message


def test_setting_both_a_secret_and_its_file_is_an_error(tmp_path: Path) -> None:
    secrets = write(tmp_path / "app", OTHER_WHSEC)
    [problem] = problems_of(
        f"""\
        sources:
          app:
            kind: standard-webhooks
            secrets: ["{WHSEC}"]
            secrets_file: {secrets}
        """
    )
    assert (problem.line, problem.path) == (5, "sources.app.secrets_file")
    assert "either secrets or secrets_file" in problem.message


def test_a_problem_with_a_file_secret_points_at_the_file_key(tmp_path: Path) -> None:
    secrets = write(tmp_path / "app", "not-a-whsec-secret!\n")
    [problem] = problems_of(f"sources:\n  app:\n    kind: standard-webhooks\n    secrets_file: {secrets}\n")
    assert (problem.line, problem.path) == (4, "sources.app.secrets_file")
    assert "whsec_" in problem.message


def test_a_secret_file_path_from_a_missing_variable_is_one_problem() -> None:
    [problem] = problems_of("sources:\n  app:\n    kind: standard-webhooks\n    secrets_file: ${DIR}/app\n")
    assert (problem.line, problem.path) == (4, "sources.app.secrets_file")
    assert "DIR" in problem.message


# ------------------------------------------------------------------ secrets never shown

ADMIN_SECRET = "admin-0123456789-SECRETVALUE"
DB_PASSWORD = "db-pa55-SECRETVALUE"


def test_secrets_are_masked_in_the_settings_repr_and_str() -> None:
    settings = parse(
        """\
        server:
          admin_tokens:
            - {name: ops, token: "${ADMIN}", scopes: [read, write]}
        storage:
          url: postgresql://tidings:${DB_PASSWORD}@db.internal/tidings
        sources:
          app:
            kind: standard-webhooks
            secrets: ["${APP_SECRET}"]
        """,
        {"ADMIN": ADMIN_SECRET, "DB_PASSWORD": DB_PASSWORD, "APP_SECRET": WHSEC},
    )
    for text in (repr(settings), str(settings), repr(settings.storage), repr(settings.sources)):
        for secret in (ADMIN_SECRET, DB_PASSWORD, WHSEC, WHSEC.removeprefix("whsec_")):
            assert secret not in text
    # Masked, not lost:
    assert settings.server.admin_tokens[0].token.get_secret_value() == ADMIN_SECRET
    assert DB_PASSWORD in settings.storage.url


def test_secrets_are_not_echoed_in_configuration_errors(tmp_path: Path) -> None:
    short = "SECRETVALUE"  # too short for an admin token
    not_whsec = "plain-SECRETVALUE-not-base64!"
    with pytest.raises(ConfigurationError) as caught:
        parse(
            f"""\
            server:
              admin_tokens:
                - {{name: ops, token: "${{ADMIN}}"}}
            storage:
              url: mysql://root:${{DB_PASSWORD}}@db/tidings
            sources:
              app:
                kind: standard-webhooks
                secrets: ["{not_whsec}"]
                typo: 1
            """,
            {"ADMIN": short, "DB_PASSWORD": DB_PASSWORD},
        )
    assert len(caught.value.problems) == 4
    for text in (str(caught.value), repr(caught.value), *map(str, caught.value.problems)):
        assert "SECRETVALUE" not in text


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30m", 1800),
        ("7d", 7 * 86400),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2w", 14 * 86400),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("90s", 90),
        ("90", 90),
        (90, 90),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)
    settings = parse(f"storage:\n  dedupe_window: {value}\n")
    assert settings.storage.dedupe_window == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["7x", "1h30", "forever", "-5m", "30 minutes", "m30", ""])
def test_a_bad_duration_is_refused_with_an_example(value: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)
    [problem] = problems_of(f"storage:\n  dedupe_window: '{value}'\n")
    assert (problem.line, problem.path) == (2, "storage.dedupe_window")
    assert re.search(r"e\.g\. .*30m", problem.message)


# ------------------------------------------------------------------ the starter file


def starter() -> str:
    return resources.files("tidings.cli").joinpath("starter.yaml").read_text()


def test_the_starter_file_validates_and_states_the_defaults() -> None:
    assert parse_settings(starter(), "tidings.yaml", {}) == Settings()


def test_the_starter_file_shows_every_source_kind() -> None:
    sources = starter().split("\ndestinations:")[0]
    shown = re.findall(r"^#\s+kind:\s*([\w-]+)", sources, flags=re.MULTILINE)
    assert sorted(shown) == sorted(RECEIVERS)


def test_an_unknown_destination_kind_lists_the_destination_kinds() -> None:
    from tidings.config import parse_settings
    from tidings.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as raised:
        parse_settings("destinations:\n  k:\n    kind: klavio\n", "t.yaml", {})
    [problem] = raised.value.problems
    assert (problem.line, problem.path) == (3, "destinations.k.kind")
    assert "klaviyo" in problem.message and "shopify" not in problem.message
