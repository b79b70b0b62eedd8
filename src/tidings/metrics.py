"""Prometheus metrics, one registry per running tidings (so tests and embedders don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tidings_ingest_requests_total",
            "Webhook and tracking requests, by source and outcome "
            "(accepted, duplicate, flagged, or the refusal's error code).",
            ["source", "outcome"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "tidings_ingest_ack_seconds",
            "Time from the request's arrival to its answer, for stored requests (includes the commit).",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.items = Counter(
            "tidings_ingest_items_total", "Events stored in the inbox, by source.", ["source"], registry=r
        )
        self.duplicates = Counter(
            "tidings_ingest_duplicates_total",
            "Events recognised as re-deliveries and not stored again, by source.",
            ["source"],
            registry=r,
        )
        self.rejections = Counter(
            "tidings_ingest_rejections_total",
            "Requests refused, by source and reason (the JSON error code).",
            ["source", "reason"],
            registry=r,
        )
        self.commit_batch_size = Histogram(
            "tidings_inbox_commit_batch_size",
            "Requests stored per group-commit transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.receipt_delay = Histogram(
            "tidings_event_receipt_delay_seconds",
            "How late events reach tidings: receipt time minus the event's occurred_at, by source.",
            ["source"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
            registry=r,
        )
        self.processing_delay = Histogram(
            "tidings_event_processing_delay_seconds",
            "From receipt to the event applied to its profile, by source.",
            ["source"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.deliveries = Counter(
            "tidings_deliveries_total",
            "Delivery attempts settled, by destination and outcome (delivered, retry, dead, paused).",
            ["destination", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "tidings_delivery_seconds",
            "Time a destination took to answer, by destination.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivered_data_age = Histogram(
            "tidings_delivered_data_age_seconds",
            "Freshness: acknowledgement time minus the occurred_at of the newest event an effect carried.",
            ["destination"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.pending_writes = Gauge(
            "tidings_inbox_pending_writes", "Requests waiting for the next group commit.", registry=r
        )
        self.flow_runs = Counter(
            "tidings_flow_runs_total",
            "Flow runs started and ended, by flow and outcome (started, completed, exited, cancelled).",
            ["flow", "outcome"],
            registry=r,
        )
        self.flow_sends = Counter(
            "tidings_flow_sends_total",
            "Flow send steps, by flow and outcome (sent, skipped, delayed) and reason.",
            ["flow", "outcome", "reason"],
            registry=r,
        )
        self.timers_pending = Gauge(
            "tidings_flow_timers_pending", "Flow runs waiting for a due time (durable timers).", registry=r
        )
        self.timers_overdue = Gauge(
            "tidings_flow_timers_overdue",
            "Durable timers whose due time passed more than 60 s ago and have not fired yet.",
            registry=r,
        )
        self.timer_lateness = Histogram(
            "tidings_flow_timer_lateness_seconds",
            "From a timer's due time to its step running (outbox row written when it sends).",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        # Read from the store by tidings.observe.StoreGauges every few seconds, not counted here:
        # they describe the shared database, so every process reports the same values.
        self.deliveries_dead = Gauge(
            "tidings_deliveries_dead",
            "Dead letters held, by destination (effects given up on, waiting for an operator).",
            ["destination"],
            registry=r,
        )
        self.deliveries_pending = Gauge(
            "tidings_deliveries_pending",
            "Effects not yet settled, by destination: due, waiting for a retry, or in flight.",
            ["destination"],
            registry=r,
        )
        self.destination_paused = Gauge(
            "tidings_destination_paused",
            "1 while the destination is paused (circuit open or credentials rejected), else 0.",
            ["destination"],
            registry=r,
        )
        self.inbox_pending = Gauge(
            "tidings_inbox_pending", "Stored events waiting to be processed.", registry=r
        )
        self.inbox_oldest_pending = Gauge(
            "tidings_inbox_oldest_pending_seconds",
            "Age of the oldest stored event waiting to be processed (0 when none waits).",
            registry=r,
        )
        self.store_gauges_refreshed = Gauge(
            "tidings_store_gauges_refreshed_timestamp_seconds",
            "When the gauges read from the store were last refreshed (Unix time).",
            registry=r,
        )
