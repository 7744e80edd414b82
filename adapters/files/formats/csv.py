"""CSV records: a pure quote-aware record joiner and a per-record parser.

A CSV record may span several physical lines (a quoted field holding a newline). The
reader hands lines to :class:`QuoteJoiner`, which counts quote characters per line (a
C-speed ``bytes.count``) to know whether a record continues; only the quote, escape and
newline bytes matter, so this works on the raw bytes of any ASCII-compatible encoding
(UTF-8, cp1252, latin-1) before decoding.

:class:`CsvFormat` then decodes one whole record and parses it with the standard
library's ``csv`` module in strict mode, through one long-lived reader fed a record at a
time (the C parser resets its state at every record, so an error in one record never
leaks into the next). Wrong field counts, undecodable bytes, bad quoting and values that
do not convert raise :class:`RowError`; nothing here does I/O.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from cdc_bridge.adapters.files.config import CsvOptions, ValueType
from cdc_bridge.adapters.files.formats.types import RowError, convert, decode


class QuoteJoiner:
    """Tells whether a record is still inside a quoted field after each physical line."""

    def __init__(self, quotechar: str, escapechar: str | None) -> None:
        self.quote = quotechar.encode("ascii")
        self.escape = escapechar.encode("ascii") if escapechar else None
        self.inside = False

    def reset(self) -> None:
        self.inside = False

    def feed(self, line: bytes) -> bool:
        """Account for ``line``; True when the record continues on the next line."""
        if self.quote not in line:
            return self.inside
        if self.escape is not None and self.escape in line:
            line = line.replace(self.escape + self.escape, b"").replace(
                self.escape + self.quote, b"")
        if line.count(self.quote) % 2:
            self.inside = not self.inside
        return self.inside


class _Feed:
    """An iterator yielding the one record currently being parsed (then stopping)."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text: str | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        text, self.text = self.text, None
        if text is None:
            raise StopIteration
        return text


class CsvFormat:
    """Parses CSV records (bytes without the final newline) into rows."""

    name = "csv"

    def __init__(self, options: CsvOptions, types: dict[str, ValueType] | None = None,
                 date_formats: dict[str, str] | None = None,
                 encoding: str | None = None) -> None:
        self.options = options
        self.encoding = encoding or options.encoding
        self.types = dict(types or {})
        self.date_formats = dict(date_formats or {})
        #: ``(column, type, date format)`` of the typed columns, looked up once.
        self._typed = [(name, type_, self.date_formats.get(name))
                       for name, type_ in self.types.items() if type_ != "str"]
        self.columns: list[str] | None = list(options.columns) if options.columns else None
        self.needs_header = options.header
        self._feed = _Feed()
        self._reader = csv.reader(
            self._feed, delimiter=options.delimiter, quotechar=options.quotechar,
            escapechar=options.escapechar, doublequote=options.doublequote,
            skipinitialspace=options.skipinitialspace, strict=True,
            quoting=csv.QUOTE_MINIMAL)

    def joiner(self) -> QuoteJoiner:
        return QuoteJoiner(self.options.quotechar, self.options.escapechar)

    def for_encoding(self, encoding: str) -> CsvFormat:
        """A fresh parser of the same options for a file in another encoding (a BOM)."""
        return CsvFormat(self.options, self.types, self.date_formats, encoding)

    def fields(self, raw: bytes) -> list[str]:
        """The fields of one record."""
        text = decode(raw, self.encoding)
        if "\x00" in text:
            raise RowError("NUL character in record")
        self._feed.text = text
        try:
            fields = next(self._reader)
        except csv.Error as e:
            raise RowError(f"malformed CSV: {e}") from None
        except StopIteration:
            fields = []
        finally:
            self._feed.text = None
        return fields

    def read_header(self, raw: bytes) -> list[str]:
        """Take the column names from the header record (unless ``columns`` override)."""
        names = [n.strip() for n in self.fields(raw)]
        if self.columns is None:
            if not names or any(not n for n in names):
                raise RowError("header has an empty column name")
            if len(set(names)) != len(names):
                raise RowError("header has duplicate column names")
            self.columns = names
        return names

    def parse(self, raw: bytes) -> dict[str, Any]:
        fields = self.fields(raw)
        columns = self.columns
        if columns is None:
            raise RowError("no header read before the first record")
        if len(fields) != len(columns):
            raise RowError(f"wrong field count: {len(fields)} fields, {len(columns)} expected")
        row = dict(zip(columns, fields, strict=True))
        for name, type_, date_format in self._typed:
            if name in row:
                row[name] = convert(row[name], type_, name, date_format=date_format)
        return row
