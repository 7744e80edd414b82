"""Table shapes of ``mysql_binlog``: a table map or ``information_schema`` -> TableShape.

Pure. Both readings of a table go through one description, :class:`ColumnFacts`, so a
snapshot (``information_schema.COLUMNS``) and the binlog (each rows event's table map,
``binlog_row_metadata=FULL``) describe an unchanged table alike (same fingerprint: no
new version when the stream takes over from the snapshot), and the binlog's description
depends on the table map alone (plus MariaDB's ``JSON`` check, as :mod:`.values` does),
so reading the same binlog again gives the same shapes.

* ``source_type``: the type as the table map can tell it: ``int unsigned``,
  ``decimal(10,2)``, ``datetime(6)``, ``varchar(20)`` (characters: the map's byte length
  divided by the character set's widest character), ``text``, ``enum('a','b')``,
  ``bit(10)``, ``json``; display widths (``int(11)``) are not in the map and not shown.
* ``json_type``/``format``: how :mod:`.values` writes the values (``DECIMAL`` a string,
  ``TIME`` seconds as a number, ``SET`` an array, blobs base64, ``TIMESTAMP`` UTC
  ``date-time``, ``DATETIME`` too when ``datetime_timezone`` converts it to UTC).
* ``nullable``: the table map's null bitmap / ``IS_NULLABLE``.
* ``key``: the primary key, in column order; column rules apply
  (:mod:`cdc_bridge.adapters.shape_rules`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_bridge.adapters.mysql_binlog.values import type_labels
from cdc_bridge.adapters.shape_rules import ruled_shape
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.shapes import ColumnShape, JsonType, TableShape


@dataclass(frozen=True, slots=True)
class ColumnFacts:
    """What both readings know of a column (see the module docstring)."""

    name: str
    #: ``information_schema`` ``DATA_TYPE`` spelling (``int``, ``varchar``, ``longtext``...).
    family: str
    nullable: bool | None = None
    unsigned: bool = False
    #: decimal: (precision, scale); time types: (fsp,); bit: (bits,); strings: (chars,)
    #: or (bytes, -1) when the character set's width is unknown.
    params: tuple[int, ...] = ()
    #: ENUM/SET labels, in definition order.
    labels: tuple[str, ...] = ()
    #: A MariaDB ``JSON`` column (text with a ``json_valid`` check).
    json: bool = False


#: Widest character, in bytes, of the character sets a column may use.
MBMAXLEN: dict[str, int] = {
    "big5": 2, "ujis": 3, "sjis": 2, "euckr": 2, "gb2312": 2, "gbk": 2, "utf8": 3,
    "utf8mb3": 3, "ucs2": 2, "utf8mb4": 4, "utf16": 4, "utf16le": 4, "utf32": 4,
    "cp932": 2, "eucjpms": 3, "gb18030": 4,
    **{cs: 1 for cs in ("dec8", "cp850", "hp8", "koi8r", "latin1", "latin2", "swe7",
                        "ascii", "hebrew", "tis620", "koi8u", "greek", "cp1250", "latin5",
                        "armscii8", "cp866", "keybcs2", "macce", "macroman", "cp852",
                        "latin7", "cp1251", "cp1256", "cp1257", "binary", "geostd8")},
}

_INTEGERS = ("tinyint", "smallint", "mediumint", "int", "bigint")
_STRINGS = ("char", "varchar", "binary", "varbinary")
_TIMES = ("time", "datetime", "timestamp")
_BINARY = frozenset(("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob",
                     "geometry"))
_GEOMETRY = frozenset(("geometry", "point", "linestring", "polygon", "multipoint",
                       "multilinestring", "multipolygon", "geometrycollection"))
#: mysql-replication's type codes -> ``DATA_TYPE`` spellings (strings and blobs apart).
_CODES: dict[int, str] = {
    1: "tinyint", 2: "smallint", 9: "mediumint", 3: "int", 8: "bigint", 4: "float",
    5: "double", 0: "decimal", 246: "decimal", 10: "date", 14: "date", 11: "time",
    19: "time", 12: "datetime", 18: "datetime", 7: "timestamp", 17: "timestamp",
    13: "year", 247: "enum", 248: "set", 245: "json", 16: "bit", 255: "geometry",
}
_BLOB_CODES = frozenset((249, 250, 251, 252))
_BLOB_SIZES = {1: "tiny", 2: "", 3: "medium", 4: "long"}


def charset_of(collation: str | None) -> str | None:
    """``utf8mb4_general_ci`` -> ``utf8mb4`` (``binary`` -> ``binary``)."""
    return collation.split("_", 1)[0].lower() if collation else None


def _chars(octets: int, charset: str | None) -> tuple[int, ...]:
    width = MBMAXLEN.get(charset or "")
    return (octets // width,) if width else (octets, -1)


def facts_from_catalogue(name: str, data_type: str, column_type: str, is_nullable: str,
                         octets: int | None, precision: int | None, scale: int | None,
                         fsp: int | None, collation: str | None, json: bool) -> ColumnFacts:
    """One row of ``information_schema.COLUMNS`` (and MariaDB's ``JSON`` check)."""
    family = data_type.lower()
    family = "geometry" if family in _GEOMETRY else family
    params: tuple[int, ...] = ()
    if family == "decimal":
        params = (int(precision or 0), int(scale or 0))
    elif family in _TIMES:
        params = (int(fsp or 0),)
    elif family == "bit":
        params = (int(precision or 1),)
    elif family in _STRINGS:
        params = _chars(int(octets or 0), charset_of(collation) or "binary")
    labels = tuple(type_labels(column_type)) if family in ("enum", "set") else ()
    return ColumnFacts(name, family, is_nullable.upper() == "YES",
                       "unsigned" in column_type.lower(), params, labels, json)


def facts_from_binlog(column: Any, nullable: bool | None, json: bool) -> ColumnFacts:
    """One column of a table map, as mysql-replication decodes it (``column.type`` and
    the metadata it keeps: ``unsigned``, ``max_length``, ``precision``/``decimals``,
    ``fsp``, ``bits``, ``length_size``, ``enum_values``/``set_values``,
    ``collation_name``)."""
    code = int(column.type)
    collation = getattr(column, "collation_name", None)
    binary = charset_of(collation) == "binary"
    params: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    if code in _BLOB_CODES:
        size = _BLOB_SIZES.get(int(getattr(column, "length_size", 2) or 2), "")
        family = size + ("blob" if binary else "text")
    elif code in (15, 253, 254):
        family = ("var" if code != 254 else "") + ("binary" if binary else "char")
        params = _chars(int(getattr(column, "max_length", 0) or 0),
                        charset_of(collation) or "binary")
    else:
        family = _CODES.get(code, f"type {code}")
    if family == "decimal" and code == 246:
        params = (int(column.precision), int(column.decimals))
    elif family in _TIMES:
        params = (int(getattr(column, "fsp", 0) or 0),)
    elif family == "bit":
        params = (int(getattr(column, "bits", 1) or 1),)
    elif family == "enum":
        labels = tuple(v for v in (getattr(column, "enum_values", None) or ())[1:])
    elif family == "set":
        labels = tuple(getattr(column, "set_values", None) or ())
    return ColumnFacts(str(column.name), family, nullable,
                       bool(getattr(column, "unsigned", False)) and family in _INTEGERS,
                       params, labels, json)


def nullable_bits(bitmask: bytes | None, count: int) -> list[bool | None]:
    """A table map's null bitmap: column ``i`` may be null when bit ``i`` is set."""
    if bitmask is None or len(bitmask) * 8 < count:
        return [None] * count
    return [bool(bitmask[i // 8] & (1 << (i % 8))) for i in range(count)]


def _quote(label: str) -> str:
    return "'" + label.replace("'", "''") + "'"


def source_type(f: ColumnFacts) -> str:
    if f.json or f.family == "json":
        return "json"
    if f.labels or f.family in ("enum", "set"):
        return f"{f.family}({','.join(_quote(x) for x in f.labels)})"
    text = f.family
    if f.family in _STRINGS and len(f.params) == 2:
        text += f"({f.params[0]} bytes)"
    elif f.family == "decimal" and f.params:
        text += f"({f.params[0]},{f.params[1]})"
    elif f.params and (f.family not in _TIMES or f.params[0]):
        text += f"({f.params[0]})"
    return text + (" unsigned" if f.unsigned else "")


def json_shape(f: ColumnFacts, utc_datetimes: bool) -> tuple[JsonType, str | None]:
    """How :mod:`.values` writes the column's values."""
    family = f.family
    if f.json or family == "json":
        return "any", None
    if family in _INTEGERS or family == "year":
        return "integer", None
    if family in ("float", "double", "time"):
        return "number", None
    if family == "set":
        return "array", None
    if family == "date":
        return "string", "date"
    if family == "timestamp" or (family == "datetime" and utc_datetimes):
        return "string", "date-time"
    if family in _BINARY:
        return "string", "byte"
    return "string", None  # decimal (exact text), char/text, enum, bit, datetime


#: Families whose "zero" value (``0000-00-00``) arrives as null even in a NOT NULL column.
_ZERO_DATES = frozenset({"date", "datetime", "timestamp"})


def column_shape(f: ColumnFacts, utc_datetimes: bool) -> ColumnShape:
    json_type, fmt = json_shape(f, utc_datetimes)
    nullable = True if f.family in _ZERO_DATES and f.nullable is False else f.nullable
    return ColumnShape(f.name, source_type(f), json_type, nullable, fmt)


def table_shape(facts: Iterable[ColumnFacts], key: Sequence[str], rules: ColumnRules | None,
                utc_datetimes: bool) -> TableShape:
    """The shape of a table with columns ``facts`` (in order) and primary key ``key``."""
    columns = [column_shape(f, utc_datetimes) for f in facts]
    order: Mapping[str, int] = {c.name: i for i, c in enumerate(columns)}
    return ruled_shape(columns, sorted(key, key=lambda k: order.get(k, len(order))), rules)
