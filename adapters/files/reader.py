"""Bounded, resumable reading of records from a binary file (blocking: run in a thread).

:class:`RecordReader` reads physical lines with ``readline(limit)`` from an offset and
groups them into records (with a :class:`~cdc_bridge.adapters.files.formats.csv.QuoteJoiner` for
CSV quoted newlines). Each :class:`RawRecord` carries the byte offset and 1-based line
number where it starts: together with the file identity that is its deterministic
position. The reader never holds more than ``max_record_bytes`` of one record: a longer
record is consumed up to its end, flagged as an error and kept as its first
:data:`OVERSIZED_HEAD` bytes, so a runaway quote or a binary file cannot exhaust memory.

With ``final=False`` (a file still growing, tail mode) an incomplete last line (no
newline yet) is not consumed: the offset stays before it until the line is complete.
With ``final=True`` (a stable file) it is taken as the last record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from cdc_bridge.adapters.files.formats.csv import QuoteJoiner

UTF8_BOM = b"\xef\xbb\xbf"
#: What an oversized record's dead letter keeps of it: its first bytes, enough to see
#: what went wrong (the record itself may be many MiB of a runaway quote).
OVERSIZED_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class RawRecord:
    offset: int
    line: int
    raw: bytes
    #: Set when the record could not even be delimited (oversized).
    error: str | None = None


def strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    elif data.endswith(b"\r"):
        data = data[:-1]
    return data


class RecordReader:
    """Reads records from ``f`` starting at ``offset`` (at line number ``line``)."""

    def __init__(self, f: BinaryIO, offset: int, line: int, joiner: QuoteJoiner | None,
                 max_record_bytes: int) -> None:
        self.f = f
        self.offset = offset
        self.line = line
        self.joiner = joiner
        self.max = max_record_bytes
        f.seek(offset)

    def read(self, max_records: int, *, final: bool) -> list[RawRecord]:
        """Up to ``max_records`` complete records; ``self.offset``/``line`` move past them."""
        out: list[RawRecord] = []
        while len(out) < max_records:
            record = self._next(final)
            if record is None:
                break
            out.append(record)
        return out

    def _next(self, final: bool) -> RawRecord | None:
        f, start, start_line = self.f, self.offset, self.line
        joiner = self.joiner
        if joiner is not None:
            joiner.reset()
        parts: list[bytes] = []
        size = 0
        lines = 0
        while True:
            chunk = f.readline(self.max + 1 - size)
            if not chunk:  # EOF
                if not parts or not final:
                    f.seek(start)
                    return None
                break
            parts.append(chunk)
            size += len(chunk)
            if not chunk.endswith(b"\n"):
                if size > self.max:
                    return self._oversized(start, start_line, b"".join(parts), final)
                continue  # EOF in the middle of a line: the next readline says so
            lines += 1
            if joiner is None or not joiner.feed(chunk):
                break
            if size > self.max:
                return self._oversized(start, start_line, b"".join(parts), final)
        data = b"".join(parts)
        if not data.endswith(b"\n") and not final:
            f.seek(start)
            return None
        self.offset = start + size
        self.line = start_line + lines + (0 if data.endswith(b"\n") else 1)
        return RawRecord(start, start_line, strip_newline(data))

    def _oversized(self, start: int, start_line: int, head: bytes,
                   final: bool) -> RawRecord | None:
        """Skip to the end of an over-long record; keep its first bytes for the dead letter."""
        f = self.f
        skipped = len(head)
        lines = head.count(b"\n")
        while True:
            chunk = f.readline(1 << 16)
            if not chunk:
                if not final:
                    f.seek(start)
                    return None
                break
            skipped += len(chunk)
            if chunk.endswith(b"\n"):
                lines += 1
                break
        self.offset = start + skipped
        self.line = start_line + max(lines, 1)
        return RawRecord(start, start_line, head[: min(self.max, OVERSIZED_HEAD)],
                         f"record longer than {self.max} bytes")


def skip_bom(f: BinaryIO) -> int:
    """Offset of the first record: 3 after a UTF-8 byte order mark, else 0."""
    f.seek(0)
    head = f.read(3)
    return 3 if head == UTF8_BOM else 0
