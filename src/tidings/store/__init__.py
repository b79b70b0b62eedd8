"""Storage: SQLAlchemy Core tables, Alembic migrations, SQLite and PostgreSQL specifics."""

from __future__ import annotations

from tidings.store.engine import Store

__all__ = ["Store"]
