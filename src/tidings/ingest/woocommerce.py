"""WooCommerce receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.config import SecretList
from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class WooCommerceSettings(SourceSettings):
    kind: Literal["woocommerce"]
    secrets: SecretList = []


class WooCommerceReceiver(Receiver[WooCommerceSettings]):
    kind = "woocommerce"
    settings_model = WooCommerceSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
