"""Table schemas: what a captured table looks like, its versions, and what a change means.

A source describes each table it captures as a :class:`TableShape` (its columns, their
source types, the JSON type each becomes, nullability, the key) and hangs the shape on
every :class:`~cdc_bridge.kernel.events.ChangeEvent` of that table (``event.shape``).
A source builds a shape when it learns the table's look (a PostgreSQL Relation message,
a MySQL table map, a poll's check of the catalogue, a file's header), never per row,
and hands the same object to every row until the look changes: the outbox writer
(:mod:`cdc_bridge.outbox.schema_tracker`) tells shapes apart by identity first and only
compares :meth:`TableShape.fingerprint` when a new object arrives.

A version is a number per ``(adapter, schema, table)``: 1 at first capture, one more at
each change of fingerprint. The registry keeps every version as a :func:`registry_entry`
document (JSON Schema 2020-12 of the row image inside) under :func:`registry_key`.

:func:`diff` compares two versions; :func:`verdict` says what the change means to
consumers:

- ``backward``: a consumer written for the NEW version can read events of the old one;
- ``forward``: a consumer written for the OLD version can read events of the new one;
- ``full``: both; ``breaking``: neither.

The rules, per column (a missing value reads as null to a reader that allows null):
an added column that may be null is ``full`` (an added NOT NULL one is ``forward``
only: old events lack it); a removed column that could be null is ``full`` (a removed
NOT NULL one is ``backward`` only: old consumers expect it); a retype that keeps the
JSON type is ``full``, integer to number is ``backward``, any other JSON change is
``breaking``; NULL allowed where it was not is ``backward``, the reverse ``forward``; a
rename (a column gone and one come at the same place with the same type, as far as the
source can tell) and a change of key are ``breaking``.

Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cdc_bridge.kernel.events import EVENT_TYPE_PREFIX, NO_SCHEMA, event_id, subject_token
from cdc_bridge.kernel.shapes import (
    JSON_SCHEMA_DIALECT,
    JSON_TYPES,
    ColumnShape,
    JsonType,
    TableShape,
)

__all__ = ["JSON_SCHEMA_DIALECT", "JSON_TYPES", "ColumnShape", "Diff", "JsonType",
           "TableShape", "Verdict", "diff", "registry_entry", "registry_key", "schema_uri",
           "verdict"]

Verdict = Literal["full", "backward", "forward", "breaking"]
VERDICTS: tuple[Verdict, ...] = ("full", "backward", "forward", "breaking")

#: CloudEvents type of a schema-change event.
SCHEMA_EVENT_TYPE = EVENT_TYPE_PREFIX + "schema.changed"
#: Subject token of schema-change events: ``<prefix>._schema.<adapter>.<schema>.<table>``.
SCHEMA_TOKEN = "_schema"
#: URI scheme of ``dataschema``: ``nats-kv://<bucket>/<key>``.
URI_SCHEME = "nats-kv"


def table_ref(schema: str | None, table: str) -> str:
    """How one table is named in the registry and the outbox: ``<schema>.<table>``
    (``_`` for a source without schemas)."""
    return f"{schema or NO_SCHEMA}.{table}"


def registry_key(adapter: str, schema: str | None, table: str, version: int | None = None
                 ) -> str:
    """The registry key of a version (``...v<N>``), or of the table's latest (``None``)."""
    base = ".".join((subject_token(adapter), subject_token(schema), subject_token(table)))
    return f"{base}.latest" if version is None else f"{base}.v{version}"


def schema_uri(bucket: str, adapter: str, schema: str | None, table: str, version: int
               ) -> str:
    """The ``dataschema`` of an event: ``nats-kv://<bucket>/<key of the version>``."""
    return f"{URI_SCHEME}://{bucket}/{registry_key(adapter, schema, table, version)}"


