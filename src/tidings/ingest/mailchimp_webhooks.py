"""MailchimpWebhooks receiver (being written)."""

from __future__ import annotations

from typing import Literal

from tidings.ingest.base import InboundRequest, Reception, Receiver, SourceSettings


class MailchimpWebhooksSettings(SourceSettings):
    kind: Literal["mailchimp-webhooks"]


class MailchimpWebhooksReceiver(Receiver[MailchimpWebhooksSettings]):
    kind = "mailchimp-webhooks"
    settings_model = MailchimpWebhooksSettings

    def receive(self, request: InboundRequest) -> Reception:
        raise NotImplementedError
