"""The relay's settings: the ``nats``, ``outbox`` and ``tracing`` blocks of the config file.

These frozen models travel whole from the config file to the relay, also into its
child process (pickled): a new setting is one field here and its use where it matters,
never a copy through the layers in between.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cdc_bridge.kernel.model import Duration, StrictModel
from cdc_bridge.relay.rules import min_duplicate_window

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class EmbeddedNats(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=4222, ge=0, le=65535)


class TlsConfig(StrictModel):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class Placement(StrictModel):
    #: The JetStream cluster (``cluster.name`` of the servers) to place the stream in.
    cluster: str | None = None
    #: Server tags (``server_tags``) every server holding a replica must have.
    tags: list[str] = []


class ClaimChecks(StrictModel):
    """Events too large for one message travel whole by claim check (README, "Large events")."""

    #: Put an event larger than the server's max_payload (or the stream's max_msg_size)
    #: in a JetStream object store and publish a small reference to it in its place
    #: (same id, subject and order; ``cdc_bridge.client`` resolves it). Off: such an
    #: event is dead-lettered (headers only).
    enabled: bool = True
    #: The object store bucket; default ``<stream>_CLAIMS``. Same storage, replicas and
    #: placement as the stream; objects kept ``max_age`` plus the duplicate window.
    bucket: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    #: Larger events are dead-lettered, not claim-checked (a runaway value).
    max_size: int = Field(default=64 << 20, ge=1)


class SchemaRegistry(StrictModel):
    """Every captured table's schema, versioned, in a JetStream key-value bucket
    (docs/schemas.md)."""

    #: Describe every event's table in the registry (``dataschema``, schema-change
    #: events on ``<prefix>._schema.>``). Off: events carry no schema.
    enabled: bool = True
    #: The key-value bucket; default ``<stream>_SCHEMAS``. Same storage, replicas and
    #: placement as the stream; entries are kept for ever.
    bucket: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")


class NatsConfig(StrictModel):
    #: One URL or several (a cluster). Absent -> the embedded nats-server.
    url: str | list[str] | None = None
    embedded: EmbeddedNats = EmbeddedNats()
    stream: str = Field(default="CDC", pattern=r"^[A-Za-z0-9_-]+$")
    subject_prefix: str = "cdc"
    user: str | None = None
    password: str | None = Field(default=None, repr=False)
    token: str | None = Field(default=None, repr=False)
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls: TlsConfig | None = None
    #: JetStream duplicate window: must cover the longest time between a PubAck and the
    #: outbox row's deletion (a crash in between, then restart).
    duplicate_window: Duration = 600.0
    #: Copies of the stream on a JetStream cluster (3 survives one node lost; 1 on a
    #: single server).
    replicas: int = Field(default=1, ge=1, le=5)
    #: Where JetStream places the stream's replicas; absent: wherever it chooses.
    placement: Placement | None = None
    storage: str = Field(default="file", pattern="^(file|memory)$")
    max_age: Duration = 0.0
    max_bytes: int = -1
    #: Largest message the stream accepts (-1: the server's max_payload); larger -> DLQ.
    max_msg_size: int = -1
    connect_timeout: Duration = 5.0
    ack_timeout: Duration = 10.0
    #: Longest back-off between publish/reconnect attempts (exponential with jitter).
    retry_max: Duration = 5.0
    #: Expected TLS server name when it differs from the URL's host.
    tls_hostname: str | None = None
    #: Events too large for one message: by claim check through an object store
    #: (README, "Large events").
    claim_checks: ClaimChecks = ClaimChecks()
    #: The schema registry (docs/schemas.md).
    schema_registry: SchemaRegistry = SchemaRegistry()

    @field_validator("subject_prefix")
    @classmethod
    def _prefix_tokens(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError("must be dot-separated tokens of [A-Za-z0-9_-], no wildcards")
        return value

    @model_validator(mode="after")
    def _one_auth_method(self) -> NatsConfig:
        given = [name for name, on in (
            ("user/password", self.user is not None or self.password is not None),
            ("token", self.token is not None), ("nkey_seed_file", self.nkey_seed_file),
            ("creds_file", self.creds_file)) if on]
        if len(given) > 1:  # the client would quietly use one and ignore the rest
            raise ValueError(f"give one way to authenticate, not {' and '.join(given)}")
        return self

    @model_validator(mode="after")
    def _window_covers_retries(self) -> NatsConfig:
        if self.max_age and self.duplicate_window > self.max_age:
            raise ValueError("duplicate_window cannot exceed max_age (JetStream refuses such "
                             "a stream): raise max_age or lower duplicate_window")
        least = min_duplicate_window(self.ack_timeout, self.retry_max)
        if self.duplicate_window < least:
            raise ValueError(f"duplicate_window must be at least 2 x (ack_timeout + retry_max)"
                             f" = {least:g}s, so a retried publish is still deduplicated")
        return self

    def schemas_bucket(self) -> str:
        """The schema registry's key-value bucket (``<stream>_SCHEMAS`` unless configured)."""
        return self.schema_registry.bucket or f"{self.stream}_SCHEMAS"

    def claims_bucket(self) -> str:
        """The claim checks' object store bucket (``<stream>_CLAIMS`` unless configured)."""
        return self.claim_checks.bucket or f"{self.stream}_CLAIMS"

    def servers(self) -> list[str]:
        if self.url is None:
            return [f"nats://{self.embedded.host}:{self.embedded.port}"]
        return [self.url] if isinstance(self.url, str) else list(self.url)