def parse_schema_uri(uri: str) -> tuple[str, str] | None:
    """``(bucket, key)`` of a ``dataschema`` URI; ``None`` if it is not one of ours."""
    head = f"{URI_SCHEME}://"
    if not uri.startswith(head):
        return None
    bucket, sep, key = uri[len(head):].partition("/")
    return (bucket, key) if sep and bucket and key else None


def schema_subject(prefix: str, adapter: str, schema: str | None, table: str) -> str:
    """Where a table's schema-change events go."""
    return ".".join((prefix, SCHEMA_TOKEN, subject_token(adapter), subject_token(schema),
                     subject_token(table)))


def registry_entry(adapter: str, schema: str | None, table: str, version: int,
                   shape: TableShape, bucket: str) -> dict[str, Any]:
    """The registry document of one version (what is stored under its key)."""
    uri = schema_uri(bucket, adapter, schema, table, version)
    return {
        "adapter": adapter,
        "schema": schema,
        "table": table,
        "version": version,
        "fingerprint": shape.fingerprint(),
        "columns": [c.as_dict() for c in shape.columns],
        "key": list(shape.key),
        "uri": uri,
        "json_schema": shape.json_schema(uri, f"{adapter} {table_ref(schema, table)} v{version}"),
    }


def shape_of_entry(entry: Mapping[str, Any]) -> TableShape:
    """The shape a registry document describes."""
    return TableShape.of((ColumnShape.from_dict(c) for c in entry.get("columns", ())),
                         entry.get("key", ()))


# -- differences and verdicts ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed from one look to the next (column names, in source order)."""

    added: tuple[ColumnShape, ...] = ()
    removed: tuple[ColumnShape, ...] = ()
    #: ``(old, new)`` of a column whose type changed.
    retyped: tuple[tuple[ColumnShape, ColumnShape], ...] = ()
    #: ``(old, new)`` of a column whose nullability changed (type unchanged).
    nullability: tuple[tuple[ColumnShape, ColumnShape], ...] = ()
    #: ``(old, new)``: a column gone and one come at the same place with the same type.
    renamed: tuple[tuple[ColumnShape, ColumnShape], ...] = ()
    key_from: tuple[str, ...] = ()
    key_to: tuple[str, ...] = ()

    @property
    def key_changed(self) -> bool:
        return self.key_from != self.key_to

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.retyped or self.nullability
                    or self.renamed or self.key_changed)

    def as_dict(self) -> dict[str, Any]:
        def pairs(items: Sequence[tuple[ColumnShape, ColumnShape]]) -> list[dict[str, Any]]:
            return [{"from": a.as_dict(), "to": b.as_dict()} for a, b in items]

        return {
            "added": [c.as_dict() for c in self.added],
            "removed": [c.as_dict() for c in self.removed],
            "retyped": pairs(self.retyped),
            "nullability": pairs(self.nullability),
            "renamed": pairs(self.renamed),
            "key": {"from": list(self.key_from), "to": list(self.key_to)}
            if self.key_changed else None,
        }

    def lines(self) -> list[str]:
        """One line per difference, for people (``cdc-bridge schema diff``, logs)."""
        out = [f"+ {c.name} {c.source_type}{_null_text(c)}" for c in self.added]
        out += [f"- {c.name} {c.source_type}{_null_text(c)}" for c in self.removed]
        out += [f"~ {a.name} {a.source_type} -> {b.source_type}" for a, b in self.retyped]
        out += [f"~ {a.name}{_null_text(a) or ' NULL'} ->{_null_text(b) or ' NULL'}"
                for a, b in self.nullability]
        out += [f"> {a.name} renamed to {b.name} (as far as the source tells)"
                for a, b in self.renamed]
        if self.key_changed:
            out.append(f"! key ({', '.join(self.key_from)}) -> ({', '.join(self.key_to)})")
        return out


def _null_text(c: ColumnShape) -> str:
    return " NOT NULL" if c.nullable is False else ""


def _typed(c: ColumnShape) -> tuple[str, str, str | None]:
    return (c.source_type, c.json_type, c.format)


