"""JSON lines: one JSON object per line, parsed with orjson. Pure, no I/O.

A line that is not valid JSON in the file's encoding, or whose value is not an object,
raises :class:`RowError`; values keep their JSON types (numbers stay numbers).
"""

from __future__ import annotations

from typing import Any

import orjson

from cdc_bridge.adapters.files.config import JsonlOptions
from cdc_bridge.adapters.files.formats.types import RowError, decode


class JsonlFormat:
    name = "jsonl"
    needs_header = False

    def __init__(self, options: JsonlOptions, encoding: str | None = None) -> None:
        self.options = options
        self.encoding = encoding or options.encoding
        self._utf8 = self.encoding.replace("_", "-").lower() in ("utf-8", "utf8")

    def joiner(self) -> None:
        return None

    def for_encoding(self, encoding: str) -> JsonlFormat:
        return JsonlFormat(self.options, encoding)

    def read_header(self, raw: bytes) -> list[str]:
        raise RowError("jsonl has no header")

    def parse(self, raw: bytes) -> dict[str, Any]:
        data: bytes | str = raw if self._utf8 else decode(raw, self.encoding)
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise RowError(f"malformed JSON: {e}") from None
        if not isinstance(value, dict):
            raise RowError(f"a JSON line must hold an object, not {type(value).__name__}")
        return value
