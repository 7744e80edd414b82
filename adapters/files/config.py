"""Config model of ``type: files`` adapters: where the files are, their format, the mode.

Example::

    - name: exports
      type: files
      path: /data/drop
      pattern: "*.csv"
      format: csv
      mode: drop                     # drop | tail | snapshot
      csv: {delimiter: ";", header: true, encoding: cp1252}
      types: {amount: decimal, qty: int}
      key: [id]
      after: {action: archive, archive_dir: /data/drop/done}

Formats: ``csv`` (options under ``csv:``), ``jsonl`` (``jsonl:``) and ``fixed_width``
(``fixed_width:`` with a ``fields`` layout: name, 1-based ``start``, ``length``, type,
implied decimals). Column types (``types:`` for csv, per field for fixed width) are
``str`` (the default), ``int``, ``decimal``, ``float``, ``bool``, ``date`` and
``datetime``; a value that does not convert makes its row a dead letter.

``path`` is the folder for ``drop`` and ``snapshot`` (files matched by ``pattern``, not
recursive) and the file itself for ``tail``. ``table`` names the events' table (subject
token); it defaults to the adapter name, and ``{stem}`` in it is replaced by the file
name without its extension. Everything is parsed once into frozen models; unknown keys
are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.adapters.filters import FilterText, row_filter
from cdc_bridge.adapters.subjects import SubjectTemplateText
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.model import Duration, PollInterval, StrictModel
from cdc_bridge.kernel.subjects import ANY, SubjectScope, parse_template

ValueType = Literal["str", "int", "decimal", "float", "bool", "date", "datetime"]


class CsvOptions(StrictModel):
    encoding: str = "utf-8"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quotechar: str = Field(default='"', min_length=1, max_length=1)
    escapechar: str | None = Field(default=None, min_length=1, max_length=1)
    doublequote: bool = True
    skipinitialspace: bool = False
    #: First record holds the column names. With ``columns`` as well, the header row is
    #: skipped and ``columns`` name the fields.
    header: bool = True
    columns: list[str] | None = None

    @model_validator(mode="after")
    def _names(self) -> CsvOptions:
        if not self.header and not self.columns:
            raise ValueError("csv without a header needs 'columns'")
        if self.columns and len(set(self.columns)) != len(self.columns):
            raise ValueError("csv columns must be unique")
        for ch in (self.delimiter, self.quotechar, self.escapechar):
            if ch is not None and (ch in "\r\n" or ord(ch) > 127):
                raise ValueError("delimiter, quotechar and escapechar must be ASCII, not newline")
        return self


class JsonlOptions(StrictModel):
    encoding: str = "utf-8"


class FixedField(StrictModel):
    name: str
    #: 1-based position of the first character, as in most record layouts.
    start: int = Field(ge=1)
    length: int = Field(ge=1)
    type: ValueType = "str"
    #: For ``int``/``decimal``: digits after an implied decimal point (``001234`` with
    #: 2 -> ``12.34``).
    implied_decimals: int = Field(default=0, ge=0, le=30)
    #: strptime format for ``date``/``datetime``.
    date_format: str | None = None
    #: Keep leading/trailing blanks of ``str`` values.
    keep_blanks: bool = False


class FixedWidthOptions(StrictModel):
    encoding: str = "utf-8"
    fields: list[FixedField] = Field(min_length=1)
    #: Records shorter than the end of the last field are errors unless allowed (the
    #: missing fields are then blank).
    allow_short: bool = False
    #: Records longer than this are errors (``None``: no check).
    record_length: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _unique(self) -> FixedWidthOptions:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("fixed_width field names must be unique")
        return self


class AfterProcessing(StrictModel):
    """What ``drop`` mode does with a file once all its events are committed."""

    action: Literal["archive", "delete", "leave"] = "leave"
    #: Required for ``archive``; created if missing. Relative paths are under ``path``.
    archive_dir: Path | None = None

    @model_validator(mode="after")
    def _dir(self) -> AfterProcessing:
        if self.action == "archive" and self.archive_dir is None:
            raise ValueError("action 'archive' needs archive_dir")
        return self


class FilesConfig(AdapterConfig):
    type: Literal["files"]
    path: Path
    pattern: str | None = None
    format: Literal["csv", "jsonl", "fixed_width"] = "csv"
    mode: Literal["drop", "tail", "snapshot"] = "drop"
    csv: CsvOptions = CsvOptions()
    jsonl: JsonlOptions = JsonlOptions()
    fixed_width: FixedWidthOptions | None = None
    #: Column types for csv (jsonl values keep their JSON types).
    types: dict[str, ValueType] = Field(default_factory=dict)
    #: strptime formats for csv ``date``/``datetime`` columns (default ISO 8601).
    date_formats: dict[str, str] = Field(default_factory=dict)
    #: Key columns: the event key (order per key) and, for ``snapshot``, the row identity.
    key: list[str] = Field(default_factory=list)
    table: str | None = None
    columns: ColumnRules | None = None
    #: Subject template of every table (docs/subjects.md), relative to the subject prefix,
    #: e.g. ``erp.{table}.{op}``; default: ``<adapter>.<schema>.<table>.<op>``.
    subject: SubjectTemplateText | None = None
    #: The template may give two tables the same subject on purpose (docs/subjects.md).
    allow_shared_subject: bool = False
    #: Row filter (docs/filters.md), evaluated per record in the bridge: records that do
    #: not match are skipped (``snapshot`` mode: left out of the extract it compares).
    filter: FilterText | None = None
    after: AfterProcessing = AfterProcessing()
    poll_interval: PollInterval = 1.0
    #: A file is read only once its size and mtime have not changed for this long.
    stable_for: Duration = 2.0
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    #: A record longer than this is a dead letter with its first bytes (memory stays
    #: bounded against a runaway quote or a binary file). Events too large for one NATS
    #: message go by claim check (``nats.claim_checks``), so this is well above it.
    max_record_bytes: int = Field(default=16 << 20, ge=64)
    #: Completed files remembered after they left the folder (rename-back protection).
    remember_files: int = Field(default=1000, ge=1, le=100_000)
    #: ``tail`` only: where to start in a file seen for the first time.
    start_at: Literal["beginning", "end"] = "beginning"
    #: ``tail`` only: the followed file truncated, rewritten in place or replaced (deleted
    #: or overwritten, not rotated): ``resnapshot`` sends a ``t`` for its table, then reads
    #: the new content from its start; ``stop`` stops the daemon with the reason.
    on_table_change: Literal["resnapshot", "stop"] = "resnapshot"

    @model_validator(mode="after")
    def _consistent(self) -> FilesConfig:
        if self.format == "fixed_width" and self.fixed_width is None:
            raise ValueError("format fixed_width needs a 'fixed_width' layout")
        if self.mode == "tail" and self.pattern is not None:
            raise ValueError("mode tail follows the one file named by 'path'; drop 'pattern'")
        if self.mode != "tail" and self.pattern is None:
            raise ValueError(f"mode {self.mode} needs a glob 'pattern' of files in 'path'")
        if self.mode == "snapshot" and not self.key:
            raise ValueError("mode snapshot needs 'key' columns to compare extracts")
        if self.after.action != "leave" and self.mode == "tail":
            raise ValueError("'after' applies to drop and snapshot modes, not tail")
        known = self.known_columns()
        if self.filter is not None and known is not None:
            unknown = row_filter(self.filter).unknown_columns(known)
            if unknown:
                raise ValueError(f"filter reads {', '.join(map(repr, unknown))}, which the "
                                 f"records do not have (columns: {', '.join(sorted(known))})")
        if "on_table_change" in self.model_fields_set and self.mode != "tail":
            raise ValueError("'on_table_change' applies to mode tail: drop reads every new "
                             "or changed file in full, snapshot compares whole extracts")
        return self

    def known_columns(self) -> set[str] | None:
        """The records' column names when the config fixes them (else ``None``)."""
        if self.format == "fixed_width" and self.fixed_width is not None:
            return {f.name for f in self.fixed_width.fields}
        if self.format == "csv" and self.csv.columns:
            return set(self.csv.columns)
        return None

    def subject_scopes(self) -> list[SubjectScope]:
        """One scope: the events' table (any table when ``table`` uses ``{stem}``)."""
        table = self.table or self.name
        template = parse_template(self.subject) if self.subject is not None else None
        return [SubjectScope(None, ANY if "{stem}" in table else table, template, "subject",
                             self.allow_shared_subject)]

    def table_for(self, file_name: str) -> str:
        template = self.table or self.name
        return template.replace("{stem}", Path(file_name).stem)

    def archive_dir(self) -> Path | None:
        d = self.after.archive_dir
        if d is None:
            return None
        return d if d.is_absolute() else self.path / d
