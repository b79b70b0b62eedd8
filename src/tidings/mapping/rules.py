"""A mapping rule, as written in tidings.yaml or in a built-in preset.

Expressions are JMESPath (https://jmespath.org): declarative, side-effect free, no access to
anything but the document, so a config file can never run code. Each is evaluated against

    {"topic": ..., "payload": <the event's JSON>, "headers": {...}, "source": ..., "received_at": ...}
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import jmespath
from jmespath import functions
from jmespath.exceptions import JMESPathError
from pydantic import AfterValidator, Field, TypeAdapter, model_validator
from ruamel.yaml import YAML

from tidings.configmodel import ConfigModel
from tidings.mapping.compiled import Compiled, Compiler

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
_COMPILER = Compiler(FUNCTIONS)


@functools.lru_cache(maxsize=4096)
def compile_expression(text: str) -> Compiled:
    """The expression as a closure (mapping/compiled.py); a syntax error is JMESPath's."""
    return _COMPILER.compile(jmespath.compile(text).parsed)


def _valid(text: str) -> str:
    try:
        compile_expression(text)
    except JMESPathError as exc:
        raise ValueError(f"invalid expression {text!r}: {exc}") from exc
    return text


Expression = Annotated[str, AfterValidator(_valid)]


def evaluate(expression: str, document: dict[str, Any]) -> Any:
    return compile_expression(expression)(document)


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
