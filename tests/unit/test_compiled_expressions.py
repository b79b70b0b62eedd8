"""Compiled JMESPath (mapping/compiled.py) answers exactly as jmespath's own interpreter does.

Every expression is evaluated both ways, with the same function library, and the answers must be
equal as JSON (so `true` and `1` differ) or fail with the same error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jmespath
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jmespath import visitor
from jmespath.exceptions import JMESPathError

from tidings.mapping.compiled import Compiler
from tidings.mapping.rules import FUNCTIONS, PRESETS, compile_expression, evaluate, preset


class Interpreter(visitor.TreeInterpreter):
    """jmespath's own, with the one deliberate difference: ordering a number against a string is
    null, as any ordering JMESPath does not define, where the interpreter lets Python's
    TypeError escape (which a mapping could not report as a mapping error)."""

    def visit_comparator(self, node: Any, value: Any) -> Any:
        if node["value"] not in self._EQUALITY_OPS:
            left, right = (self.visit(child, value) for child in node["children"])
            if isinstance(left, str) != isinstance(right, str):
                return None
        return super().visit_comparator(node, value)


INTERPRETER = Interpreter(jmespath.Options(custom_functions=FUNCTIONS))
FIXTURES = Path(__file__).parent.parent / "fixtures"

# At least one of every kind of node, and the corners where JMESPath is not Python.
EXPRESSIONS = [
    "a",
    "a.b.c",
    "a.b.c.a",
    "@",
    "a | b",
    "a[0]",
    "a[-1]",
    "a[5]",
    "a[1:3]",
    "a[::-1]",
    "a[:-1:2]",
    "a[*].b",
    "a[*].b[*].c",
    "a[]",
    "a[][]",
    "*.a",
    "a.*",
    "a[?b]",
    "a[?b == `1`].c",
    "a[?b > `0`]",
    "a[?b >= 'b']",
    "a == `0`",
    "a == `false`",
    "a == `1`",
    "a != `true`",
    "`1` == a",
    "`false` == a",
    "a == b",
    "a != b",
    "a < b",
    "a <= b",
    "a > `1.5`",
    "a >= b",
    "a < 'c'",
    "!a",
    "!`0`",
    "!`[]`",
    "a || b",
    "a && b",
    "a || `0`",
    "a && 'yes' || `null`",
    "{x: a, y: b.c}",
    "[a, b, `null`]",
    "a.{x: b}",
    "a[*].[b, c]",
    '`{"k": [1, 2]}`',
    "'text'",
    "length(a)",
    "to_string(a)",
    "to_number(a)",
    "keys(a)",
    "values(a)",
    "contains(a, 'b')",
    "join(', ', a)",
    "sort(a)",
    "sort_by(a, &b)",
    "max_by(a, &b)",
    "min_by(a, &c)",
    "map(&b, a)",
    "sum_by(a, &b)",
    "type(a)",
    "not_null(a, b, 'none')",
    "abs(a)",
    "upper(a)",
    "lower(a)",
    "trim(a)",
    "split(a, ',')",
    "from_items(a)",
    "from_minor_units(a, b)",
    "merge(a, b)",
    "a.b.to_string(@)",
    "length(a[?b])",
]

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-3, 3, allow_nan=False)
    | st.sampled_from(["", "a", "b", "c", "a,b", " x "]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=12,
)


def answer(evaluate_fn: Any) -> tuple[str, str]:
    try:
        return ("value", json.dumps(evaluate_fn(), sort_keys=True))
    except Exception as exc:  # the library's functions let some of Python's own errors out too
        return ("error", f"{type(exc).__name__}: {exc}")


def both(expression: str, document: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    parsed = jmespath.compile(expression).parsed
    compiled = compile_expression(expression)

    return answer(lambda: compiled(document)), answer(lambda: INTERPRETER.visit(parsed, document))


def node_types(node: Any) -> set[str]:
    found = {node["type"]}
    for child in node.get("children", []):
        if isinstance(child, dict):
            found |= node_types(child)
    return found


def test_the_expressions_reach_every_kind_of_node_the_compiler_builds() -> None:
    built = {name[1:] for name in vars(Compiler) if name.startswith("_") and not name.startswith("__")}
    built -= {"children"}
    seen = set().union(*(node_types(jmespath.compile(e).parsed) for e in EXPRESSIONS))
    assert built <= seen, built - seen


@settings(max_examples=150, deadline=None)
@given(document=_json)
@example(document={"a": 0, "b": False})
@example(document={"a": 1, "b": True})
@example(document={"a": False, "b": 0.0})
@example(document={"a": [{"b": 1, "c": "x"}, {"b": 0, "c": "y"}, {"c": 2}]})
@example(document={"a": [[1, [2]], 3, []], "b": "c"})
@example(document={"a": {"b": {"c": {"a": 1}}}, "b": {"c": "z"}})
def test_any_document_gets_the_interpreters_answer(document: Any) -> None:
    for expression in EXPRESSIONS:
        compiled, interpreted = both(expression, document)
        assert compiled == interpreted, expression


def _preset_expressions() -> list[str]:
    found: list[str] = []
    for file in sorted(PRESETS.glob("*.yaml")):
        for rule in preset(file.stem):
            found += [e for e in (rule.when, rule.event_from, rule.occurred_at) if e]
            for section in (rule.identities, rule.traits, rule.properties, rule.consent):
                found += [section] if isinstance(section, str) else list(section.values())
    return found


def _fixture_documents() -> list[dict[str, Any]]:
    documents = []
    for file in sorted(FIXTURES.glob("*/*.json")):
        payload = json.loads(file.read_text())
        documents.append({"topic": file.stem, "payload": payload, "headers": {}, "source": file.parent.name})
        if isinstance(payload, dict):  # vendors' examples often wrap the webhook body
            for value in payload.values():
                if isinstance(value, dict):
                    documents.append({"topic": file.stem, "payload": value, "headers": {}})
    return documents


def test_every_preset_expression_gets_the_interpreters_answer_on_every_vendor_sample() -> None:
    expressions, documents = _preset_expressions(), _fixture_documents()
    assert len(expressions) > 200 and len(documents) > 20
    differ = []
    for expression in expressions:
        for document in documents:
            compiled, interpreted = both(expression, document)
            if compiled != interpreted:
                differ.append((expression, document["topic"], compiled, interpreted))
    assert not differ, differ[:5]


def test_a_function_given_the_wrong_type_fails_as_jmespath_says() -> None:
    with pytest.raises(JMESPathError, match="invalid type for value"):
        evaluate("length(a)", {"a": 5})
    assert evaluate("sum_by(items, &price)", {"items": [{"price": "2.5"}, {"price": 1}, {}]}) == 3.5