def diff(old: TableShape | None, new: TableShape) -> Diff:
    """The difference from ``old`` (``None``: the table is new) to ``new``."""
    if old is None:
        return Diff(added=new.columns, key_to=new.key)
    before = {c.name: c for c in old.columns}
    after = {c.name: c for c in new.columns}
    added = [c for c in new.columns if c.name not in before]
    removed = [c for c in old.columns if c.name not in after]
    retyped: list[tuple[ColumnShape, ColumnShape]] = []
    nullability: list[tuple[ColumnShape, ColumnShape]] = []
    for c in new.columns:
        was = before.get(c.name)
        if was is None:
            continue
        if _typed(was) != _typed(c):
            retyped.append((was, c))
        elif was.nullable != c.nullable:
            nullability.append((was, c))
    renamed: list[tuple[ColumnShape, ColumnShape]] = []
    if removed and added:
        old_at = {c.name: i for i, c in enumerate(old.columns)}
        new_at = {c.name: i for i, c in enumerate(new.columns)}
        for gone in list(removed):
            same = [c for c in added if new_at[c.name] == old_at[gone.name]
                    and _typed(c) == _typed(gone)]
            if len(same) == 1:
                renamed.append((gone, same[0]))
                removed.remove(gone)
                added.remove(same[0])
    return Diff(tuple(added), tuple(removed), tuple(retyped), tuple(nullability),
                tuple(renamed), old.key, new.key)


def _may_be_null(c: ColumnShape) -> bool:
    return c.nullable is not False


def _column_effects(change: Diff) -> tuple[bool, bool]:
    """``(backward, forward)`` as far as added, removed and re-typed columns go."""
    backward = all(_may_be_null(c) for c in change.added)  # old events lack them
    forward = all(_may_be_null(c) for c in change.removed)  # new events lack them
    for a, b in change.retyped:
        if (a.json_type, a.format) == (b.json_type, b.format) or "any" in (a.json_type,
                                                                              b.json_type):
            continue
        if (a.json_type, b.json_type) == ("integer", "number") and b.format is None:
            forward = False  # an old reader may meet a fraction
            continue
        backward = forward = False
    return backward, forward


def verdict(change: Diff) -> Verdict:
    """What ``change`` means to consumers (see the module docstring)."""
    if change.renamed or change.key_changed:
        return "breaking"
    backward, forward = _column_effects(change)
    for a, b in change.nullability:
        if _may_be_null(b) and not _may_be_null(a):
            forward = False  # old readers never expected a null
        elif _may_be_null(a) and not _may_be_null(b):
            backward = False  # old events may hold nulls the new reader refuses
    if backward and forward:
        return "full"
    if backward:
        return "backward"
    if forward:
        return "forward"
    return "breaking"


# -- policy ----------------------------------------------------------------------------


def is_breaking(v: Verdict, breaking: Iterable[str]) -> bool:
    """Whether verdict ``v`` is among those a policy counts as breaking."""
    return v in set(breaking)


def schema_event_id(adapter: str, schema: str | None, table: str, version: int) -> str:
    """The deterministic id of the schema-change event that introduces ``version``."""
    return event_id(adapter, f"schema:{table_ref(schema, table)}", version)


def schema_event_data(adapter: str, schema: str | None, table: str, old: Mapping[str, Any]
                      | None, new_entry: Mapping[str, Any], bucket: str) -> dict[str, Any]:
    """The ``data`` of a schema-change event: versions, difference, verdict, new entry."""
    old_shape = shape_of_entry(old) if old is not None else None
    change = diff(old_shape, shape_of_entry(new_entry))
    return {
        "adapter": adapter,
        "schema": schema,
        "table": table,
        "old_version": None if old is None else int(old["version"]),
        "new_version": int(new_entry["version"]),
        "verdict": "full" if old is None else verdict(change),
        "diff": change.as_dict(),
        "registry": {"bucket": bucket,
                     "key": registry_key(adapter, schema, table, int(new_entry["version"]))},
        "entry": dict(new_entry),
    }
