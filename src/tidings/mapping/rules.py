"""A mapping rule, as written in tidings.yaml or in a built-in preset.

Expressions are JMESPath (https://jmespath.org): declarative, side-effect free, no access to
anything but the document, so a config file can never run code. Each is evaluated against

    {"topic": ..., "payload": <the event's JSON>, "headers": {...}, "source": ..., "received_at": ...}
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from numbers import Number
from pathlib import Path
from typing import Annotated, Any

import jmespath
from jmespath import functions, visitor
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import AfterValidator, Field, TypeAdapter, model_validator
from ruamel.yaml import YAML

from tidings.configmodel import ConfigModel

# Currencies whose amounts Stripe's API counts in units (no cents) or in thousandths.
_ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
_THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


class _Functions(functions.Functions):
    """A few helpers JMESPath lacks; pure functions only.

    `upper` and `from_items` take JMESPath Community's names, so a later switch to that dialect
    keeps configs working.
    """

    @functions.signature({"types": ["string", "null"]})
    def _func_upper(self, value: str | None) -> str | None:
        return value.upper() if value is not None else None

    @functions.signature({"types": ["array", "null"]})
    def _func_from_items(self, pairs: list[Any] | None) -> dict[str, Any] | None:
        """`[[key, value], ...]` as an object: the one way to make a key from the payload."""
        if pairs is None:
            return None
        return {p[0]: p[1] for p in pairs if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)}

    @functions.signature({"types": ["number", "null"]}, {"types": ["string", "null"]})
    def _func_from_minor_units(self, amount: float | None, currency: str | None) -> float | None:
        """An amount in minor units (cents) in major units, by the currency's exponent."""
        if amount is None:
            return None
        code = (currency or "").lower()
        if code in _ZERO_DECIMAL:
            return float(amount)
        digits = 3 if code in _THREE_DECIMAL else 2
        return round(float(amount) / (10.0**digits), digits)

    @functions.signature({"types": ["string", "null"]})
    def _func_lower(self, value: str | None) -> str | None:
        return value.lower() if value is not None else None

    @functions.signature({"types": ["string", "null"]})
    def _func_trim(self, value: str | None) -> str | None:
        return value.strip() if value is not None else None

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_split(self, value: str | None, separator: str) -> list[str] | None:
        return value.split(separator) if value is not None else None

    @functions.signature({"types": ["array", "null"]}, {"types": ["expref"]})
    def _func_sum_by(self, items: list[Any] | None, expref: Any) -> float:
        total = 0.0
        for item in items or []:
            value = expref.visit(expref.expression, item)
            try:
                total += float(value or 0)
            except (TypeError, ValueError):
                continue
        return total


FUNCTIONS = _Functions()
OPTIONS = jmespath.Options(custom_functions=FUNCTIONS)


@functools.lru_cache(maxsize=4096)
def compile_expression(text: str) -> ParsedResult:
    return jmespath.compile(text)


def _valid(text: str) -> str:
    try:
        compile_expression(text)
    except JMESPathError as exc:
        raise ValueError(f"invalid expression {text!r}: {exc}") from exc
    return text


Expression = Annotated[str, AfterValidator(_valid)]


def evaluate(expression: str, document: dict[str, Any]) -> Any:
    return _compiled(expression)(document)


# ------------------------------------------------------------------ evaluation
#
# jmespath's interpreter walks the parsed tree for every search, looking up a method per node and
# making a new interpreter each time: a mapped event evaluates some thirty expressions, and that
# walk was most of mapping's cost. Here each tree is turned once into nested closures, each doing
# what `jmespath.visitor.TreeInterpreter.visit_<type>` does for its node; node types not listed
# (slices, `&expression` references) are left to that interpreter, so results are the same.

Compiled = Callable[[Any], Any]
_INTERPRETER = visitor.TreeInterpreter(OPTIONS)


@functools.lru_cache(maxsize=4096)
def _compiled(text: str) -> Compiled:
    return _node(compile_expression(text).parsed)


def _number(value: Any) -> bool:
    """A JMESPath number (visitor._is_actual_number): booleans are not numbers."""
    return isinstance(value, Number) and not isinstance(value, bool)


def _false(value: Any) -> bool:
    """JMESPath falsiness (TreeInterpreter._is_false): '', [], {}, null and false."""
    return value == "" or value == [] or value == {} or value is None or value is False


def _node(node: Any) -> Compiled:
    build = _BUILD.get(node["type"])
    if build is None:
        return lambda value: _INTERPRETER.visit(node, value)
    return build(node, [_node(child) for child in node.get("children", [])])


def _field(node: Any, _: list[Compiled]) -> Compiled:
    key = node["value"]

    def field(value: Any) -> Any:
        try:
            return value.get(key)
        except AttributeError:
            return None

    return field


def _chain(_: Any, children: list[Compiled]) -> Compiled:
    def chain(value: Any) -> Any:
        for child in children:
            value = child(value)
        return value

    return chain


def _literal(node: Any, _: list[Compiled]) -> Compiled:
    literal = node["value"]
    return lambda value: literal


