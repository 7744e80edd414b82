"""What a captured table looks like: :class:`TableShape` and its :class:`ColumnShape` s.

A source builds a shape when it learns a table's look and hangs the same object on
every event of that table until the look changes (``ChangeEvent.shape``); versions,
the registry and compatibility verdicts are in :mod:`cdc_bridge.kernel.schemas`.
Pure; imports nothing of ours, so :mod:`cdc_bridge.kernel.events` can name it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

JsonType = Literal["integer", "number", "string", "boolean", "object", "array", "any"]
JSON_TYPES: tuple[JsonType, ...] = ("integer", "number", "string", "boolean", "object",
                                    "array", "any")
#: How a float that is not finite is written in events (the JSON text of it).
NON_FINITE = ("NaN", "Infinity", "-Infinity")
#: The JSON Schema dialect of every registry entry.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, slots=True)
class ColumnShape:
    """One column as the source declares it and as its value appears in events."""

    name: str
    #: The source's own type name (``int4``, ``varchar(20)``, ``DECIMAL(10,2)``, ...).
    source_type: str
    #: The JSON type of its values in events (``any``: the source cannot tell).
    json_type: JsonType = "any"
    #: May it be null? ``None``: the source cannot tell (taken as "may be null").
    nullable: bool | None = None
    #: A JSON Schema ``format`` for string values (``date-time``, ``date``, ``byte``...).
    format: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "source_type": self.source_type,
                               "json_type": self.json_type, "nullable": self.nullable}
        if self.format is not None:
            out["format"] = self.format
        return out

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ColumnShape:
        return cls(str(value["name"]), str(value["source_type"]),
                   value.get("json_type", "any"), value.get("nullable"),
                   value.get("format"))

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of this column's values. A ``number`` also admits ``"NaN"``,
        ``"Infinity"`` and ``"-Infinity"``: JSON has no such numbers, and every source
        writes them as those strings."""
        out: dict[str, Any] = {}
        nullable = self.nullable is not False
        if self.json_type == "number":
            out["anyOf"] = [{"type": ["number", "null"] if nullable else "number"},
                            {"enum": list(NON_FINITE)}]
        elif self.json_type != "any":
            out["type"] = [self.json_type, "null"] if nullable else self.json_type
        if self.format is not None:
            out["format"] = self.format
        out["x-source-type"] = self.source_type
        return out


@dataclass(frozen=True, slots=True, eq=False)
class TableShape:
    """The look of one table: columns in source order and the key.

    Compared by identity (``eq=False``): a source hands the same object to every event
    until the look changes, so the writer's lookup per event is one identity hash;
    :meth:`fingerprint` compares looks by value.
    """

    columns: tuple[ColumnShape, ...]
    key: tuple[str, ...] = ()

    @classmethod
    def of(cls, columns: Iterable[ColumnShape], key: Iterable[str] = ()) -> TableShape:
        return cls(tuple(columns), tuple(key))

    def canonical(self) -> dict[str, Any]:
        """What the fingerprint covers: the columns (in order) and the key."""
        return {"columns": [c.as_dict() for c in self.columns], "key": list(self.key)}

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`canonical` as sorted JSON (hex, 64 characters)."""
        text = orjson.dumps(self.canonical(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(text).hexdigest()

    def same_as(self, other: TableShape | None) -> bool:
        return other is not None and (other is self or other.fingerprint() == self.fingerprint())

    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnShape | None:
        return next((c for c in self.columns if c.name == name), None)

    def json_schema(self, uri: str | None = None, title: str | None = None) -> dict[str, Any]:
        """JSON Schema 2020-12 of a row image (``before``/``after``) of this look."""
        out: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT}
        if uri is not None:
            out["$id"] = uri
        if title is not None:
            out["title"] = title
        out.update({
            "type": "object",
            "properties": {c.name: c.json_schema() for c in self.columns},
            "required": self.names(),
            "additionalProperties": False,
        })
        if self.key:
            out["x-key"] = list(self.key)
        return out
