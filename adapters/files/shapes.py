"""What the files adapter's events look like: a :class:`TableShape` per column layout. Pure.

The layout is declared or read, never guessed from values: a CSV file's columns are its
header (or the configured ``csv.columns``), typed by ``types:``; a fixed-width file's
are the configured ``fixed_width.fields``. JSON lines have no declared layout, and one
built from each record's keys would make a new schema version whenever an optional key
is absent from a record, so their events carry no shape (:func:`columns_of` gives
``None``).

``json_type`` follows what the parsers produce and ``kernel.events.dumps`` writes:
``str`` fields are strings, never null (a blank field is ``""``); the other types are
null when blank: ``int`` integer, ``decimal`` string (exact digits), ``float`` any (a
number, or the string ``"NaN"``/``"Infinity"``), ``bool`` boolean, ``date`` string
(format ``date``), ``datetime`` string (with an offset only if the text had one, so no
format). A masked column is a string (its hash). Column rules drop columns as they drop
them from row images.

:class:`ShapeCache` gives the same object for the same layout, so every event of every
file with one header shares one shape, and a header that gains a column makes a new
one before its rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc_bridge.adapters.files.config import FilesConfig, FixedField, ValueType
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.shapes import ColumnShape, JsonType, TableShape

_JSON: dict[str, tuple[JsonType, str | None]] = {
    "str": ("string", None),
    "int": ("integer", None),
    "decimal": ("string", None),
    "float": ("any", None),
    "bool": ("boolean", None),
    "date": ("string", "date"),
    "datetime": ("string", None),
}
#: Layouts remembered (a folder of files with many different headers stays bounded).
_CACHED = 64


def column(name: str, type_: ValueType, source_type: str, masked: bool) -> ColumnShape:
    """One column of ``type_`` as the parsers produce it (only ``str`` is never null)."""
    json_type, fmt = ("string", None) if masked else _JSON[type_]
    return ColumnShape(name, source_type, json_type, type_ != "str", fmt)


def _fixed_type(f: FixedField) -> str:
    extra = f", {f.implied_decimals} implied decimals" if f.implied_decimals else ""
    return f"{f.type} at {f.start} length {f.length}{extra}"


def _kept(name: str, rules: ColumnRules | None) -> bool:
    if rules is None:
        return True
    if name in rules.exclude:
        return False
    return rules.include is None or name in rules.include


def layout_shape(config: FilesConfig, names: Sequence[str]) -> TableShape:
    """The shape of records with the columns ``names`` (a header, or the layout)."""
    rules = config.columns
    masked = set(rules.mask) if rules is not None else set()
    fields = {f.name: f for f in config.fixed_width.fields} \
        if config.format == "fixed_width" and config.fixed_width is not None else {}
    out: list[ColumnShape] = []
    for name in names:
        if not _kept(name, rules):
            continue
        fixed = fields.get(name)
        if fixed is not None:
            out.append(column(name, fixed.type, _fixed_type(fixed), name in masked))
        else:
            type_ = config.types.get(name, "str")
            out.append(column(name, type_, f"csv {type_}", name in masked))
    return TableShape.of(out, config.key)


def columns_of(config: FilesConfig, header: Sequence[str] | None) -> tuple[str, ...] | None:
    """The records' columns: the fixed-width layout's, a CSV file's header (or configured
    columns), ``None`` for JSON lines or a header not read (yet, or unreadable)."""
    if config.format == "fixed_width" and config.fixed_width is not None:
        return tuple(f.name for f in config.fixed_width.fields)
    if config.format == "csv" and header:
        return tuple(header)
    return None


class ShapeCache:
    """One :class:`TableShape` object per column layout."""

    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self._shapes: dict[tuple[str, ...], TableShape] = {}

    def get(self, columns: tuple[str, ...] | None) -> TableShape | None:
        if columns is None:
            return None
        shape = self._shapes.get(columns)
        if shape is None:
            if len(self._shapes) >= _CACHED:
                self._shapes.clear()
            shape = self._shapes[columns] = layout_shape(self.config, columns)
        return shape
