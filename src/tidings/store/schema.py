"""Every table, in one place. Migrations in `migrations/versions` must match this (tested)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite has no 64-bit autoincrement type distinct from INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are aware UTC going in and coming out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


requests = Table(
    "requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("method", String(10), nullable=False),
    Column("url", Text, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

inbox = Table(
    "inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("request_id", Id, ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(100), nullable=False),
    Column("item_index", Integer, nullable=False),
    Column("dedupe_key", String(512), nullable=False),
    Column("topic", String(200)),
    Column("payload", LargeBinary),  # NULL: the whole request body is the item
    Column("received_at", UTCDateTime(), nullable=False),
    # pending: waits to be processed; flagged: authentic but not interpretable; later stages add theirs
    Column("status", String(20), nullable=False),
    Column("error", Text),
    Index("ix_inbox_status_id", "status", "id"),
    Index("ix_inbox_source_id", "source", "id"),
    Index("ix_inbox_request_id", "request_id"),
)

dedupe_keys = Table(
    "dedupe_keys",
    metadata,
    Column("source", String(100), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_dedupe_keys_expires_at", "expires_at"),
)
