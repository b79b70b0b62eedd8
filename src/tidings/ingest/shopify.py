"""Shopify receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.config import SecretList
from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class ShopifySettings(SourceSettings):
    kind: Literal["shopify"]
    secrets: SecretList = []


class ShopifyReceiver(Receiver[ShopifySettings]):
    kind = "shopify"
    settings_model = ShopifySettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
