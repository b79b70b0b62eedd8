"""Local stand-ins for the vendors tidings talks to, for tests, sandbox mode and the demo.

Each is a real HTTP server on 127.0.0.1 that follows its vendor's contract, records every request,
and can be told to fail (status codes, Retry-After, slowness).
"""

from __future__ import annotations

from tidings.testing.activecampaign import ActiveCampaignSimulator
from tidings.testing.klaviyo import KlaviyoSimulator
from tidings.testing.mailchimp import MailchimpSimulator, MandrillSimulator
from tidings.testing.sendgrid import SendGridSimulator
from tidings.testing.shopify import ShopifySimulator
from tidings.testing.simulator import Fault, Recorded, Simulator
from tidings.testing.stripe import StripeSimulator
from tidings.testing.webhook_sink import WebhookSink

__all__ = [
    "ActiveCampaignSimulator",
    "Fault",
    "KlaviyoSimulator",
    "MailchimpSimulator",
    "MandrillSimulator",
    "Recorded",
    "SendGridSimulator",
    "ShopifySimulator",
    "Simulator",
    "StripeSimulator",
    "WebhookSink",
]
