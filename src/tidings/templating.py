"""Templates for messages: Jinja2 in its sandbox, strict about missing variables.

The sandbox keeps a template from reaching anything but the values it is given, so a template in
tidings.yaml is as safe as a mapping expression. A variable a template uses but the values lack is
an error, never a blank in a customer's email. In HTML, every value is escaped.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment


class _Environment(SandboxedEnvironment):
    """Values are JSON documents, so `cart.items` is the key `items`, not the dict's method."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_TEXT = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML = _Environment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


# A value that is one expression and nothing else: `{{ cart.items }}` keeps its type (a list).
_ONE_EXPRESSION = re.compile(r"^\s*\{\{((?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)


class TemplateProblem(ValueError):
    """A template that does not parse, or that needs a value it was not given."""


@functools.lru_cache(maxsize=1024)
def _compiled(text: str, html: bool) -> Any:
    try:
        return (_HTML if html else _TEXT).from_string(text)
    except TemplateError as exc:
        raise TemplateProblem(f"malformed template: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def _expression(text: str) -> Any:
    try:
        return _TEXT.compile_expression(text, undefined_to_none=False)
    except TemplateError as exc:
        raise TemplateProblem(f"malformed expression {text!r}: {exc}") from exc


def check(text: str) -> None:
    """Raise TemplateProblem if `text` does not parse (for config validation)."""
    one = _ONE_EXPRESSION.match(text)
    if one:
        _expression(one.group(1))
    else:
        _compiled(text, False)


def check_data(data: Any) -> None:
    """`check` every string in a nested structure of dicts and lists."""
    if isinstance(data, str):
        check(data)
    elif isinstance(data, dict):
        for value in data.values():
            check_data(value)
    elif isinstance(data, list):
        for value in data:
            check_data(value)


def render_value(text: str, values: dict[str, Any]) -> Any:
    """`{{ expr }}` alone gives the expression's value with its type; other text renders as text."""
    one = _ONE_EXPRESSION.match(text)
    if not one:
        return render(text, values) if "{" in text else text
    try:
        result = _expression(one.group(1))(**values)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
    except TemplateError as exc:
        raise TemplateProblem(str(exc)) from exc
    return result


def render_data(data: Any, values: dict[str, Any]) -> Any:
    """Every string of a nested structure rendered with `render_value`; other values as they are."""
    if isinstance(data, str):
        return render_value(data, values)
    if isinstance(data, dict):
        return {key: render_data(value, values) for key, value in data.items()}
    if isinstance(data, list):
        return [render_data(value, values) for value in data]
    return data


def render(text: str, values: dict[str, Any], *, html: bool = False) -> str:
    try:
        return str(_compiled(text, html).render(values))
    except TemplateError as exc:
        raise TemplateProblem(str(exc)) from exc
