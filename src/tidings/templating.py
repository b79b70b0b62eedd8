"""Templates for messages: Jinja2 in its sandbox, strict about missing variables.

The sandbox keeps a template from reaching anything but the values it is given, so a template in
tidings.yaml is as safe as a mapping expression. A variable a template uses but the values lack is
an error, never a blank in a customer's email. In HTML, every value is escaped.
"""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

_TEXT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


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
    _compiled(text, False)


def render(text: str, values: dict[str, Any], *, html: bool = False) -> str:
    try:
        return str(_compiled(text, html).render(values))
    except TemplateError as exc:
        raise TemplateProblem(str(exc)) from exc
