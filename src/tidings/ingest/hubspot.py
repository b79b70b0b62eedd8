"""HubSpot receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.config import SecretList
from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class HubSpotSettings(SourceSettings):
    kind: Literal["hubspot"]
    secrets: SecretList = []


class HubSpotReceiver(Receiver[HubSpotSettings]):
    kind = "hubspot"
    settings_model = HubSpotSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
