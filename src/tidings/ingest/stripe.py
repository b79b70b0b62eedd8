"""Stripe receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.config import SecretList
from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class StripeSettings(SourceSettings):
    kind: Literal["stripe"]
    secrets: SecretList = []


class StripeReceiver(Receiver[StripeSettings]):
    kind = "stripe"
    settings_model = StripeSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
