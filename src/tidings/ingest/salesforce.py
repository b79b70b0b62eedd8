"""Salesforce receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.config import SecretList
from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class SalesforceSettings(SourceSettings):
    kind: Literal["salesforce"]
    secrets: SecretList = []


class SalesforceReceiver(Receiver[SalesforceSettings]):
    kind = "salesforce"
    settings_model = SalesforceSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
