"""Column values of ``mysql_binlog`` as they appear in events. Pure, no I/O.

Rows reach the adapter two ways: decoded from the binary log by mysql-replication
(stream) and read with ``SELECT`` through PyMySQL (snapshot). Both go through
:class:`ColumnSpec.convert`, so an ``r`` row and a ``c`` row of the same data look alike:

=======================  ===========================================================
column type              JSON
=======================  ===========================================================
integers (``UNSIGNED``   the number (unsigned ``BIGINT`` up to 18446744073709551615)
too), ``YEAR``
``DECIMAL``              string, exact (``"12345678901234567890.0123456789"``)
``FLOAT``                the shortest decimal that reads back as the same 32-bit float
``DOUBLE``               the number
``TIMESTAMP``            UTC, ending in ``Z``, microseconds when not zero
``DATETIME``             as stored, no offset; with ``datetime_timezone`` set: converted
                         from that zone to UTC, ending in ``Z``
``DATE`` / ``TIME``      ``"2024-02-29"`` / seconds as a number (``45296.789``)
``JSON``                 the JSON value itself (MariaDB: a text column checked with
                         ``json_valid``, parsed)
``ENUM``                 the label
``SET``                  list of labels in definition order (``[]`` when empty)
``BIT(n)``               string of ``n`` ``0``/``1`` digits, most significant first
``BLOB``/``BINARY``      base64 of the bytes
text types               the string
=======================  ===========================================================

Zero dates (``0000-00-00``) become ``null``.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Kind = Literal["plain", "timestamp", "datetime", "float", "set", "bit", "json"]

_F32 = struct.Struct("<f")


def float32(value: float) -> float:
    """The shortest decimal reading back as the same 32-bit float (``0.1``, not
    ``0.10000000149011612``)."""
    packed = _F32.pack(value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if _F32.pack(short) == packed:
            return short
    return value


def bit_string(value: Any, bits: int) -> str:
    """``BIT(n)`` as ``n`` binary digits: from bytes (a ``SELECT``) or from the digits
    mysql-replication decodes."""
    if isinstance(value, bytes | bytearray):
        number = int.from_bytes(value, "big")
    elif isinstance(value, str):
        number = int(value or "0", 2)
    else:
        number = int(value)
    return format(number, f"0{max(bits, 1)}b")


def set_labels(value: Any, labels: Sequence[str]) -> list[str]:
    """A ``SET`` value as its labels in definition order."""
    if value is None or value == "":
        return []
    chosen = set(value.split(",")) if isinstance(value, str) else set(value)
    ordered = [lab for lab in labels if lab in chosen]
    return ordered + sorted(chosen - set(ordered))


def json_value(value: Any) -> Any:
    """A JSON column's value: text is parsed; MySQL's binary JSON arrives parsed with
    bytes for strings and keys, which are decoded."""
    if isinstance(value, str | bytes) and not isinstance(value, bytearray):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return _decode_bytes(value)


def _decode_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decode_bytes(v) for v in value]
    return value


def _utc(zone: dt.tzinfo | None) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, dt.datetime):
            return value
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone or dt.UTC)
        return value.astimezone(dt.UTC)
    return convert


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column: its name and how its values are written."""

    name: str
    kind: Kind = "plain"
    bits: int = 0
    labels: tuple[str, ...] = ()

    def converter(self, datetime_zone: dt.tzinfo | None) -> Callable[[Any], Any] | None:
        """The conversion of a non-null value, ``None`` when values pass as they are."""
        kind = self.kind
        if kind == "timestamp":
            return _utc(None)
        if kind == "datetime":
            return None if datetime_zone is None else _utc(datetime_zone)
        if kind == "float":
            return lambda v: float32(v) if isinstance(v, float) else v
        if kind == "bit":
            bits = self.bits
            return lambda v: bit_string(v, bits)
        if kind == "set":
            labels = self.labels
            return lambda v: set_labels(v, labels)
        if kind == "json":
            return json_value
        return None


def spec_from_sql(name: str, data_type: str, column_type: str, json_check: bool) -> ColumnSpec:
    """From ``information_schema.COLUMNS`` (``DATA_TYPE``, ``COLUMN_TYPE``); ``json_check``:
    MariaDB's ``JSON`` (a text column with a ``json_valid`` check)."""
    data_type = data_type.lower()
    if data_type == "json" or json_check:
        return ColumnSpec(name, "json")
    if data_type in ("timestamp", "datetime", "float"):
        return ColumnSpec(name, data_type)  # type: ignore[arg-type]
    if data_type == "bit":
        inner = column_type[column_type.find("(") + 1:column_type.find(")")]
        return ColumnSpec(name, "bit", bits=int(inner) if inner.isdigit() else 1)
    if data_type == "set":
        return ColumnSpec(name, "set", labels=tuple(type_labels(column_type)))
    return ColumnSpec(name)


def type_labels(column_type: str) -> list[str]:
    """``set('a','b''c')`` -> ``['a', "b'c"]``."""
    body = column_type[column_type.find("(") + 1:column_type.rfind(")")]
    out: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(body):
        ch = body[i]
        if quoted:
            if ch == "'" and i + 1 < len(body) and body[i + 1] == "'":
                current.append("'")
                i += 1
            elif ch == "'":
                quoted = False
                out.append("".join(current))
                current = []
            else:
                current.append(ch)
        elif ch == "'":
            quoted = True
        i += 1
    return out


#: mysql-replication's column type codes (``pymysqlreplication.constants.FIELD_TYPE``).
_BINLOG_KINDS: dict[int, Kind] = {4: "float", 7: "timestamp", 17: "timestamp",
                                  12: "datetime", 18: "datetime", 16: "bit", 248: "set",
                                  245: "json"}


def spec_from_binlog(name: str, type_code: int, bits: int = 0,
                     labels: Sequence[str] | None = None, json_text: bool = False) -> ColumnSpec:
    """From a binlog table map column (``json_text``: a MariaDB ``JSON`` text column)."""
    if json_text:
        return ColumnSpec(name, "json")
    kind = _BINLOG_KINDS.get(type_code, "plain")
    return ColumnSpec(name, kind, bits=bits, labels=tuple(labels or ()))


@dataclass(slots=True)
class RowConverter:
    """Converts whole rows of one table layout (computed once per layout)."""

    specs: Sequence[ColumnSpec]
    datetime_zone: dt.tzinfo | None = None
    _fns: list[tuple[str, Callable[[Any], Any] | None, Kind]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._fns = [(s.name, s.converter(self.datetime_zone), s.kind) for s in self.specs]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def from_binlog(self, values: Mapping[str, Any],
                    none_sources: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A decoded binlog row (mysql-replication's ``values`` and ``none_sources``)."""
        out: dict[str, Any] = {}
        for name, fn, kind in self._fns:
            v = values.get(name)
            if v is None:
                empty_set = kind == "set" and bool(none_sources) and (
                    none_sources.get(name) == "empty set")  # type: ignore[union-attr]
                out[name] = [] if empty_set else None
            else:
                out[name] = v if fn is None else fn(v)
        return out

    def from_select(self, row: Sequence[Any]) -> dict[str, Any]:
        """A row of ``SELECT <columns in spec order>``."""
        out: dict[str, Any] = {}
        for (name, fn, _kind), v in zip(self._fns, row, strict=True):
            out[name] = None if v is None else v if fn is None else fn(v)
        return out
