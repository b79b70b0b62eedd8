"""Receiving one request, whatever the sender: the order of checks every kind goes through.

unknown source (404) -> content type (415) -> size, while reading (413) -> authenticity (401)
-> parsing (400, or stored and flagged when authentic) -> group commit -> the sender's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from tidings.exceptions import IngestError, MalformedPayload, PayloadTooLarge, UnknownSource
from tidings.ingest.base import InboundRequest, Outcome, Receiver, Reply

log = logging.getLogger("tidings.ingest")


async def read_body(headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` (before it is all in memory)."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedPayload("Content-Length is not a number", code="bad_content_length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Ingest:
    """The ingest stage's face to HTTP: turns a request into a stored reception and an answer."""

    def __init__(self, tidings: Any, *, enabled: bool = True) -> None:
        from tidings.app import Tidings

        self.tidings: Tidings = tidings
        self.metrics = tidings.metrics
        self.enabled = enabled

    def check_enabled(self) -> None:
        if not self.enabled:
            raise UnknownSource(
                "this tidings process is a worker (--role worker): it receives nothing", code="not_receiving"
            )

    def receiver(self, source: str) -> Receiver[Any]:
        self.check_enabled()
        receiver = self.tidings.receivers.get(source)
        if receiver is None:
            raise UnknownSource(f"no source named {source!r} is configured")
        return receiver

    def body_limit(self, receiver: Receiver[Any]) -> int:
        return receiver.settings.max_body_bytes or self.tidings.settings.server.max_body_bytes

    async def accept(self, receiver: Receiver[Any], request: InboundRequest, started: float) -> Reply:
        """Verify, store and answer. `started` is the perf_counter at arrival (for the ack histogram)."""
        reception = receiver.receive(request)
        source = receiver.name
        if not reception.items:  # e.g. WooCommerce's ping on webhook creation: nothing to keep
            self.metrics.requests.labels(source, "empty").inc()
            return receiver.reply(reception, Outcome(accepted=0, duplicates=0))
        outcome = await self.tidings.committer.submit(request, reception)
        if outcome.flagged:
            outcome_label = "flagged"
            log.warning(
                "authentic request could not be interpreted; stored and flagged",
                extra={
                    "action": "ingest_flagged",
                    "source": source,
                    "reason": reception.flagged,
                    "inbox_ids": list(outcome.ids),
                },
            )
        else:
            outcome_label = "accepted" if outcome.accepted else "duplicate"
        self.metrics.requests.labels(source, outcome_label).inc()
        if outcome.accepted:
            self.metrics.items.labels(source).inc(outcome.accepted)
        if outcome.duplicates:
            self.metrics.duplicates.labels(source).inc(outcome.duplicates)
        self.metrics.ack_seconds.labels(source).observe(time.perf_counter() - started)
        return receiver.reply(reception, outcome)

    def refused(self, source: str, error: IngestError) -> None:
        label = source if source in self.tidings.receivers else "unknown"
        self.metrics.requests.labels(label, error.code).inc()
        self.metrics.rejections.labels(label, error.code).inc()
        log.debug(  # at debug: under a flood of refusals, logging each would add to the load
            "request refused",
            extra={"action": "ingest_refused", "source": label, "status": error.status, "error": error.code},
        )
