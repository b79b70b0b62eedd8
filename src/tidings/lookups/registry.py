"""Which source kinds can be asked about a cart, and the lookup for a configured source.

A kind with a lookup has a `lookup:` block in its source settings; adding one is a module in this
package and one line here.
"""

from __future__ import annotations

import httpx

from tidings.clock import Clock
from tidings.ingest.base import SourceSettings
from tidings.ingest.shopify import ShopifySettings
from tidings.ingest.stripe import StripeSettings
from tidings.lookups.base import CartLookup
from tidings.lookups.shopify import ShopifyCartLookup
from tidings.lookups.stripe import StripeCartLookup

KINDS = ("shopify", "stripe")  # source kinds that have a lookup


def cart_lookup(
    source_name: str, settings: SourceSettings, http: httpx.AsyncClient, *, clock: Clock | None = None
) -> CartLookup | None:
    """The source's lookup; None when its kind has none or its `lookup:` block is absent."""
    if isinstance(settings, ShopifySettings) and settings.lookup is not None:
        return ShopifyCartLookup(source_name, settings.lookup, http)
    if isinstance(settings, StripeSettings) and settings.lookup is not None:
        return StripeCartLookup(source_name, settings.lookup, http, clock=clock)
    return None
