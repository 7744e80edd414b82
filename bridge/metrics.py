"""Prometheus metrics of the bridge, defined once here and updated where things happen.

All metrics live in one :data:`REGISTRY` (not the global default, so tests and several
daemons in one process do not collide). Label sets stay small: adapter and table, never
keys or values. Conventions: one unit per metric (in its name), counters end in
``_total`` and expose no ``_created`` series, and the daemon creates every adapter's
labelled series at start (:func:`init_adapter_series`), so they read 0 rather than being
absent until something happens. On the relay's series, ``adapter`` is the adapter token
of the event's subject (``<prefix>.<adapter>.…``; ``outbox`` for routed outbox events).
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CAPTURED = Counter(
    "cdc_events_captured", "Events committed to the outbox", ["adapter", "table"],
    registry=REGISTRY)
DEAD_LETTERS = Counter(
    "cdc_dead_letters", "Inputs or events sent to the dead-letter subject", ["adapter", "stage"],
    registry=REGISTRY)
EVENTS_PUBLISHED = Counter(
    "cdc_events_published", "Events stored in JetStream (PubAck received)", ["adapter"],
    registry=REGISTRY)
PUBLISH_DUPLICATES = Counter(
    "cdc_publish_duplicates", "Publishes JetStream reported as duplicates", ["adapter"],
    registry=REGISTRY)
PUBLISH_FAILURES = Counter(
    "cdc_publish_failures", "Publish batches that failed and were retried", registry=REGISTRY)
PUBLISH_LATENCY = Histogram(
    "cdc_publish_latency_seconds", "Time from outbox append to PubAck", ["adapter"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY)
OUTBOX_PENDING = Gauge(
    "cdc_outbox_pending", "Events in the outbox not yet published", registry=REGISTRY)
OUTBOX_OLDEST_AGE = Gauge(
    "cdc_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event",
    registry=REGISTRY)
OUTBOX_SIZE = Gauge("cdc_outbox_size_bytes", "Size of the outbox store", registry=REGISTRY)
SOURCE_LAG_SECONDS = Gauge(
    "cdc_source_lag_seconds", "How far capture is behind the source in time (polls: since "
    "the start of the oldest table's last complete poll; binlog: the last event's age)",
    ["adapter"], registry=REGISTRY)
SOURCE_LAG_BYTES = Gauge(
    "cdc_source_lag_bytes", "How far capture is behind the source in bytes (WAL the slot "
    "holds back, binlog or file bytes not read yet)", ["adapter"], registry=REGISTRY)
#: ``Adapter.lag()`` units -> their gauge.
SOURCE_LAG = {"seconds": SOURCE_LAG_SECONDS, "bytes": SOURCE_LAG_BYTES}
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
ORDER_WINDOW = Counter(
    "cdc_relay_order_window", "Times a row may have been stored after a later row of the "
    "same subject (docs/outbox.md, Order)", registry=REGISTRY)
SNAPSHOT_ROWS_DONE = Gauge(
    "cdc_snapshot_rows_done", "Rows read by the adapter's latest re-snapshot run",
    ["adapter"], registry=REGISTRY)
SNAPSHOT_ROWS_TOTAL = Gauge(
    "cdc_snapshot_rows_total", "Estimated rows of the adapter's latest re-snapshot run",
    ["adapter"], registry=REGISTRY)
SCHEMA_VERSION = Gauge(
    "cdc_schema_version", "The latest schema version of a captured table (docs/schemas.md)",
    ["adapter", "table"], registry=REGISTRY)
SCHEMA_CHANGES = Counter(
    "cdc_schema_changes", "Schema changes of captured tables, by compatibility verdict",
    ["adapter", "verdict"], registry=REGISTRY)
TABLE_PAUSED = Gauge(
    "cdc_table_paused", "1 while a table's events are held after a breaking schema change",
    ["adapter", "table"], registry=REGISTRY)
SCHEMA_HELD = Gauge(
    "cdc_schema_held_rows", "Rows held in the outbox for a paused table",
    ["adapter", "table"], registry=REGISTRY)
GROUP_MEMBERS = Gauge(
    "cdc_group_members", "Live members of the group (group mode; docs/group.md)",
    registry=REGISTRY)
GROUP_LEASE_EPOCH = Gauge(
    "cdc_group_lease_epoch", "Epoch of the resource's lease (grows at each change of hands)",
    ["resource"], registry=REGISTRY)
GROUP_LEASE_AGE = Gauge(
    "cdc_group_lease_age_seconds", "Seconds since the resource's lease was last taken",
    ["resource"], registry=REGISTRY)
GROUP_LEASE_HELD_HERE = Gauge(
    "cdc_group_lease_held", "1 while this member holds the resource's lease",
    ["resource"], registry=REGISTRY)
GROUP_LEASE_OWNER = Gauge(
    "cdc_group_lease_owner_info", "1 for the resource's current owner (member id; "
    "empty: free)", ["resource", "owner"], registry=REGISTRY)
_LEASE_OWNERS: dict[str, str] = {}
BUILD_INFO = Info("cdc_build", "cdc-bridge version and Python", registry=REGISTRY)


def _version() -> str:
    try:
        return metadata.version("cdc-bridge")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _version(), "python": platform.python_version()})

#: Stages of :data:`DEAD_LETTERS`.
DEAD_LETTER_STAGES = ("capture", "publish")


def set_lease_owner(resource: str, owner: str) -> None:
    """One ``cdc_group_lease_owner_info`` series per resource: its current owner."""
    previous = _LEASE_OWNERS.get(resource)
    if previous is not None and previous != owner:
        GROUP_LEASE_OWNER.remove(resource, previous)
    _LEASE_OWNERS[resource] = owner
    GROUP_LEASE_OWNER.labels(resource, owner).set(1)


def init_adapter_series(adapter: str) -> None:
    """Create ``adapter``'s labelled series (at 0) so dashboards see them from the start."""
    for counter in (EVENTS_PUBLISHED, PUBLISH_DUPLICATES, ADAPTER_RESTARTS):
        counter.labels(adapter)
    for stage in DEAD_LETTER_STAGES:
        DEAD_LETTERS.labels(adapter, stage)
    PUBLISH_LATENCY.labels(adapter)
    ADAPTER_UP.labels(adapter).set(0)
    for gauge in (SNAPSHOT_ROWS_DONE, SNAPSHOT_ROWS_TOTAL):
        gauge.labels(adapter)
    for verdict in ("full", "backward", "forward", "breaking"):
        SCHEMA_CHANGES.labels(adapter, verdict)
    # (the lag gauges appear with the source's first report: which units it has
    # depends on its type, and a made-up 0 would read as "caught up")
