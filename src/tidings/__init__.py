"""tidings: a self-hosted, real-time bridge from CRMs and shops to Email Service Providers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
