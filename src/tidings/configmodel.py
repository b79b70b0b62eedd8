"""The building blocks of every settings model: strict models, durations, secret lists, names.

Kept apart from `tidings.config` (which assembles the whole file from every stage's settings) so
that any stage can define its settings without importing all the others.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> object:
    """Accept `90`, `90s`, `30m`, `1h30m`, `7d`, `250ms` as well as what pydantic accepts."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and value.strip().upper().startswith("P"):
        return value.strip()  # ISO 8601 (PT5M): pydantic parses it
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
        if text.isdigit():
            return timedelta(seconds=int(text))
        raise ValueError(f"not a duration: {value!r} (use e.g. 300s, 30m, 7d)")
    return value


def format_duration(value: timedelta) -> str:
    """`1d`, `30m`, `1h30m`, `90s`: how a duration is written in tidings.yaml."""
    seconds = value.total_seconds()
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count:g}{unit}")
    return "".join(parts) or "0s"


def _secret_list(value: object) -> object:
    """A list of secrets may be given as one string; a `*_file` gives one secret per line."""
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
        # An empty key would verify signatures anyone can make: usually an env var set to nothing.
        raise ValueError("a secret is empty (is its environment variable set to an empty value?)")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
SecretList = Annotated[list[SecretStr], BeforeValidator(_secret_list)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]


class ConfigModel(BaseModel):
    """Base of every settings model: unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
