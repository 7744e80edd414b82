"""Record formats of the files adapter: pure parsers over the bytes of one record.

Each format turns one record (bytes, without its final newline) into a row dict or
raises :class:`RowError` with a short reason; none of them does I/O, so they are
unit-tested and fuzzed directly. :func:`make_format` builds the configured one.
"""

from __future__ import annotations

from typing import Any, Protocol

from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.formats.csv import CsvFormat, QuoteJoiner
from cdc_bridge.adapters.files.formats.fixed_width import FixedWidthFormat
from cdc_bridge.adapters.files.formats.jsonl import JsonlFormat
from cdc_bridge.adapters.files.formats.types import RowError

__all__ = ["CsvFormat", "FixedWidthFormat", "JsonlFormat", "QuoteJoiner", "RecordFormat",
           "RowError", "make_format"]


class RecordFormat(Protocol):
    name: str
    needs_header: bool
    encoding: str

    def joiner(self) -> QuoteJoiner | None: ...

    def for_encoding(self, encoding: str) -> RecordFormat: ...

    def read_header(self, raw: bytes) -> list[str]: ...

    def parse(self, raw: bytes) -> dict[str, Any]: ...


def make_format(config: FilesConfig) -> RecordFormat:
    if config.format == "csv":
        return CsvFormat(config.csv, config.types, config.date_formats)
    if config.format == "jsonl":
        return JsonlFormat(config.jsonl)
    assert config.fixed_width is not None
    return FixedWidthFormat(config.fixed_width)
