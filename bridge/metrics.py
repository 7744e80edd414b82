"""Prometheus metrics of the bridge, defined once here and updated where things happen.

All metrics live in one :data:`REGISTRY` (not the global default, so tests and several
daemons in one process do not collide). Label sets stay small: adapter and table, never
keys or values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CAPTURED = Counter(
    "cdc_events_captured", "Events committed to the outbox", ["adapter", "table"],
    registry=REGISTRY)
DEAD_LETTERS = Counter(
    "cdc_dead_letters", "Inputs or events sent to the dead-letter subject", ["adapter", "stage"],
    registry=REGISTRY)
EVENTS_PUBLISHED = Counter(
    "cdc_events_published", "Events stored in JetStream (PubAck received)", registry=REGISTRY)
PUBLISH_DUPLICATES = Counter(
    "cdc_publish_duplicates", "Publishes JetStream reported as duplicates", registry=REGISTRY)
PUBLISH_FAILURES = Counter(
    "cdc_publish_failures", "Publish batches that failed and were retried", registry=REGISTRY)
PUBLISH_LATENCY = Histogram(
    "cdc_publish_latency_seconds", "Time from outbox append to PubAck",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY)
OUTBOX_PENDING = Gauge(
    "cdc_outbox_pending", "Events in the outbox not yet published", registry=REGISTRY)
OUTBOX_OLDEST_AGE = Gauge(
    "cdc_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event",
    registry=REGISTRY)
OUTBOX_SIZE = Gauge("cdc_outbox_size_bytes", "Size of the outbox store", registry=REGISTRY)
SOURCE_LAG = Gauge(
    "cdc_source_lag", "Source lag (replication slot bytes, poll delay seconds, file bytes)",
    ["adapter", "unit"], registry=REGISTRY)
RECONNECTS = Counter(
    "cdc_reconnects", "Reconnections to a source or to NATS", ["target"], registry=REGISTRY)
ADAPTER_RESTARTS = Counter(
    "cdc_adapter_restarts", "Adapter restarts by the supervisor", ["adapter"], registry=REGISTRY)
ADAPTER_UP = Gauge(
    "cdc_adapter_up", "1 while the adapter is connected and capturing", ["adapter"],
    registry=REGISTRY)
TABLE_FAILED = Gauge(
    "cdc_table_failed", "1 while a table is set aside by a fatal error of its own",
    ["adapter", "table"], registry=REGISTRY)
NATS_CONNECTED = Gauge("cdc_nats_connected", "1 while connected to NATS", registry=REGISTRY)
