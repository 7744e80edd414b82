"""Config models of ``type: sql_poll``: the adapter block and one block per table.

Shape (every key but ``name`` has a default; unknown keys are rejected)::

    - name: erp
      type: sql_poll
      url: mysql+pymysql://app:${ERP_PASSWORD}@legacy-host/erp
      poll_interval: 5s
      batch_size: 1000
      lag_window: 30s              # look-back for rows committed out of order
      tables:
        - {name: invoices, mode: timestamp+incrementing,
           timestamp_column: updated_at, incrementing_column: id}
        - {name: customers, mode: diff, columns: {mask: [email], mask_salt: "${SALT}"}}
        - {name: orders, mode: diff, filter: "status != 'draft' and amount >= 100"}
        - name: order_totals        # a custom SELECT polled with one of the modes
          mode: query
          query: "SELECT o.id, o.updated_at, SUM(l.amount) AS total FROM ..."
          query_mode: timestamp
          timestamp_column: updated_at
          key_columns: [id]

``mode: query`` takes ``query_mode`` (any other mode) and needs ``key_columns`` since a
query has no primary key to reflect. Cross-field rules (a timestamp mode needs its
timestamp column, ...) are checked here so ``cdc-bridge validate`` reports them.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field, model_validator

from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.adapters.filters import FilterText
from cdc_bridge.adapters.subjects import SubjectTemplateText, TableSubject, table_scopes
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.model import Duration, PollInterval, StrictModel
from cdc_bridge.kernel.subjects import SubjectScope

CursorMode = Literal["incrementing", "timestamp", "timestamp+incrementing"]
BaseMode = Literal["incrementing", "timestamp", "timestamp+incrementing", "diff"]
Mode = Literal["incrementing", "timestamp", "timestamp+incrementing", "diff", "query"]
#: ``initial``: rows present on first run are emitted as ``op: r``; ``changes``: as
#: ``c``/``u`` (history replayed as changes); ``none``: start after the current rows.
Snapshot = Literal["initial", "changes", "none"]


# ``schema`` is the natural key name; as a field it shadows only pydantic's deprecated
# ``BaseModel.schema()``, which nothing here uses, so pydantic's warning is silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class PollTable(StrictModel):
        #: ``table`` or ``schema.table`` (for ``mode: query``: the name used in subjects).
        #: Without ``schema`` the name is split at its last dot.
        name: str = Field(min_length=1)
        #: The table's schema (database on MariaDB/MySQL). When set, ``name`` is the table
        #: name taken whole, so it may contain dots.
        schema: str | None = Field(default=None, min_length=1)  # type: ignore[assignment]
        mode: Mode = "incrementing"
        incrementing_column: str | None = None
        timestamp_column: str | None = None
        #: ``mode: query`` only: the SELECT to poll, and the mode it is polled with.
        query: str | None = None
        query_mode: BaseMode | None = None
        #: Row identity; defaults to the reflected primary key.
        key_columns: list[str] | None = None
        #: What to do with rows present on first run (default ``initial``: ``op: r``).
        snapshot: Snapshot | None = None
        poll_interval: PollInterval | None = None
        batch_size: int | None = Field(default=None, ge=1, le=100_000)
        #: Look-back for out-of-order commits (cursor modes); overrides the adapter's.
        lag_window: Duration | None = None
        #: diff mode: keep the last emitted row so updates and deletes carry ``before``.
        before_images: bool = True
        columns: ColumnRules = ColumnRules()
        #: Subject template of this table (docs/subjects.md), relative to the subject
        #: prefix, e.g. ``erp.{col:tenant}.{table}.{op}``; default: the adapter's ``subject``.
        subject: SubjectTemplateText | None = None
        #: This table may share subjects with another table (both must say so).
        allow_shared_subject: bool | None = None
        #: Row filter (docs/filters.md): added to every query of the table as a WHERE
        #: clause; a filter that reads ``op`` is evaluated in the bridge instead.
        filter: FilterText | None = None

        @property
        def ident(self) -> str:
            """The table's identity in checkpoints, positions and logs: ``[schema.]name``."""
            return self.name if self.schema is None else f"{self.schema}.{self.name}"

        def event_names(self) -> tuple[str | None, str]:
            """``(schema, table)`` as this table's events carry them."""
            if self.mode == "query":
                return None, self.name
            if self.schema is not None:
                return self.schema, self.name
            schema, _, name = self.name.rpartition(".")
            return schema or None, name

        @property
        def effective_mode(self) -> BaseMode:
            if self.mode == "query":
                assert self.query_mode is not None
                return self.query_mode
            return self.mode

        @property
        def effective_snapshot(self) -> Snapshot:
            if self.snapshot is not None:
                return self.snapshot
            return "initial"

        @model_validator(mode="after")
        def _mode_fields(self) -> PollTable:
            problems: list[str] = []
            if self.mode == "query":
                if not self.query or not self.query.strip():
                    problems.append("mode query needs 'query' (a SELECT)")
                if self.query_mode is None:
                    problems.append("mode query needs 'query_mode' (incrementing, timestamp, "
                                    "timestamp+incrementing or diff)")
                if not self.key_columns:
                    problems.append("mode query needs 'key_columns' (a query has no primary key)")
                if self.schema is not None:
                    problems.append("'schema' is not for mode query (name only names subjects)")
            elif self.query is not None or self.query_mode is not None:
                problems.append("'query' and 'query_mode' are only for mode query")
            mode = self.query_mode if self.mode == "query" else self.mode
            if mode in ("timestamp", "timestamp+incrementing") and not self.timestamp_column:
                problems.append(f"mode {mode} needs 'timestamp_column'")
            if mode == "timestamp+incrementing" and not self.incrementing_column:
                problems.append("mode timestamp+incrementing needs 'incrementing_column'")
            if mode == "diff" and (self.timestamp_column or self.incrementing_column):
                problems.append("mode diff uses no timestamp/incrementing column")
            if problems:
                raise ValueError("; ".join(problems))
            return self


