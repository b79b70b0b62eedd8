"""Templates for messages: Jinja2 in its sandbox, strict about missing variables.

The sandbox keeps a template from reaching anything but the values it is given, so a template in
tidings.yaml is as safe as a mapping expression. A variable a template uses but the values lack is
an error, never a blank in a customer's email. In HTML, every value is escaped.

A send's payload is a structure of templates rendered at every firing, so it is compiled once
(`DataTemplate`): its `{{ expression }}` values become one Jinja program evaluated in one context,
instead of a template and a context per value (a sixth of a firing's CPU, bench/README-timers.md).
A payload whose values are all plain lookups (`{{ event.properties.items }}`, the usual case)
skips even that program when every key is there: the values are read from the documents.
"""

from __future__ import annotations

import functools
import re
from typing import Any, cast

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, Undefined, nodes
from jinja2.parser import Parser
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


def check(text: str) -> None:
    """Raise TemplateProblem if `text` does not parse (for config validation)."""
    DataTemplate(text)


class _Slot(int):
    """Where an expression's value goes: its index in the program's results."""


class _Text(str):
    """A string that is a template but not one expression: rendered as text."""


class DataTemplate:
    """A nested structure of dicts and lists whose strings are templates, compiled once.

    `render(values)` gives the structure with each string rendered: a string that is one
    `{{ expression }}` and nothing else gives the expression's value with its type (`{{ cart.items }}`
    is a list), other text containing `{` renders as text, the rest is kept as it is.
    """

    def __init__(self, data: Any) -> None:
        self.source = data
        self._expressions: list[nodes.Expr] = []
        self._shape = self._walk(data)
        self._program = self._link()
        paths = [_path(expression) for expression in self._expressions]
        self._paths = None if None in paths else cast(list[tuple[str, ...]], paths)

    def __eq__(self, other: object) -> bool:  # settings models holding one compare by source
        return isinstance(other, DataTemplate) and other.source == self.source

    __hash__ = None  # type: ignore[assignment]

    def render(self, values: dict[str, Any]) -> Any:
        if self._paths is not None:  # the usual payload: values looked up, no Jinja needed
            found = _look_up(self._paths, values)
            if found is not None:
                return self._build(self._shape, found, values)
        try:
            results: list[Any] = []
            if self._program is not None:
                context = self._program.new_context({**_TEXT.globals, **values}, shared=True)
                for _ in self._program.root_render_func(context):
                    pass
                results = [context.vars[_result(k)] for k in range(len(self._expressions))]
                for result in results:
                    if isinstance(result, Undefined):
                        result._fail_with_undefined_error()
            return self._build(self._shape, results, values)
        except TemplateError as exc:
            raise TemplateProblem(str(exc)) from exc

    def _walk(self, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: self._walk(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self._walk(value) for value in data]
        if not isinstance(data, str):
            return data
        one = _ONE_EXPRESSION.match(data)
        if one is None:
            if "{" not in data:
                return data
            _compiled(data, False)
            return _Text(data)
        source = one.group(1)
        try:
            parser = Parser(_TEXT, source, state="variable")
            expression = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno)
        except TemplateError as exc:
            raise TemplateProblem(f"malformed expression {source!r}: {exc}") from exc
        self._expressions.append(expression)
        return _Slot(len(self._expressions) - 1)

    def _link(self) -> Template | None:
        """One program assigning each expression's value to a name of its own."""
        if not self._expressions:
            return None
        body: list[nodes.Node] = [
            nodes.Assign(nodes.Name(_result(k), "store"), expression, lineno=1)
            for k, expression in enumerate(self._expressions)
        ]
        program = nodes.Template(body, lineno=1)
        program.set_environment(_TEXT)
        return _TEXT.from_string(program)

    def _build(self, shape: Any, results: list[Any], values: dict[str, Any]) -> Any:
        if isinstance(shape, _Slot):
            return results[shape]
        if isinstance(shape, _Text):
            return render(shape, values)
        if isinstance(shape, dict):
            return {key: self._build(value, results, values) for key, value in shape.items()}
        if isinstance(shape, list):
            return [self._build(value, results, values) for value in shape]
        return shape


def _path(expression: nodes.Expr) -> tuple[str, ...] | None:
    """`{{ event.properties.items }}` (or `event["properties"]`) as the keys to look up in turn;
    None for any other expression."""
    keys: list[str] = []
    node: nodes.Node = expression
    while not isinstance(node, nodes.Name):
        if isinstance(node, nodes.Getattr):
            keys.append(node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if not isinstance(node.arg.value, str):
                return None
            keys.append(node.arg.value)
        else:
            return None
        node = node.node
    keys.append(node.name)
    return tuple(reversed(keys))


def _look_up(paths: list[tuple[str, ...]], values: dict[str, Any]) -> list[Any] | None:
    """Each path's value, where every step is a key of a JSON object: what Jinja would give
    (`_Environment.getattr`). Anything else (a missing key, a method, a global) is None: Jinja
    decides it, with its errors."""
    found = []
    for path in paths:
        value: Any = values
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        found.append(value)
    return found


def _result(k: int) -> str:
    return f"_tidings_value_{k}"


def render(text: str, values: dict[str, Any], *, html: bool = False) -> str:
    try:
        return str(_compiled(text, html).render(values))
    except TemplateError as exc:
        raise TemplateProblem(str(exc)) from exc
