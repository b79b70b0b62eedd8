"""Compiled expressions give what jmespath's own interpreter gives, value for value and error for
error: every expression of every preset and built-in trait, on every stored fixture, and the
corners of the language (falsiness, 0 and false, ordering of mixed types, projections of null)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jmespath
import pytest

from tidings.mapping.rules import OPTIONS, PRESETS, evaluate, preset
from tidings.profiles.traits import BUILTIN_TRAITS

FIXTURES = Path(__file__).parent.parent / "fixtures"


def preset_expressions() -> set[str]:
    found: set[str] = set()
    for file in PRESETS.glob("*.yaml"):
        for rule in preset(file.stem):
            found.update(e for e in (rule.when, rule.event_from, rule.occurred_at) if e)
            found.update(rule.identities.values())
            found.update(rule.consent.values())
            for fields in (rule.traits, rule.properties):
                found.update([fields] if isinstance(fields, str) else fields.values())
    for rules in BUILTIN_TRAITS.values():
        for r in rules:
            found.update(e for e in (r.when, r.value, r.distinct) if e)
    return found


def documents() -> list[dict[str, Any]]:
    docs = []
    for file in sorted(FIXTURES.glob("*/*.json")):
        payload = json.loads(file.read_text())
        for body in payload if isinstance(payload, list) else [payload]:
            docs.append(
                {"topic": file.stem, "payload": body, "headers": {}, "source": "s", "received_at": ""}
            )
    return docs


CORNERS = [
    "a || b",
    "a && b",
    "!a",
    "!`0`",
    "!`false`",
    "a == `0`",
    "a == `false`",
    "a != b",
    "a < b",
    "a >= b",
    "a > `1`",
    "l[0]",
    "l[-1]",
    "l[5]",
    "l[1:3]",
    "l[::-1]",
    "l[*].x",
    "l[].x",
    "l[?x > `1`].x",
    "l[?x].y",
    "o.*",
    "o.*.x",
    "[a, b]",
    "{x: a, y: b}",
    "l | length(@)",
    "@",
    '`{"k": 1}`',
    "'text'",
    "to_string(a)",
    "to_number(s)",
    "length(a)",
    "upper(s)",
    "sum_by(l, &x)",
    "max_by(l, &x).x",
    "sort_by(l, &x)[].x",
    "l[][]",
    "n.m.k",
    "s.x",
    "l.x",
]

CORNER_DOCS: list[Any] = [
    {},
    {
        "a": 0,
        "b": False,
        "s": "12.5",
        "l": [{"x": 1, "y": ""}, {"x": 2, "y": "y"}, {"z": 1}],
        "o": {"p": {"x": 1}},
    },
    {"a": "", "b": [], "l": [[1, 2], [3], 4], "o": {"p": 1, "q": None}, "n": None},
    {"a": True, "b": "b", "s": "abc", "l": "not a list", "o": [], "n": {"m": {"k": 0}}},
    {"a": 1.0, "b": 1, "l": [], "o": {}},
    {"a": [1], "b": {"c": 1}, "s": None, "l": None},
    {"a": {}, "b": 0, "l": [{"x": {}}, {"x": []}, {"x": 0, "y": 1}], "o": {"p": None}},
    [1, 2, 3],
    None,
    "text",
]


def outcome(search: Any, doc: Any) -> tuple[str, Any]:
    try:
        return "value", search(doc)
    except Exception as exc:  # the same error, with the same message
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("expression", sorted(preset_expressions()))
def test_preset_expressions_give_what_the_interpreter_gives(expression: str) -> None:
    parsed = jmespath.compile(expression)
    for doc in documents():
        assert outcome(lambda d: evaluate(expression, d), doc) == outcome(
            lambda d: parsed.search(d, options=OPTIONS), doc
        ), (expression, doc["topic"])


@pytest.mark.parametrize("expression", CORNERS)
def test_the_corners_of_the_language_give_what_the_interpreter_gives(expression: str) -> None:
    parsed = jmespath.compile(expression)
    for doc in CORNER_DOCS:
        assert outcome(lambda d: evaluate(expression, d), doc) == outcome(
            lambda d: parsed.search(d, options=OPTIONS), doc
        ), (expression, doc)
