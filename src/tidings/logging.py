"""Structured logs: one JSON object per line, with the request id and an `action` key.

Bodies, headers and secrets are never passed to the logger; only names, ids and counts are.
Fields that hold for a whole piece of work (the outbox row being sent, the flow run being stepped)
are bound once with `bound(...)` rather than repeated at every call; the HTTP request id is bound
by the ASGI app. docs/observability.md lists the fields and actions.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType

request_id: ContextVar[str | None] = ContextVar("tidings_request_id", default=None)
_bound: ContextVar[Mapping[str, object]] = ContextVar("tidings_log_fields", default=MappingProxyType({}))

# Loggers of the HTTP server, given the same JSON handler, so stderr holds one format only.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error")

# color_message: uvicorn's copy of the message with terminal colour codes.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        entry.update(_bound.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Add `fields` to every log line written inside the block (by this task, and by tasks it
    creates there, which copy the context), e.g. `with bound(outbox_id=7, destination="crm"):`."""
    token = _bound.set(MappingProxyType({**_bound.get(), **fields}))
    try:
        yield
    finally:
        _bound.reset(token)


def configure(level: str = "info", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("tidings")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # Takes effect when the server does not install its own logging config (uvicorn: log_config=None).
    for name in SERVER_LOGGERS:
        server = logging.getLogger(name)
        server.handlers[:] = [handler]
        server.propagate = False
