"""Segment-compatible tracking API (placeholder: the full receiver is being written)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tidings.config import SecretList
from tidings.exceptions import AuthenticationFailed
from tidings.ingest.base import InboundRequest, Receiver, Reception, SourceSettings

CALLS = ("track", "identify", "page", "screen", "group", "alias", "batch")


class SegmentSettings(SourceSettings):
    kind: Literal["segment"]
    write_keys: SecretList


class SegmentReceiver(Receiver[SegmentSettings]):
    kind = "segment"
    settings_model = SegmentSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError


def body_limit(call: str) -> int:
    return 500 * 1024 if call == "batch" else 32 * 1024


def select_source(receivers: Sequence[SegmentReceiver], request: InboundRequest) -> SegmentReceiver:
    raise AuthenticationFailed("no write key matches", code="invalid_write_key")
