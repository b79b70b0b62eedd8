"""The destination kinds tidings knows: `kind:` under `destinations:` to its class."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from tidings.destinations.activecampaign import ActiveCampaignDestination
from tidings.destinations.base import Destination
from tidings.destinations.klaviyo import KlaviyoDestination
from tidings.destinations.mailchimp import MailchimpDestination
from tidings.destinations.mailchimp_transactional import MailchimpTransactionalDestination
from tidings.destinations.sendgrid import SendGridDestination
from tidings.destinations.smtp import SmtpDestination
from tidings.destinations.webhook import WebhookDestination

DESTINATIONS: dict[str, type[Destination[Any]]] = {
    cls.kind: cls
    for cls in (
        WebhookDestination,
        KlaviyoDestination,
        MailchimpDestination,
        MailchimpTransactionalDestination,
        SendGridDestination,
        ActiveCampaignDestination,
        SmtpDestination,
    )
}

_models = tuple(cls.settings_model for cls in DESTINATIONS.values())
DestinationSettingsUnion: Any = (
    Annotated[Union[_models], Field(discriminator="kind")] if len(_models) > 1 else _models[0]  # noqa: UP007
)


def destination_class(kind: str) -> type[Destination[Any]]:
    return DESTINATIONS[kind]
