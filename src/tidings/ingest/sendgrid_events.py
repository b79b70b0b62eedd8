"""SendGridEvents receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class SendGridEventsSettings(SourceSettings):
    kind: Literal["sendgrid-events"]


class SendGridEventsReceiver(Receiver[SendGridEventsSettings]):
    kind = "sendgrid-events"
    settings_model = SendGridEventsSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
