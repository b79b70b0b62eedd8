"""Every table, in one place. Migrations in `migrations/versions` must match this (tested)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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
    text,
)
from sqlalchemy.engine import Dialect

from tidings.store.codec import as_utc, sqlite_datetime, sqlite_timestamp, stored_utc

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
        return None if value is None else as_utc(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name == "sqlite":  # the same text as DateTime's own processor, at a third the cost
            return sqlite_timestamp
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":  # the same values as DateTime's own processor, a tenth the cost
            return sqlite_datetime
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return stored_utc(value)


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

# --------------------------------------------------------------------------- profiles

profiles = Table(
    "profiles",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("merged_into", Id, ForeignKey("profiles.id")),
    Column("traits", JSON, nullable=False),  # field -> value
    Column("trait_versions", JSON, nullable=False),  # field -> [occurred_at ISO, inbox id]
    Column("consent", JSON, nullable=False),  # channel -> {state, at, source, inbox_id}
    # aggregate trait -> running state, so a new order costs the same whatever the history
    Column("aggregates", JSON, nullable=False, server_default="{}"),
)

identities = Table(
    "identities",
    metadata,
    Column("kind", String(100), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Index("ix_identities_profile_id", "profile_id"),
)

# The canonical event log: one row per mapped inbox item; later stages (flows) read it.
events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inbox_id", Id, ForeignKey("inbox.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("source", String(100), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("applied_at", UTCDateTime(), nullable=False),
    Column("identities", JSON, nullable=False),
    Column("properties", JSON, nullable=False),
    Column("traits", JSON, nullable=False),
    Column("consent", JSON, nullable=False),
    Index("ix_events_profile_id_occurred_at", "profile_id", "occurred_at"),
)

timeline = Table(
    "timeline",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),  # when it happened (the event's occurred_at)
    Column("recorded_at", UTCDateTime(), nullable=False),
    Column("kind", String(20), nullable=False),  # event | trait | consent | merge
    Column("event_id", Id, ForeignKey("events.id", ondelete="CASCADE")),
    Column("field", String(200)),
    Column("old", JSON),
    Column("new", JSON),
    Column("detail", JSON),
    Index("ix_timeline_profile_id_at", "profile_id", "at"),
)

profile_merges = Table(
    "profile_merges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("from_profile_id", Id, nullable=False),
    Column("into_profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("event_id", Id, ForeignKey("events.id", ondelete="SET NULL")),
    Column("identities", JSON, nullable=False),
)


# --------------------------------------------------------------------------- delivery

# One row per intended effect, written in the transaction of the decision that causes it.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("destination", String(100), nullable=False),
    Column("action", String(50), nullable=False),
    Column("idempotency_key", String(400), nullable=False, unique=True),
    # Effects on one contact that coalesce (profile sync): at most one pending row per key.
    Column("coalesce_key", String(400)),
    Column("profile_id", Id),
    Column("payload", JSON, nullable=False),
    # pending -> in_flight -> delivered | dead; in_flight past its lease is retried (crash recovery)
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("lease_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("data_occurred_at", UTCDateTime()),  # the newest event the effect carries (freshness)
    Column("delivered_at", UTCDateTime()),
    Column("remote_id", String(200)),
    Column("last_error", Text),
    Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_outbox_destination_status_next_attempt_at", "destination", "status", "next_attempt_at"),
    Index(
        "uq_outbox_pending_coalesce_key",
        "coalesce_key",
        unique=True,
        sqlite_where=text("status = 'pending' AND coalesce_key IS NOT NULL"),
        postgresql_where=text("status = 'pending' AND coalesce_key IS NOT NULL"),
    ),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("outbox_id", Id, ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("request", JSON, nullable=False),  # method, url, size: never credentials or bodies
    Column("status_code", Integer),
    Column("latency_ms", Integer),
    Column("outcome", String(20), nullable=False),  # delivered | retry | dead | paused
    Column("error", Text),
    Index("ix_delivery_attempts_outbox_id", "outbox_id"),
)

# Shared by every worker of a destination: the circuit breaker and pauses.
destination_state = Table(
    "destination_state",
    metadata,
    Column("destination", String(100), primary_key=True),
    Column("consecutive_failures", Integer, nullable=False),
    Column("paused_until", UTCDateTime()),
    Column("paused_reason", Text),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# --------------------------------------------------------------------------- flows

# Every version of every flow a run was started with, so a run keeps the steps it began with.
flow_versions = Table(
    "flow_versions",
    metadata,
    Column("flow", String(100), primary_key=True),
    Column("version", String(32), primary_key=True),  # a hash of the flow's definition
    Column("definition", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# One row per run: its state is its timer. Due runs are claimed by pushing `due_at` one lease
# ahead and bumping `claim`; a crash lets the lease run out, and a stale claim settles nothing.
flow_runs = Table(
    "flow_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(100), nullable=False),
    Column("version", String(32), nullable=False),
    Column("run_key", String(400), nullable=False),
    # = run_key while the run is active, else NULL: at most one active run per flow and key
    Column("active_key", String(400)),
    Column("profile_id", Id, nullable=False),
    Column("status", String(20), nullable=False),  # active | completed | exited | failed
    Column("step", String(100)),  # the step to run next (or being waited in)
    Column("due_at", UTCDateTime()),  # NULL: waiting for an event only
    Column("wake", String(20)),  # why it is due: timer | event | retry
    Column("claim", Integer, nullable=False),
    Column("visits", Integer, nullable=False),  # steps run so far: unique per step execution
    Column("context", JSON, nullable=False),  # the trigger event, the matched event, lookup results
    Column("started_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime()),
    Column("end_reason", Text),
    Index("ix_flow_runs_status_due_at", "status", "due_at"),
    Index("ix_flow_runs_profile_id_status", "profile_id", "status"),
    Index("ix_flow_runs_flow_run_key", "flow", "run_key"),
    Index("uq_flow_runs_flow_active_key", "flow", "active_key", unique=True),
)

# What each run did and why: every step taken, every guard checked.
flow_steps = Table(
    "flow_steps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("flow_runs.id", ondelete="CASCADE"), nullable=False),
    Column("flow", String(100), nullable=False),
    Column("profile_id", Id, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("step", String(100), nullable=False),
    Column("kind", String(20), nullable=False),  # trigger | wait | wait_for | branch | send | ...
    Column("outcome", String(20), nullable=False),  # e.g. sent | skipped | delayed | waiting | taken
    Column("reason", Text),
    Column("detail", JSON),
    Index("ix_flow_steps_run_id", "run_id"),
    Index("ix_flow_steps_profile_id_at", "profile_id", "at"),
    Index("ix_flow_steps_flow_at", "flow", "at"),
)


# --- shared rate budget (delivery/budget.py)
# One budget per destination for every worker on the database. Times are the database's clock in
# microseconds since the epoch (every worker reads the same one).

# The shortest window as a shared schedule of evenly spaced starts: the first one not leased yet.
rate_schedule = Table(
    "rate_schedule",
    metadata,
    Column("destination", String(100), primary_key=True),
    Column("next_start_us", BigInteger, nullable=False),
)

# Longer windows, counted in fixed slots: starts leased in each slot (used or not).
rate_budget = Table(
    "rate_budget",
    metadata,
    Column("destination", String(100), primary_key=True),
    Column("window_us", BigInteger, primary_key=True),
    Column("slot_start_us", BigInteger, primary_key=True),
    Column("used", Integer, nullable=False),
)

# A heartbeat per worker and destination: the live ones that want to send split the permits.
rate_workers = Table(
    "rate_workers",
    metadata,
    Column("destination", String(100), primary_key=True),
    Column("worker", String(100), primary_key=True),
    Column("wants", Integer, nullable=False),  # requests waiting or in flight at the last heartbeat
    Column("expires_us", BigInteger, nullable=False),
)

# One row per connection the destination allows, held by at most one worker until it expires.
rate_permits = Table(
    "rate_permits",
    metadata,
    Column("destination", String(100), primary_key=True),
    Column("permit", Integer, primary_key=True),
    Column("holder", String(100)),
    Column("expires_us", BigInteger, nullable=False),
)
