"""`tidings demo`: the abandoned-cart flow end to end in about a minute, with no account anywhere.

A simulated Shopify store (`shop.py`) plays a scripted half hour (`story.py`) against tidings'
real HTTP endpoint; tidings runs the packaged config (`config.yaml`, the abandoned-cart example)
in sandbox mode, so Klaviyo is a local simulator; a `ScaledClock` makes the flow's wait short;
`feed.py` shows what happens as it happens and sums it up (`run.py` plays it all).
"""

from __future__ import annotations

from tidings.demo.run import DemoOptions, DemoResult, run_demo

__all__ = ["DemoOptions", "DemoResult", "run_demo"]
