"""The source kinds tidings knows: `kind:` in tidings.yaml to its receiver class.

Adding a sender kind is one module with a settings model and a receiver, plus one line here.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from tidings.ingest.base import Receiver
from tidings.ingest.hubspot import HubSpotReceiver
from tidings.ingest.mailchimp_webhooks import MailchimpWebhooksReceiver
from tidings.ingest.salesforce import SalesforceReceiver
from tidings.ingest.segment import SegmentReceiver
from tidings.ingest.sendgrid_events import SendGridEventsReceiver
from tidings.ingest.shopify import ShopifyReceiver
from tidings.ingest.standard_webhooks import StandardWebhooksReceiver
from tidings.ingest.stripe import StripeReceiver
from tidings.ingest.woocommerce import WooCommerceReceiver

RECEIVERS: dict[str, type[Receiver[Any]]] = {
    cls.kind: cls
    for cls in (
        ShopifyReceiver,
        HubSpotReceiver,
        StripeReceiver,
        WooCommerceReceiver,
        StandardWebhooksReceiver,
        SalesforceReceiver,
        SegmentReceiver,
        SendGridEventsReceiver,
        MailchimpWebhooksReceiver,
    )
}

_models = tuple(cls.settings_model for cls in RECEIVERS.values())
# `kind` picks the model, so an error names only that kind's keys (and an unknown kind lists the known).
SourceSettingsUnion: Any = Annotated[Union[_models], Field(discriminator="kind")]  # noqa: UP007


def receiver_class(kind: str) -> type[Receiver[Any]]:
    return RECEIVERS[kind]
