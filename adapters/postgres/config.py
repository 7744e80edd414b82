"""Config model of ``type: postgres`` (strict, frozen; unknown keys are errors).

```yaml
- name: shop
  type: postgres
  dsn: postgresql://cdc:${PG_PASSWORD}@db/shop
  tables:                         # "schema.table", "table" (= public.table), "schema.*"
    - public.orders
    - {name: public.customers, columns: {exclude: [notes], mask: [email], mask_salt: "${SALT}"}}
    - {name: public.invoices, filter: "status in ('open', 'paid') and amount >= 100"}
  exclude_tables: [public.orders_archive]
  outbox_tables: [public.cdc_outbox]  # relayed as domain events (write_event), not rows
  snapshot: initial               # initial | never | when_needed
  slot: cdc_bridge_shop           # default: cdc_bridge_<name>
  publication: cdc_bridge_shop    # default: cdc_bridge_<name>
  publication_mode: managed       # managed: create / keep in sync; existing: use as is
  heartbeat_interval: 10s         # 0 disables
```

Durations accept ``250ms``, ``5s``... (see :mod:`cdc_bridge.kernel.model`). The slot and publication
names are checked here so they can be quoted safely later.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.adapters.filters import FilterText
from cdc_bridge.adapters.subjects import SubjectTemplateText, TableSubject, table_scopes
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.model import Duration, StrictModel
from cdc_bridge.kernel.subjects import ANY, SubjectScope

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Prefix of the logical messages the heartbeat writes (never emitted as events).
HEARTBEAT_PREFIX = "cdc-bridge-heartbeat"
#: Logical message written with a table's return to the publication (see tables.py).
RESET_PREFIX = "cdc-bridge-reset"


class PgTable(StrictModel):
    #: ``schema.table``, ``table`` (schema ``public``) or ``schema.*``.
    name: str
    columns: ColumnRules | None = None
    #: Subject template of this table (docs/subjects.md), relative to the subject
    #: prefix, e.g. ``erp.{col:tenant}.{table}.{op}``; default: the adapter's ``subject``.
    subject: SubjectTemplateText | None = None
    #: This table may share subjects with another table (both must say so).
    allow_shared_subject: bool | None = None
    #: Row filter (docs/filters.md): the publication's row filter (managed publication,
    #: PostgreSQL 15+) and the snapshot's WHERE; evaluated in the bridge otherwise.
    filter: FilterText | None = None


class PostgresConfig(AdapterConfig):
    type: Literal["postgres"]
    #: libpq connection string or URI; the same role is used for replication.
    dsn: str = Field(repr=False)
    #: Tables to capture: ``schema.table``, ``table`` (schema ``public``), ``schema.*``,
    #: or a mapping with ``name`` and ``columns``. May be empty when ``outbox_tables``
    #: is not.
    tables: list[str | PgTable] = Field(default_factory=list)
    exclude_tables: list[str] = Field(default_factory=list)
    #: Application outbox tables (``name`` or ``schema.name``, the layout of
    #: ``cdc_bridge.client.outbox``): each inserted row is published to
    #: ``<prefix>.outbox.<aggregate_type>.<event_type>`` like ``type: outbox_table``
    #: does; their updates, deletes and truncates are ignored, and they yield no row
    #: change events.
    outbox_tables: list[str] = Field(default_factory=list)
    snapshot: Literal["initial", "never", "when_needed"] = "initial"
    slot: str | None = None
    publication: str | None = None
    #: ``managed``: create the publication if missing and keep its table list equal to
    #: the configured tables; ``existing``: it must exist and is used unchanged.
    publication_mode: Literal["managed", "existing"] = "managed"
    #: ``true``: create the slot if missing; ``false``: it must exist.
    create_slot: bool = True
    #: Events per batch committed to the outbox (also inside one large transaction).
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    #: A partial batch is committed at the latest this long after its first event.
    max_batch_delay: Duration = 0.02
    #: Rows per snapshot chunk (one outbox commit and one checkpoint per chunk).
    snapshot_chunk_size: int = Field(default=5000, ge=1, le=1_000_000)
    #: Standby status updates are sent at least this often.
    status_interval: Duration = 10.0
    #: Idle heartbeat (pg_logical_emit_message) so the slot advances; 0 disables.
    heartbeat_interval: Duration = 10.0
    #: Prefixes of pg_logical_emit_message messages to emit as events (see README).
    messages: list[str] = Field(default_factory=list)
    #: A captured table dropped and re-created, or taken out of the publication:
    #: ``resnapshot`` puts it back (managed publication) and sends a ``t`` then its rows
    #: again as ``r``; ``stop`` stops the daemon with the reason.
    on_table_change: Literal["resnapshot", "stop"] = "resnapshot"
    #: How often the captured tables are compared with the publication; 0 disables.
    table_check_interval: Duration = 30.0
    connect_timeout: Duration = 10.0
    #: Subject template of every table (docs/subjects.md), relative to the subject prefix,
    #: e.g. ``erp.{table}.{op}``; default: ``<adapter>.<schema>.<table>.<op>``.
    subject: SubjectTemplateText | None = None
    #: The template may give two tables the same subject on purpose (docs/subjects.md).
    allow_shared_subject: bool = False

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENT.match(value):
            raise ValueError("must match [a-z_][a-z0-9_]* (at most 63 characters)")
        return value

    @field_validator("outbox_tables")
    @classmethod
    def _outbox_names(cls, value: list[str]) -> list[str]:
        for name in value:
            parts = name.split(".")
            if not 1 <= len(parts) <= 2 or not all(parts) or "*" in name:
                raise ValueError(f"outbox table must be 'name' or 'schema.name', got {name!r}")
        return value

    @model_validator(mode="after")
    def _something_to_relay(self) -> PostgresConfig:
        if not self.tables and not self.outbox_tables:
            raise ValueError("set tables, outbox_tables or both")
        both = {".".join(split_name(t.name)) for t in self.table_specs()} & set(
            self.outbox_names())
        if both:
            raise ValueError(f"{', '.join(sorted(both))} listed in both tables and "
                             "outbox_tables: an outbox table is relayed as events, not rows")
        return self

    @field_validator("messages")
    @classmethod
    def _no_heartbeat(cls, value: list[str]) -> list[str]:
        if HEARTBEAT_PREFIX in value or RESET_PREFIX in value:
            raise ValueError(f"{HEARTBEAT_PREFIX!r} and {RESET_PREFIX!r} are reserved")
        return value

    def slot_name(self) -> str:
        return self.slot or _default_ident(self.name)

    def publication_name(self) -> str:
        return self.publication or _default_ident(self.name)

    def table_specs(self) -> list[PgTable]:
        return [t if isinstance(t, PgTable) else PgTable(name=t) for t in self.tables]

    def subject_scopes(self) -> list[SubjectScope]:
        """Each listed table (or ``schema.*``) with its template; logical messages
        (``messages``) keep the default subject."""
        scopes = table_scopes(self.subject, self.allow_shared_subject, (
            TableSubject(*split_name(t.name), t.subject, t.allow_shared_subject,
                         f"tables[{i}].subject") for i, t in enumerate(self.table_specs())))
        if self.messages:
            scopes.append(SubjectScope("_message", ANY, None, "messages"))
        return scopes

    def outbox_names(self) -> list[str]:
        """``outbox_tables`` as ``schema.name`` (schema ``public`` when omitted)."""
        return [".".join(split_name(n)) for n in self.outbox_tables]


def _default_ident(adapter: str) -> str:
    return ("cdc_bridge_" + re.sub(r"[^a-z0-9_]", "_", adapter))[:63]


def split_name(name: str) -> tuple[str, str]:
    """``"s.t"`` -> ``("s", "t")``; ``"t"`` -> ``("public", "t")``."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", schema)
