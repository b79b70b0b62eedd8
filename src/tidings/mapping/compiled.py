"""JMESPath expressions as Python closures: jmespath's parser and functions, without its tree walk.

`jmespath`'s interpreter walks the parsed tree on every search: a method lookup per node, a dict
read per child. Mapping one Shopify checkout evaluates ~40 expressions, and that walk was a tenth
of the server's CPU at 500 webhooks/s. Here each node becomes a closure once, when the expression
is compiled; evaluating is calling it. The semantics are the interpreter's (`jmespath/visitor.py`
of the pinned version), node type by node type, with the same function table (so the same type
errors); `tests/unit/test_compiled_expressions.py` holds the two to the same answers. One
difference, on purpose: ordering a number against a string is null here, where the interpreter
lets Python's TypeError escape.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any

from jmespath import functions, visitor

Compiled = Callable[[Any], Any]
_Node = dict[str, Any]


def _number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _comparable(value: Any) -> bool:
    """What `<`, `<=`, `>`, `>=` order: numbers and (beyond the spec, as the interpreter) strings."""
    return _number(value) or isinstance(value, str)


def _equal(a: Any, b: Any) -> bool:
    """`==`, except that 0 and 1 never equal false and true (as Python would have them)."""
    if _number(a) and a in (0, 1):
        return not isinstance(b, bool) and a == b
    if _number(b) and b in (0, 1):
        return not isinstance(a, bool) and a == b
    return bool(a == b)


def _false(value: Any) -> bool:
    """JMESPath's falsehood: empty string, list and object, null, false (not 0)."""
    return value == "" or value == [] or value == {} or value is None or value is False


class _ExpressionRef:
    """What an `&expr` argument hands a function: `visit(node, value)` evaluates it (as the
    interpreter's `_Expression` does; functions call only that)."""

    def __init__(self, node: _Node, compiled: Compiled) -> None:
        self.expression = node
        self._compiled = compiled

    def visit(self, node: _Node, value: Any) -> Any:
        return self._compiled(value)


# Functions check argument types by Python class name; an expression reference is `_Expression`.
_ExpressionRef.__name__ = visitor._Expression.__name__


class Compiler:
    """Turns a parsed JMESPath tree into a closure, calling `library` for functions."""

    def __init__(self, library: functions.Functions) -> None:
        self._call = library.call_function

    def compile(self, node: Any) -> Compiled:
        """`node`: a parsed tree (`jmespath.compile(text).parsed`)."""
        build: Callable[[_Node], Compiled] | None = getattr(self, f"_{node['type']}", None)
        if build is None:
            raise NotImplementedError(node["type"])
        return build(node)

    def _children(self, node: _Node) -> list[Compiled]:
        return [self.compile(child) for child in node["children"]]

    # ---------------------------------------------------------------- paths

    def _field(self, node: _Node) -> Compiled:
        key = node["value"]

        def field(value: Any) -> Any:
            try:
                return value.get(key)
            except AttributeError:  # not an object
                return None

        return field

    def _subexpression(self, node: _Node) -> Compiled:
        steps = self._children(node)
        if len(steps) == 2:
            first, second = steps
            return lambda value: second(first(value))

        def chain(value: Any) -> Any:
            for step in steps:
                value = step(value)
            return value

        return chain

    _index_expression = _subexpression
    _pipe = _subexpression

    def _current(self, node: _Node) -> Compiled:
        return _same

    _identity = _current

    def _literal(self, node: _Node) -> Compiled:
        constant = node["value"]
        return lambda value: constant

    def _index(self, node: _Node) -> Compiled:
        at = node["value"]

        def index(value: Any) -> Any:
            if not isinstance(value, list):
                return None
            try:
                return value[at]
            except IndexError:
                return None

        return index

    def _slice(self, node: _Node) -> Compiled:
        span = slice(*node["children"])
        return lambda value: value[span] if isinstance(value, list) else None

    # ---------------------------------------------------------------- projections

    def _projection(self, node: _Node) -> Compiled:
        base, each = self._children(node)

        def projection(value: Any) -> Any:
            items = base(value)
            if not isinstance(items, list):
                return None
            return [result for result in map(each, items) if result is not None]

        return projection

    def _value_projection(self, node: _Node) -> Compiled:
        base, each = self._children(node)

        def value_projection(value: Any) -> Any:
            try:
                items = base(value).values()
            except AttributeError:  # not an object
                return None
            return [result for result in map(each, items) if result is not None]

        return value_projection

    def _filter_projection(self, node: _Node) -> Compiled:
        base, each, condition = self._children(node)

        def filter_projection(value: Any) -> Any:
            items = base(value)
            if not isinstance(items, list):
                return None
            collected = []
            for item in items:
                if not _false(condition(item)):
                    result = each(item)
                    if result is not None:
                        collected.append(result)
            return collected

        return filter_projection

    def _flatten(self, node: _Node) -> Compiled:
        (base,) = self._children(node)

        def flatten(value: Any) -> Any:
            items = base(value)
            if not isinstance(items, list):
                return None
            merged: list[Any] = []
            for item in items:
                if isinstance(item, list):
                    merged.extend(item)
                else:
                    merged.append(item)
            return merged

        return flatten

    # ---------------------------------------------------------------- building values

    def _multi_select_dict(self, node: _Node) -> Compiled:
        pairs = [(child["value"], self.compile(child["children"][0])) for child in node["children"]]

        def multi_select_dict(value: Any) -> Any:
            if value is None:
                return None
            return {key: part(value) for key, part in pairs}

        return multi_select_dict

    def _multi_select_list(self, node: _Node) -> Compiled:
        parts = self._children(node)
        return lambda value: None if value is None else [part(value) for part in parts]

    def _function_expression(self, node: _Node) -> Compiled:
        name, args, call = node["value"], self._children(node), self._call
        return lambda value: call(name, [arg(value) for arg in args])

    def _expref(self, node: _Node) -> Compiled:
        (inner,) = node["children"]
        ref = _ExpressionRef(inner, self.compile(inner))
        return lambda value: ref

    # ---------------------------------------------------------------- logic

    def _or_expression(self, node: _Node) -> Compiled:
        left, right = self._children(node)

        def or_expression(value: Any) -> Any:
            matched = left(value)
            return right(value) if _false(matched) else matched

        return or_expression

    def _and_expression(self, node: _Node) -> Compiled:
        left, right = self._children(node)

        def and_expression(value: Any) -> Any:
            matched = left(value)
            return matched if _false(matched) else right(value)

        return and_expression

    def _not_expression(self, node: _Node) -> Compiled:
        (inner,) = self._children(node)

        def not_expression(value: Any) -> Any:
            result = inner(value)
            if _number(result) and result == 0:
                return False  # !0 is false: 0 is not falsy in JMESPath
            return not result

        return not_expression

    def _comparator(self, node: _Node) -> Compiled:
        left, right = self._children(node)
        op = node["value"]
        if op == "eq":
            return lambda value: _equal(left(value), right(value))
        if op == "ne":
            return lambda value: not _equal(left(value), right(value))
        order = visitor.TreeInterpreter.COMPARATOR_FUNC[op]

        def ordering(value: Any) -> Any:
            a, b = left(value), right(value)
            if not (_comparable(a) and _comparable(b)) or isinstance(a, str) != isinstance(b, str):
                # Ordering is for numbers (and strings); anything else is null. A number against a
                # string too, where jmespath's interpreter lets Python's TypeError escape.
                return None
            return order(a, b)

        return ordering


def _same(value: Any) -> Any:
    return value