class SqlPollConfig(AdapterConfig):
    type: Literal["sql_poll"]
    #: An SQLAlchemy URL, e.g. ``sqlite:///legacy.db`` or ``mysql+pymysql://u:p@h/db``.
    url: str = Field(repr=False)
    poll_interval: PollInterval = 5.0
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    #: Rows committed up to this long after a row with a higher cursor are still caught.
    lag_window: Duration = 30.0
    #: Bound on the rows remembered inside the look-back window (kept in the checkpoint).
    max_window_rows: int = Field(default=5_000, ge=0, le=1_000_000)
    #: Seconds between snapshot progress log lines.
    progress_interval: Duration = 10.0
    #: A cursor-mode table dropped and created again (or, on MySQL/MariaDB, truncated):
    #: ``resnapshot`` sends a ``t`` then its rows again as ``r``; ``stop`` sets the table
    #: aside with the reason (the other tables go on).
    on_table_change: Literal["resnapshot", "stop"] = "resnapshot"
    tables: list[PollTable] = Field(min_length=1)
    #: Subject template of every table (docs/subjects.md), relative to the subject prefix,
    #: e.g. ``erp.{table}.{op}``; default: ``<adapter>.<schema>.<table>.<op>``.
    subject: SubjectTemplateText | None = None
    #: The template may give two tables the same subject on purpose (docs/subjects.md).
    allow_shared_subject: bool = False

    @model_validator(mode="after")
    def _unique_tables(self) -> SqlPollConfig:
        names = [t.ident for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate table name(s): {', '.join(dupes)}")
        return self

    def subject_scopes(self) -> list[SubjectScope]:
        """Each table (or query) under the schema and name its events carry."""
        return table_scopes(self.subject, self.allow_shared_subject, (
            TableSubject(*t.event_names(), t.subject, t.allow_shared_subject,
                         f"tables[{i}].subject") for i, t in enumerate(self.tables)))
