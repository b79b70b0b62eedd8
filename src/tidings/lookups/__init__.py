"""Live lookups: ask a source's own API about a cart right before a flow sends about it.

A webhook can arrive late or never, so "the customer abandoned this checkout" may be stale by the
time the reminder is due. A lookup answers from the vendor's current state: bought (do not send),
gone (nothing to send about), or still open, with its current items, total and recovery link.
"""

from __future__ import annotations

from tidings.lookups.base import CartLookup, CartState, LookupUnavailable
from tidings.lookups.registry import cart_lookup

__all__ = ["CartLookup", "CartState", "LookupUnavailable", "cart_lookup"]
