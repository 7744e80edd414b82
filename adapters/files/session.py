"""One file being read: BOM, header, parsing, and turning records into events (blocking).

A :class:`FileSession` owns an open file, its format (a fresh parser per file, since a
header sets the columns), and a :class:`~cdc_bridge.adapters.files.reader.RecordReader` at the
resume position. :meth:`FileSession.read` returns parsed records: a row or the reason it
could not be parsed. Resuming mid-file re-reads only the header (from the file's start)
and seeks to the committed offset, so nothing before it is parsed again.

A UTF-8 byte order mark at the start is skipped, and the file is then decoded as UTF-8
whatever the configured encoding (a BOM is the writer saying so). A bad header makes
every record of the file a dead letter (with the header's own reason), never a silent
skip. Blank records (only whitespace) carry no data and are skipped.

:class:`EventBuilder` turns parsed records into :class:`~cdc_bridge.kernel.events.ChangeEvent`
(``op`` given by the mode) and :class:`~cdc_bridge.kernel.events.DeadLetter` entries whose
position is ``<file position>@<byte offset>``, deterministic across re-reads. Events
carry the shape of their file's column layout (:mod:`cdc_bridge.adapters.files.shapes`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.formats import RecordFormat, RowError, make_format
from cdc_bridge.adapters.files.identity import header_safe_name
from cdc_bridge.adapters.files.reader import RawRecord, RecordReader, skip_bom
from cdc_bridge.adapters.files.shapes import ShapeCache, columns_of
from cdc_bridge.adapters.filters import RowFilter, row_filter
from cdc_bridge.adapters.transform import apply_rules, mask_value
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter, Op

_UTF8 = ("utf-8", "utf8", "utf_8")


@dataclass(frozen=True, slots=True)
class Parsed:
    record: RawRecord
    row: dict[str, Any] | None
    reason: str | None = None


class FileSession:
    """Blocking: construct and call from a worker thread."""

    def __init__(self, config: FilesConfig, path: Path, offset: int | None, line: int,
                 f: BinaryIO | None = None) -> None:
        self.config = config
        self.path = path
        self.f: BinaryIO = f if f is not None else open(path, "rb", buffering=1 << 20)  # noqa: SIM115
        fmt = make_format(config)
        self.start = skip_bom(self.f)
        if self.start and fmt.encoding.replace("-", "_").lower() not in _UTF8:
            fmt = fmt.for_encoding("utf-8")
        self.fmt: RecordFormat = fmt
        self.header_done = not fmt.needs_header
        self.header_error: str | None = None
        self.pending_header: Parsed | None = None
        self._resume = offset
        self.reader = RecordReader(self.f, offset if offset is not None else self.start,
                                   line, fmt.joiner(), config.max_record_bytes)

    @property
    def offset(self) -> int:
        return self.reader.offset

    @property
    def line(self) -> int:
        return self.reader.line

    def _header(self, final: bool) -> bool:
        """Read the header (from the file start) if the format has one; False: not yet."""
        if self.header_done:
            return True
        head = RecordReader(self.f, self.start, 1, self.fmt.joiner(), self.config.max_record_bytes)
        record = head.read(1, final=final)
        while record and not record[0].error and not record[0].raw.strip():
            record = head.read(1, final=final)
        if not record:
            self.f.seek(self.reader.offset)
            return False
        rec = record[0]
        try:
            if rec.error:
                raise RowError(rec.error)
            self.fmt.read_header(rec.raw)
        except RowError as e:
            self.header_error = f"bad header: {e.reason}"
        if self._resume is None:  # fresh start: the data begins after the header
            self.reader.offset, self.reader.line = head.offset, head.line
            if self.header_error:
                self.pending_header = Parsed(rec, None, self.header_error)
        self.f.seek(self.reader.offset)
        self.header_done = True
        return True

    def read(self, max_records: int, *, final: bool) -> tuple[list[Parsed], bool]:
        """Up to ``max_records`` parsed records, and whether more may follow right away."""
        if not self._header(final):
            return [], False
        out: list[Parsed] = []
        if self.pending_header is not None:
            out.append(self.pending_header)
            self.pending_header = None
        parse = self.fmt.parse
        header_error = self.header_error
        records = self.reader.read(max_records, final=final)
        for rec in records:
            if rec.error:
                out.append(Parsed(rec, None, rec.error))
                continue
            if not rec.raw.strip():
                continue
            if header_error:
                out.append(Parsed(rec, None, header_error))
                continue
            try:
                out.append(Parsed(rec, parse(rec.raw)))
            except RowError as e:
                out.append(Parsed(rec, None, e.reason))
        return out, len(records) == max_records

    def columns(self) -> tuple[str, ...] | None:
        """The records' column names once known: the layout's, or the header's (``None``
        for JSON lines, before the header is read, or when it could not be)."""
        header = getattr(self.fmt, "columns", None) if self.header_error is None else None
        return columns_of(self.config, header)

    def read_columns(self) -> tuple[str, ...] | None:
        """Blocking: read the header if not yet done (a stable file), then :meth:`columns`."""
        self._header(final=True)
        return self.columns()

    def close(self) -> None:
        self.f.close()


class EventBuilder:
    """Builds events and dead letters for one adapter (pure apart from the clock)."""

    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self.adapter = config.name
        self.rules = config.columns
        self.key = list(config.key)
        masked = set(config.columns.mask) if config.columns else set()
        self._key_mask = [k for k in self.key if k in masked]
        #: The row filter, evaluated on each parsed record before its column rules.
        self.filter: RowFilter | None = row_filter(config.filter) if config.filter else None
        #: The one unmasked key column, if that is the key (the usual case): a fast path.
        self._single = self.key[0] if len(self.key) == 1 and not self._key_mask else None
        #: One shape per column layout (:mod:`cdc_bridge.adapters.files.shapes`).
        self.shapes = ShapeCache(config)

    def key_of(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        single = self._single
        if single is not None:  # runs for every record: one lookup, no list
            try:
                return {single: row[single]}
            except KeyError:
                raise RowError(f"key column(s) missing: {single}") from None
        if not self.key:
            return None
        missing = [k for k in self.key if k not in row]
        if missing:
            raise RowError(f"key column(s) missing: {', '.join(missing)}")
        key = {k: row[k] for k in self.key}
        if self._key_mask and self.rules is not None:
            for k in self._key_mask:
                key[k] = mask_value(key[k], self.rules.mask_salt)
        return key

    def dead_letter(self, file_pos: str, name: str, rec: RawRecord, reason: str,
                    index: int = 0) -> DeadLetter:
        return DeadLetter(
            adapter=self.adapter, position=f"{file_pos}@{rec.offset}", reason=reason,
            payload=rec.raw, index=index,
            context={"file": header_safe_name(name), "line": str(rec.line),
                     "offset": str(rec.offset)})

    def build(self, parsed: list[Parsed], file_pos: str, name: str, op: Op = "c",
              columns: tuple[str, ...] | None = None
              ) -> tuple[list[ChangeEvent], list[DeadLetter]]:
        """Events and dead letters of ``parsed``; ``columns``: the file's column layout
        (:meth:`FileSession.columns`), which gives the events their shape."""
        shape = self.shapes.get(columns)
        events: list[ChangeEvent] = []
        dead: list[DeadLetter] = []
        table = self.config.table_for(name)
        now = int(time.time() * 1000)
        rules = self.rules
        keep = self.filter.matches if self.filter is not None else None
        for p in parsed:
            rec = p.record
            if p.row is None:
                dead.append(self.dead_letter(file_pos, name, rec, p.reason or "unparsable"))
                continue
            if keep is not None and not keep(p.row, op):
                continue
            try:
                key = self.key_of(p.row)
            except RowError as e:
                dead.append(self.dead_letter(file_pos, name, rec, e.reason))
                continue
            events.append(ChangeEvent(
                adapter=self.adapter, table=table, op=op,
                position=f"{file_pos}@{rec.offset}", key=key,
                after=p.row if rules is None else apply_rules(p.row, rules), ts_ms=now,
                source_extra={"file": name, "line": rec.line, "offset": rec.offset},
                shape=shape))
        return events, dead
