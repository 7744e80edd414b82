"""Fixed-width records from a YAML layout (name, 1-based start, length, type). Pure.

Slicing works on decoded text, so it counts characters: exact for the single-byte
encodings legacy systems write (cp1252, latin-1, EBCDIC code pages) and for ASCII
UTF-8. Text fields are stripped unless ``keep_blanks``; numbers accept implied decimals
and a leading or trailing sign (see :mod:`cdc_bridge.adapters.files.formats.types`). A record
shorter than the layout (unless ``allow_short``) or longer than ``record_length``
raises :class:`RowError`, as does any field that does not convert.
"""

from __future__ import annotations

from typing import Any

from cdc_bridge.adapters.files.config import FixedWidthOptions
from cdc_bridge.adapters.files.formats.types import RowError, convert, decode


class FixedWidthFormat:
    name = "fixed_width"
    needs_header = False

    def __init__(self, options: FixedWidthOptions, encoding: str | None = None) -> None:
        self.options = options
        self.encoding = encoding or options.encoding
        self.end = max(f.start - 1 + f.length for f in options.fields)
        self._slices = [
            (f.name, f.start - 1, f.start - 1 + f.length, f.type, f.implied_decimals,
             f.date_format, f.keep_blanks)
            for f in options.fields
        ]

    def joiner(self) -> None:
        return None

    def for_encoding(self, encoding: str) -> FixedWidthFormat:
        return FixedWidthFormat(self.options, encoding)

    def read_header(self, raw: bytes) -> list[str]:
        raise RowError("fixed-width records have no header")

    def parse(self, raw: bytes) -> dict[str, Any]:
        text = decode(raw, self.encoding)
        if len(text) < self.end and not self.options.allow_short:
            raise RowError(f"short record: {len(text)} characters, layout needs {self.end}")
        limit = self.options.record_length
        if limit is not None and len(text) > limit:
            raise RowError(f"long record: {len(text)} characters, record_length is {limit}")
        row: dict[str, Any] = {}
        for name, lo, hi, type_, implied, fmt, keep in self._slices:
            piece = text[lo:hi]
            if type_ == "str":
                row[name] = piece if keep else piece.strip()
            else:
                row[name] = convert(piece, type_, name, implied=implied, date_format=fmt)
        return row