def _or(_: Any, children: list[Compiled]) -> Compiled:
    left, right = children

    def or_(value: Any) -> Any:
        matched = left(value)
        return right(value) if _false(matched) else matched

    return or_


def _and(_: Any, children: list[Compiled]) -> Compiled:
    left, right = children

    def and_(value: Any) -> Any:
        matched = left(value)
        return matched if _false(matched) else right(value)

    return and_


def _not(_: Any, children: list[Compiled]) -> Compiled:
    (inner,) = children

    def not_(value: Any) -> Any:
        result = inner(value)
        if _number(result) and result == 0:
            return False  # !0 is false: 0 is not special in JMESPath
        return not result

    return not_


def _comparator(node: Any, children: list[Compiled]) -> Compiled:
    left, right = children
    compare = visitor.TreeInterpreter.COMPARATOR_FUNC[node["value"]]
    if node["value"] in ("eq", "ne"):
        return lambda value: compare(left(value), right(value))

    def ordered(value: Any) -> Any:  # only numbers or strings are ordered, else null
        a, b = left(value), right(value)
        if not ((_number(a) or isinstance(a, str)) and (_number(b) or isinstance(b, str))):
            return None
        return compare(a, b)

    return ordered


def _function(node: Any, children: list[Compiled]) -> Compiled:
    name, call = node["value"], FUNCTIONS.call_function
    return lambda value: call(name, [child(value) for child in children])


def _index(node: Any, _: list[Compiled]) -> Compiled:
    index = node["value"]

    def at(value: Any) -> Any:
        if not isinstance(value, list):
            return None
        try:
            return value[index]
        except IndexError:
            return None

    return at


def _projection(node: Any, children: list[Compiled]) -> Compiled:
    base, each = children[0], children[1]
    keep = children[2] if node["type"] == "filter_projection" else None
    of_values = node["type"] == "value_projection"

    def project(value: Any) -> Any:
        items = base(value)
        if of_values:
            try:
                items = items.values()
            except AttributeError:
                return None
        elif not isinstance(items, list):
            return None
        collected = []
        for element in items:
            if keep is not None and _false(keep(element)):
                continue
            current = each(element)
            if current is not None:
                collected.append(current)
        return collected

    return project


def _flatten(_: Any, children: list[Compiled]) -> Compiled:
    (inner,) = children

    def flatten(value: Any) -> Any:
        base = inner(value)
        if not isinstance(base, list):
            return None
        merged: list[Any] = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    return flatten


def _select_dict(node: Any, children: list[Compiled]) -> Compiled:
    pairs = [(pair["value"], child) for pair, child in zip(node["children"], children, strict=True)]

    def select_dict(value: Any) -> Any:
        if value is None:
            return None
        return {key: child(value) for key, child in pairs}

    return select_dict


def _select_list(_: Any, children: list[Compiled]) -> Compiled:
    def select_list(value: Any) -> Any:
        if value is None:
            return None
        return [child(value) for child in children]

    return select_list


_BUILD: dict[str, Callable[[Any, list[Compiled]], Compiled]] = {
    "field": _field,
    "subexpression": _chain,
    "index_expression": _chain,
    "pipe": _chain,
    "current": lambda node, children: lambda value: value,
    "identity": lambda node, children: lambda value: value,
    "literal": _literal,
    "key_val_pair": lambda node, children: children[0],
    "or_expression": _or,
    "and_expression": _and,
    "not_expression": _not,
    "comparator": _comparator,
    "function_expression": _function,
    "index": _index,
    "projection": _projection,
    "value_projection": _projection,
    "filter_projection": _projection,
    "flatten": _flatten,
    "multi_select_dict": _select_dict,
    "multi_select_list": _select_list,
}


class MappingRule(ConfigModel):
    """When an item's topic matches (and `when` holds), it becomes one canonical event."""

    topic: str | list[str] = Field(default="*", description="glob patterns on the item's topic")
    when: Expression | None = None
    event: str | None = None
    event_from: Expression | None = None
    occurred_at: Expression | None = None
    identities: dict[str, Expression] = {}
    # Each either a mapping of names to expressions, or one expression giving the whole object.
    traits: dict[str, Expression] | Expression = {}
    properties: dict[str, Expression] | Expression = {}
    consent: dict[str, Expression] = {}
    skip: bool = False  # a topic deliberately not turned into an event

    @model_validator(mode="after")
    def _names_the_event(self) -> MappingRule:
        if not self.skip and (self.event is None) == (self.event_from is None):
            raise ValueError("a rule needs exactly one of event (a name) or event_from (an expression)")
        return self

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.topic,) if isinstance(self.topic, str) else tuple(self.topic)


PRESETS = Path(__file__).parent / "presets"
_RULES = TypeAdapter(list[MappingRule])


@functools.cache
def preset(kind: str) -> tuple[MappingRule, ...]:
    """The built-in rules for a source kind (empty if there are none)."""
    file = PRESETS / f"{kind}.yaml"
    if not file.exists():
        return ()
    return tuple(_RULES.validate_python(YAML(typ="safe").load(file.read_text()) or []))