class OutboxConfig(StrictModel):
    #: ``sqlite:///path`` (default: under state_dir) or ``postgresql://...``.
    url: str | None = None
    #: Rows the relay reads and publishes per round.
    relay_batch: int = Field(default=2000, ge=1, le=100_000)
    #: Publishes awaiting a PubAck at once.
    max_in_flight: int = Field(default=4000, ge=1, le=100_000)
    #: Idle relay re-checks the store this often even without a wake-up.
    poll_interval: Duration = 1.0
    #: Chain the publishes over the stream (``Nats-Expected-Last-Sequence``): a message
    #: whose predecessor was not stored is refused, never stored ahead of it, so per-key
    #: order holds at any ``max_in_flight``, through leader elections and node losses.
    #: Assumes the bridge is the stream's only writer (a foreign write costs a restart).
    #: Off: a transient failure under a full pipeline may reorder (``max_in_flight: 1``
    #: prevents it).
    expect_last_sequence: bool = True


class TracingConfig(StrictModel):
    """OpenTelemetry spans of capture, outbox commit and publish (docs/tracing.md).

    Every event carries its ``traceparent`` whether or not this is on; on, the bridge
    (both of its processes) exports spans over OTLP. Needs the ``otel`` extra
    (``pip install 'cdc-bridge[otel]'``); without it the bridge warns and runs untraced.
    """

    #: Export spans (both processes of the bridge). Off: events still carry their
    #: ``traceparent``, nothing else is done.
    enabled: bool = False
    #: The OTLP/HTTP endpoint: a collector's base URL (``/v1/traces`` is appended) or
    #: the full traces URL. E.g. ``${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4318}``.
    endpoint: str = "http://127.0.0.1:4318"
    #: The OTLP transport: protobuf over HTTP.
    protocol: Literal["http/protobuf"] = "http/protobuf"
    #: ``service.name`` of the exported spans.
    service_name: str = Field(default="cdc-bridge", min_length=1)
    #: Share of traces sampled, decided from the trace id (= the event id) alone, so the
    #: bridge and every SDK downstream agree. Sets the ``traceparent`` flags of new
    #: events; per-event spans are exported for sampled events only (batch spans always).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    #: Spans are exported in batches this often.
    export_interval: Duration = 1.0
    #: Spans waiting for export at most; more are dropped (the SDK logs it).
    max_queue: int = Field(default=20_000, ge=100, le=1_000_000)
    #: Links from a batch span to its sampled events' traces, at most.
    max_links: int = Field(default=128, ge=0, le=10_000)
    #: Timeout of one export request.
    timeout: Duration = 10.0

    def traces_url(self) -> str:
        """The URL spans are posted to."""
        url = self.endpoint.rstrip("/")
        return url if url.endswith("/v1/traces") else url + "/v1/traces"
