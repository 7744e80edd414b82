"""What a polled table looks like in events: its :class:`TableShape`, built from reflection.

Pure: no I/O. :mod:`.source` hands in the reflected SQLAlchemy columns (or, for ``mode:
query``, untyped ones) once per look, and hangs the one shape it gets on every event
until the look changes (:func:`table_shape` gives the previous object back when nothing
a consumer sees has changed).

``json_type`` follows what the poller really writes (``kernel.events.dumps`` of the
driver's values): integers are ``integer``; ``DECIMAL``/``NUMERIC`` values are exact
decimals sent as strings (``string``); binary floats are ``number`` on MySQL/MariaDB,
which cannot store NaN or infinities, and ``any`` elsewhere, since a non-finite float
is sent as the string ``"NaN"``/``"Infinity"``; booleans ``boolean``; text and enums
``string``; bytes ``string`` (base64, format ``byte``); ``UUID`` ``string`` (format
``uuid``); dates ``string`` (format ``date``); a timestamp with a time zone ``string``
(format ``date-time``), one without (written without an offset, which RFC 3339 does not
allow) ``string`` with no format; intervals ``number`` (seconds); ``JSON`` ``any``;
arrays and MySQL ``SET`` ``array``. A masked column is always a ``string`` (its hash).
What cannot be told is ``any``.

The look *signature* (:func:`look_of`) is what one catalogue query per poll returns:
``(name, type text, nullable)`` per column in table order; a different signature makes
the source reflect the table again.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import KeyedColumnElement

from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.shapes import ColumnShape, JsonType, TableShape

#: One column of a catalogue look: ``(name, type text, nullable)``.
LookColumn = tuple[str, str, bool | None]
Look = tuple[LookColumn, ...]

#: ``Column.info`` key of the type a column was declared with when it is read as another
#: (SQLite date/time columns are read as their stored text).
DECLARED = "cdc_declared_type"
_NO_NAN_FLOATS = frozenset({"mysql", "mariadb"})
_BY_PYTHON: dict[type, tuple[JsonType, str | None]] = {
    bool: ("boolean", None),
    int: ("integer", None),
    decimal.Decimal: ("string", None),
    str: ("string", None),
    bytes: ("string", "byte"),
    dt.date: ("string", "date"),
    dt.time: ("string", None),
    dt.timedelta: ("number", None),
    uuid.UUID: ("string", "uuid"),
    dict: ("any", None),
    list: ("array", None),
    set: ("array", None),
}


def look_of(rows: Iterable[Sequence[Any]]) -> Look:
    """A catalogue query's rows as a look signature (``nullable`` as a bool or None)."""
    out: list[LookColumn] = []
    for name, kind, nullable in rows:
        out.append((str(name), str(kind), None if nullable is None else _truth(nullable)))
    return tuple(out)


def _truth(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().upper() in ("YES", "Y", "TRUE", "T", "1")
    return bool(value)


def json_of(kind: sa.types.TypeEngine[Any], dialect: str) -> tuple[JsonType, str | None]:
    """``(json_type, format)`` of the values of a column of type ``kind`` in events."""
    if isinstance(kind, sa.types.NullType):
        return "any", None
    if type(kind).__visit_name__ == "SET":  # MySQL SET: a Python set, sent as a list
        return "array", None
    if isinstance(kind, sa.Float):
        return ("number" if dialect in _NO_NAN_FLOATS else "any"), None
    if isinstance(kind, sa.DateTime):
        return "string", ("date-time" if kind.timezone else None)
    if isinstance(kind, sa.JSON):
        return "any", None
    try:
        python = kind.python_type
    except NotImplementedError:
        return "any", None
    if python is float:
        return ("number" if dialect in _NO_NAN_FLOATS else "any"), None
    for base, found in _BY_PYTHON.items():
        if issubclass(python, base):
            if base is dt.date and issubclass(python, dt.datetime):
                return "string", None  # (DateTime is handled above; a stray subclass)
            return found
    return "any", None


def source_type(kind: sa.types.TypeEngine[Any], dialect: sa.engine.Dialect) -> str:
    """The type as the dialect renders it in DDL (``VARCHAR(40)``, ``DECIMAL(10, 2)``)."""
    if isinstance(kind, sa.types.NullType):
        return "unknown"
    try:
        return str(kind.compile(dialect=dialect))
    except Exception:  # a type the dialect cannot render: its class name
        return type(kind).__name__


def emitted(names: Iterable[str], rules: ColumnRules) -> list[str]:
    """The columns of ``names`` a row image keeps after the column rules, in order."""
    include = set(rules.include) if rules.include is not None else None
    exclude = set(rules.exclude)
    return [n for n in names if n not in exclude and (include is None or n in include)]


def table_shape(columns: Sequence[KeyedColumnElement[Any]], key: Sequence[str],
                rules: ColumnRules, dialect: sa.engine.Dialect,
                previous: TableShape | None = None) -> TableShape:
    """The shape of the row images built from ``columns`` (the columns read, in table
    order), the event ``key`` and the column ``rules``; ``previous`` itself when it
    describes the same look (so events keep one object across re-reflections)."""
    by_name = {str(c.key): c for c in columns}
    masked = set(rules.mask)
    out: list[ColumnShape] = []
    for name in emitted(by_name, rules):
        col = by_name[name]
        nullable: bool | None = None
        json_type: JsonType
        fmt: str | None
        if isinstance(col, sa.Column):
            nullable = bool(col.nullable)
        if name in masked:
            json_type, fmt = "string", None
        else:
            json_type, fmt = json_of(col.type, dialect.name)
        declared = col.info.get(DECLARED, col.type) if isinstance(col, sa.Column) \
            else col.type
        out.append(ColumnShape(name, source_type(declared, dialect), json_type, nullable,
                               fmt))
    shape = TableShape.of(out, key)
    if previous is not None and previous.fingerprint() == shape.fingerprint():
        return previous
    return shape
