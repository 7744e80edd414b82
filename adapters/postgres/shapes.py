"""Table shapes of the postgres source: a relation's columns -> :class:`TableShape`. Pure.

A shape is built when the adapter learns a table's look (a Relation message of the
stream, the catalogue's :class:`~cdc_bridge.adapters.postgres.setup.TableInfo` for a
snapshot), never per row (:class:`~cdc_bridge.adapters.postgres.changes.EventBuilder`
keeps one per table and hands it to every event).

* ``source_type``: the type's name in ``pg_type`` with its modifier rendered the way
  ``format_type`` renders it (``varchar(20)``, ``numeric(10,2)``, ``timestamptz(3)``,
  ``interval day to second(3)``, ``bit(8)``; arrays ``int4[]``, ``varchar(20)[]``).
  Internal names (``int4``, ``bpchar``, ``timestamptz``), as :mod:`.values` knows them.
* ``json_type``/``format``: how :mod:`.values` writes the values
  (:meth:`~cdc_bridge.adapters.postgres.values.ValueDecoder.json_shape`).
* ``nullable``: from ``pg_attribute.attnotnull`` when the adapter could look it up, else
  ``None`` (a Relation message does not say). The lookup reads the catalogue as it is
  now, which is later than the message when the stream is behind: a column dropped
  since is taken as nullable (most are; a replay after a restart then describes the old
  look as the first reading did), and a ``SET``/``DROP NOT NULL`` made since shows early.
* ``key``: the columns of the events' key, in column order.
* Column rules (exclude, mask) apply (:mod:`cdc_bridge.adapters.shape_rules`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from cdc_bridge.adapters.postgres.values import PgType
from cdc_bridge.adapters.shape_rules import ruled_shape
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.shapes import ColumnShape, JsonType, TableShape

#: A type modifier's header (``VARHDRSZ``): varchar/bpchar/numeric modifiers include it.
_VARHDRSZ = 4
#: Interval field bits (PostgreSQL's ``datetime.h``) and the texts ``format_type`` uses.
_MONTH, _YEAR, _DAY, _HOUR, _MINUTE, _SECOND = (1 << 1, 1 << 2, 1 << 3, 1 << 10, 1 << 11,
                                                1 << 12)
_INTERVAL_FIELDS: dict[int, str] = {
    _YEAR: " year", _MONTH: " month", _DAY: " day", _HOUR: " hour", _MINUTE: " minute",
    _SECOND: " second", _YEAR | _MONTH: " year to month", _DAY | _HOUR: " day to hour",
    _DAY | _HOUR | _MINUTE: " day to minute",
    _DAY | _HOUR | _MINUTE | _SECOND: " day to second",
    _HOUR | _MINUTE: " hour to minute", _HOUR | _MINUTE | _SECOND: " hour to second",
    _MINUTE | _SECOND: " minute to second",
}
_FULL_RANGE = 0x7FFF
_FULL_PRECISION = 0xFFFF
_PRECISION_TYPES = frozenset(("time", "timetz", "timestamp", "timestamptz", "bit", "varbit"))


class TypeFacts(Protocol):
    """What the value decoder knows of types (:class:`~.values.ValueDecoder`)."""

    def pg_type(self, oid: int) -> PgType | None: ...

    def json_shape(self, oid: int) -> tuple[JsonType, str | None]: ...


def modifier_text(name: str, mod: int) -> str:
    """A type modifier as ``format_type`` writes it after the name (``""``: none)."""
    if mod < 0:
        return ""
    if name in ("varchar", "bpchar"):
        return f"({mod - _VARHDRSZ})" if mod >= _VARHDRSZ else ""
    if name == "numeric":
        if mod < _VARHDRSZ:
            return ""
        t = mod - _VARHDRSZ
        precision, scale = (t >> 16) & 0xFFFF, ((t & 0x7FF) ^ 1024) - 1024
        return f"({precision},{scale})"
    if name in _PRECISION_TYPES:
        return f"({mod})"
    if name == "interval":
        fields = _INTERVAL_FIELDS.get((mod >> 16) & _FULL_RANGE, "")
        precision = mod & 0xFFFF
        return fields + (f"({precision})" if precision != _FULL_PRECISION else "")
    return f"({mod})"


def source_type(types: TypeFacts, oid: int, mod: int) -> str:
    """``oid`` with modifier ``mod`` as ``format_type`` would name it (internal names)."""
    t = types.pg_type(oid)
    if t is None:
        return f"oid {oid}"
    if t.element_oid and t.kind != "d":  # an array: the modifier is its element's
        return source_type(types, t.element_oid, mod) + "[]"
    return t.name + modifier_text(t.name, mod)


def column_shape(types: TypeFacts, name: str, oid: int, mod: int,
                 not_null: bool | None) -> ColumnShape:
    json_type, fmt = types.json_shape(oid)
    return ColumnShape(name, source_type(types, oid, mod), json_type,
                       None if not_null is None else not not_null, fmt)


def table_shape(types: TypeFacts, names: Sequence[str], oids: Sequence[int],
                mods: Sequence[int], key_idx: Sequence[int],
                not_null: Mapping[str, bool] | None, rules: ColumnRules | None
                ) -> TableShape:
    """The shape of a relation (``not_null``: ``attnotnull`` by column name, if known)."""
    nn = not_null or {}
    columns = [column_shape(types, n, o, m, nn.get(n))
               for n, o, m in zip(names, oids, mods, strict=True)]
    return ruled_shape(columns, [names[i] for i in sorted(key_idx)], rules)
