"""The operator's dashboard at /ui: server-rendered pages over the store, behind an admin token."""

from __future__ import annotations

from tidings.ui.routes import router

__all__ = ["router"]
