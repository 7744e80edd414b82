"""Column values from PostgreSQL's text form to JSON-able Python values.

pgoutput sends each value in the type's text output form. :class:`ValueDecoder` turns
that text into what event payloads carry, using PostgreSQL's own type knowledge: the
built-in types come from psycopg's type registry (names, array types, delimiters) and
its text loaders (dates, times, timestamps, bytea); user types (enums, domains, arrays,
composites) are looked up in ``pg_type`` once per OID by :meth:`ValueDecoder.ensure_types`
(the replication loop calls it when a Relation message names an OID it has not seen;
:meth:`ValueDecoder.missing` tells which). Converters are built lazily and cached per
OID. No conversion ever raises: a value that cannot be converted is passed as the
server's text, counted in :attr:`ValueDecoder.fallbacks` and logged once per type
(without the value, which may be sensitive).

Rules (user-visible: this is what ``before``/``after`` hold):

==========================  ==========================================================
SQL NULL                    ``null``
int2, int4, int8, oid       JSON integer
float4, float8              JSON number; ``NaN``, ``Infinity``, ``-Infinity`` as strings
numeric                     exact decimal string, never a float (``"1.50"``, ``"NaN"``)
bool                        ``true`` / ``false``
text, varchar, char(n)      string (char(n) keeps the server's blank padding)
date                        ``"2024-01-31"``
time / timetz               ``"13:45:00.500000"`` / ``"13:45:00+02:00"``
timestamp                   ISO 8601 without offset: ``"2024-01-31T13:45:00.123456"``
timestamptz                 ISO 8601 in UTC with ``Z``: ``"2024-01-31T11:45:00Z"``
interval                    ISO 8601 duration as PostgreSQL's ``iso_8601`` style writes
                            it (``"P1Y2M3DT4H5M6.5S"``, ``"PT0S"``; components may be
                            negative: ``"P-1DT-2H"``)
bytea                       base64 (standard alphabet, padded)
uuid                        string
json, jsonb                 the JSON value itself, numbers exactly as the source has
                            them (an integer beyond 64 bits, a decimal with more
                            digits than a float keeps, ``1e400``: written as they
                            are, never rounded); a JSON ``null`` is ``null``
arrays (any dimension)      nested JSON arrays of converted elements, NULL as ``null``;
                            bounds other than 1 are dropped
enum                        its label
domain                      as its base type
composite (row) type        JSON object ``{field: converted value}``
anything else               the server's text: money, inet, cidr, macaddr, point, ranges,
                            tsvector, xml, bit, extension and unknown types
==========================  ==========================================================

Times and timestamps carry six fractional digits when the fraction is non-zero, none
otherwise. ``infinity``
and ``-infinity`` stay those strings. Values Python cannot represent (BC dates, years
after 9999, ``24:00:00``) fall back to the server's text. Text is parsed according to
the DateStyle of the connection the decoder was built from (psycopg reads it), so the
replication session should use the same DateStyle (the default ISO is recommended); the
interval rule reads the default ``postgres`` IntervalStyle, passes ``iso_8601`` through
and passes other styles as text.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg
from psycopg.abc import AdaptContext
from psycopg.adapt import Transformer
from psycopg.postgres import adapters as _default_adapters
from psycopg.postgres import types as _builtin_types
from psycopg.pq import Format

from cdc_bridge.kernel.shapes import JsonType

log = logging.getLogger(__name__)

Converter = Callable[[str], Any]


def _as_text(text: str) -> str:
    return text


def _float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


#: A number token a float may not keep exactly: 16+ digits in a row, or an exponent.
_LONG_NUMBER = re.compile(r"\d{16,}|\d[eE][+-]?\d")


def json_exact(text: str) -> Any:
    """A json/jsonb value, numbers exact: parsed by orjson when a float keeps every
    number as written, else the text itself as a JSON fragment (written verbatim)."""
    try:
        fast = orjson.loads(text)
    except orjson.JSONDecodeError:
        fast = _INEXACT
    if fast is not _INEXACT and not _LONG_NUMBER.search(text):
        return fast
    exact = json.loads(text, parse_float=decimal.Decimal, parse_constant=_not_json)
    if fast is not _INEXACT and _same_numbers(fast, exact):
        return fast
    return orjson.Fragment(text.encode())


_INEXACT = object()


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # never embedded in an event


def _same_numbers(fast: Any, exact: Any) -> bool:
    """``fast`` (floats) holds the same values as ``exact`` (Decimals, big ints)."""
    if isinstance(exact, dict):
        return isinstance(fast, dict) and fast.keys() == exact.keys() and all(
            _same_numbers(fast[k], v) for k, v in exact.items())
    if isinstance(exact, list):
        return isinstance(fast, list) and len(fast) == len(exact) and all(
            _same_numbers(f, e) for f, e in zip(fast, exact, strict=True))
    if isinstance(exact, decimal.Decimal | int) and not isinstance(exact, bool):
        if type(fast) is float:  # written back as its shortest repr: the same number?
            return math.isfinite(fast) and decimal.Decimal(repr(fast)) == exact
        return type(fast) is int and exact == fast
    return bool(fast == exact)


def _bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise ValueError("not a boolean")


_INFINITIES: Final = frozenset(("infinity", "-infinity"))


def _loaded(oid: int, context: AdaptContext, render: Callable[[Any], str]) -> Converter:
    """A converter through psycopg's text loader for ``oid``, then ``render``."""
    load = Transformer(context).get_loader(oid, Format.TEXT).load

    def convert(text: str) -> Any:
        if text in _INFINITIES:
            return text
        return render(load(text.encode()))

    return convert


def _utc_iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()[:-6] + "Z"


def _bytea(context: AdaptContext) -> Converter:
    load = Transformer(context).get_loader(_builtin_types["bytea"].oid, Format.TEXT).load

    def convert(text: str) -> str:
        raw = bytes.fromhex(text[2:]) if text.startswith("\\x") else load(text.encode())
        return base64.b64encode(raw).decode("ascii")

    return convert


_INTERVAL = re.compile(
    r"(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
    r"(?:([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d+))?)?"
)


def interval_to_iso(text: str) -> str:
    """PostgreSQL's ``postgres``-style interval text as its ``iso_8601`` style text."""
    m = _INTERVAL.fullmatch(text)
    if not text or m is None:
        return text  # iso_8601 already, or a style we do not rewrite
    years, months, days, sign, hours, minutes, seconds, frac = m.groups()
    out = ["P"]
    for value, unit in ((years, "Y"), (months, "M"), (days, "D")):
        if value is not None and int(value):
            out.append(f"{int(value)}{unit}")
    clock: list[str] = []
    if hours is not None:
        neg = "-" if sign == "-" else ""
        frac = (frac or "").rstrip("0")
        if int(hours):
            clock.append(f"{neg}{int(hours)}H")
        if int(minutes):
            clock.append(f"{neg}{int(minutes)}M")
        if int(seconds) or frac:
            clock.append(f"{neg}{int(seconds)}{'.' + frac if frac else ''}S")
    if clock:
        out.append("T")
        out.extend(clock)
    return "".join(out) if len(out) > 1 else "PT0S"


# ---------------------------------------------------------------- arrays and records

_UNESCAPE = re.compile(r"\\(.)", re.S)
_RECORD_UNESCAPE = re.compile(r'\\(.)|""', re.S)
_RECORD_FIELD = re.compile(r'"((?:[^"\\]|""|\\.)*)"|([^,()"\\]*)', re.S)


@functools.cache
def _array_tokens(delimiter: str) -> re.Pattern[str]:
    d = re.escape(delimiter)
    return re.compile(rf'\{{|\}}|"((?:[^"\\]|\\.)*)"|{d}|[^{{}}"\\{d}]+', re.S)


def parse_array(text: str, delimiter: str, element: Converter) -> list[Any]:
    """Parse array_out text (any dimensions) into nested lists of converted elements."""
    if text.startswith("["):  # "[0:1]={...}": explicit bounds, dropped
        text = text[text.index("=") + 1 :]
    holder: list[Any] = []  # receives the outermost array
    stack: list[list[Any]] = []
    cur = holder
    pos = 0
    for m in _array_tokens(delimiter).finditer(text):
        if m.start() != pos:
            raise ValueError(f"malformed array at {pos}")
        pos = m.end()
        token = m.group()
        if token == "{":
            new: list[Any] = []
            cur.append(new)
            stack.append(cur)
            cur = new
        elif token == "}":
            if not stack:
                raise ValueError("malformed array: unbalanced '}'")
            cur = stack.pop()
        elif token == delimiter:
            continue
        elif not stack:
            raise ValueError("malformed array: element outside braces")
        elif token[0] == '"':
            quoted = m.group(1)
            cur.append(element(_UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted))
        else:
            cur.append(None if token == "NULL" else element(token))
    if stack or len(holder) != 1 or pos != len(text):
        raise ValueError("malformed array: unbalanced braces")
    result: list[Any] = holder[0]
    return result


def parse_record(text: str, nfields: int) -> list[str | None]:
    """Split record_out text ``(a,"b c",)`` into field texts (``None`` for NULL)."""
    if len(text) < 2 or text[0] != "(" or text[-1] != ")":
        raise ValueError("malformed record")
    if nfields == 0:
        if text != "()":
            raise ValueError("malformed record: fields in a record without fields")
        return []
    end = len(text) - 1
    pos = 1
    fields: list[str | None] = []
    while True:
        m = _RECORD_FIELD.match(text, pos, end)
        assert m is not None  # the pattern matches the empty string
        quoted, bare = m.groups()
        if quoted is not None:
            fields.append(_RECORD_UNESCAPE.sub(lambda e: e.group(1) or '"', quoted))
        else:
            fields.append(bare or None)
        pos = m.end()
        if pos == end:
            break
        if text[pos] != ",":
            raise ValueError(f"malformed record at {pos}")
        pos += 1
    if len(fields) != nfields:
        raise ValueError(f"record has {len(fields)} fields, expected {nfields}")
    return fields


# ---------------------------------------------------------------- the decoder


@dataclass(frozen=True, slots=True)
class PgType:
    """What ``pg_type`` says about one type (only what conversion needs)."""

    oid: int
    name: str
    kind: str  # typtype: b base, c composite, d domain, e enum, p pseudo, r range, ...
    base_oid: int = 0  # domains
    element_oid: int = 0  # arrays
    delimiter: str = ","  # arrays: the element type's delimiter
    fields: tuple[tuple[str, int], ...] = ()  # composites: (name, type oid)

    def references(self) -> list[int]:
        return [o for o in (self.base_oid, self.element_oid, *(f[1] for f in self.fields)) if o]


_TYPES_SQL: Final = """
SELECT t.oid::int8, t.typname::text, t.typtype::text, t.typbasetype::int8,
       CASE WHEN t.typcategory = 'A' AND t.typlen = -1 THEN t.typelem::int8 ELSE 0 END,
       coalesce(e.typdelim, ',')::text,
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT array_agg(a.atttypid::int8 ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem
WHERE t.oid = ANY(%s::oid[])
"""
_MAX_FETCH_ROUNDS: Final = 16  # nesting depth of domains/arrays/composites we follow

#: JSON type and ``format`` of the built-in types :meth:`ValueDecoder._builtin` converts
#: (every other built-in type is passed as text: a string). float4/float8 are numbers
#: (``NaN`` and the infinities, written as strings, are the exception); ``timestamp`` and
#: ``time`` have no offset, so no ``date-time``/``time`` format.
_SCALAR_SHAPES: Final[dict[str, tuple[JsonType, str | None]]] = {
    "int2": ("integer", None), "int4": ("integer", None), "int8": ("integer", None),
    "oid": ("integer", None), "float4": ("number", None), "float8": ("number", None),
    "bool": ("boolean", None), "json": ("any", None), "jsonb": ("any", None),
    "bytea": ("string", "byte"), "date": ("string", "date"), "timetz": ("string", "time"),
    "timestamptz": ("string", "date-time"), "uuid": ("string", "uuid"),
}


class ValueDecoder:
    """Converts text-form column values to JSON-able values (rules: module docstring)."""

    def __init__(self, context: AdaptContext | None = None) -> None:
        self._context: AdaptContext = context if context is not None else _default_adapters
        self._types: dict[int, PgType] = {}
        self._converters: dict[int, Converter] = {}
        #: Values passed as text because conversion failed, per type OID.
        self.fallbacks: Counter[int] = Counter()
        self._scalar: dict[int, Converter] = {}
        self._builtin()

    def _builtin(self) -> None:
        ctx = self._context
        by_name: dict[str, Converter] = {
            "int2": int, "int4": int, "int8": int, "oid": int,
            "float4": _float, "float8": _float, "bool": _bool,
            "json": json_exact, "jsonb": json_exact,
            "bytea": _bytea(ctx), "interval": interval_to_iso,
        }
        for name, render in (("date", dt.date.isoformat), ("time", dt.time.isoformat),
                             ("timetz", dt.time.isoformat),
                             ("timestamp", dt.datetime.isoformat), ("timestamptz", _utc_iso)):
            by_name[name] = _loaded(_builtin_types[name].oid, ctx, render)
        for info in _builtin_types:
            self._types[info.oid] = PgType(info.oid, info.name, "b")
            self._scalar[info.oid] = by_name.get(info.name, _as_text)
            if info.array_oid:
                self._types[info.array_oid] = PgType(
                    info.array_oid, f"_{info.name}", "b", element_oid=info.oid,
                    delimiter=info.delimiter)

    # -- type catalogue

    def missing(self, oids: Iterable[int]) -> set[int]:
        """The OIDs among ``oids`` that :meth:`ensure_types` has still to look up."""
        return {oid for oid in oids if oid not in self._types}

    def add_types(self, types: Iterable[PgType]) -> None:
        """Record catalogue facts (what :meth:`ensure_types` fetched); resets the cache."""
        for t in types:
            self._types[t.oid] = t
        self._converters.clear()

    def _absorb(self, wanted: set[int], rows: list[tuple[Any, ...]]) -> set[int]:
        found = [
            PgType(oid, name, kind, base, elem, delim,
                   tuple(zip(names or (), field_oids or (), strict=True)))
            for oid, name, kind, base, elem, delim, names, field_oids in rows
        ]
        gone = wanted - {t.oid for t in found}
        found.extend(PgType(oid, f"oid {oid}", "?") for oid in gone)  # dropped: as text
        self.add_types(found)
        return self.missing(ref for t in found for ref in t.references())

    def ensure_types_sync(self, conn: psycopg.Connection[Any], oids: Iterable[int]) -> None:
        """Look up the OIDs not yet known (and the types they reference) in ``pg_type``."""
        todo = self.missing(oids)
        for _ in range(_MAX_FETCH_ROUNDS):
            if not todo:
                return
            with conn.transaction():
                rows = conn.execute(_TYPES_SQL, (sorted(todo),)).fetchall()
            todo = self._absorb(todo, rows)

    async def ensure_types(
        self, conn: psycopg.AsyncConnection[Any], oids: Iterable[int]
    ) -> None:
        """Async :meth:`ensure_types_sync`, for the replication loop's catalogue connection."""
        todo = self.missing(oids)
        for _ in range(_MAX_FETCH_ROUNDS):
            if not todo:
                return
            async with conn.transaction():
                cur = await conn.execute(_TYPES_SQL, (sorted(todo),))
                rows = await cur.fetchall()
            todo = self._absorb(todo, rows)

    def type_name(self, oid: int) -> str:
        t = self._types.get(oid)
        return t.name if t is not None else f"oid {oid}"

    def pg_type(self, oid: int) -> PgType | None:
        """What the catalogue said about ``oid`` (``None``: not looked up, or unknown)."""
        return self._types.get(oid)

    def json_shape(self, oid: int) -> tuple[JsonType, str | None]:
        """The JSON type (and JSON Schema ``format``) of ``oid``'s values as
        :meth:`decode` writes them: the rules of the module docstring, read from the
        same catalogue facts :meth:`converter` builds from."""
        return self._json_shape(oid, frozenset())

    def _json_shape(self, oid: int, seen: frozenset[int]) -> tuple[JsonType, str | None]:
        if oid in self._scalar:
            return _SCALAR_SHAPES.get(self._types[oid].name, ("string", None))
        t = self._types.get(oid)
        if t is None or oid in seen:
            return "string", None  # passed as the server's text
        seen = seen | {oid}
        if t.kind == "d" and t.base_oid:
            return self._json_shape(t.base_oid, seen)
        if t.element_oid:
            return "array", None
        if t.kind == "c":
            return "object", None
        return "string", None  # enums (the label), ranges and other types: text

    # -- conversion

    def converter(self, oid: int) -> Converter:
        """The cached text -> value function of ``oid`` (it may raise: see :meth:`decode`)."""
        conv = self._converters.get(oid)
        if conv is None:
            conv = self._converters[oid] = self._build(oid, frozenset())
        return conv

    def _build(self, oid: int, seen: frozenset[int]) -> Converter:
        scalar = self._scalar.get(oid)
        if scalar is not None:
            return scalar
        t = self._types.get(oid)
        if t is None or oid in seen:
            return _as_text
        seen = seen | {oid}
        if t.kind == "d" and t.base_oid:
            return self._build(t.base_oid, seen)
        if t.element_oid:
            return self._array(t, self._build(t.element_oid, seen))
        if t.kind == "c":
            return self._record(t, [(n, self._build(f, seen)) for n, f in t.fields])
        return _as_text  # enums (the label), ranges, pseudo and other types

    @staticmethod
    def _array(t: PgType, element: Converter) -> Converter:
        delimiter = t.delimiter
        return lambda text: parse_array(text, delimiter, element)

    @staticmethod
    def _record(t: PgType, fields: list[tuple[str, Converter]]) -> Converter:
        def convert(text: str) -> dict[str, Any]:
            values = parse_record(text, len(fields))
            return {
                name: None if v is None else conv(v)
                for (name, conv), v in zip(fields, values, strict=True)
            }

        return convert

    def decode(self, type_oid: int, text: str | None, type_modifier: int = -1) -> Any:
        """The JSON-able value of ``text`` (of type ``type_oid``); never raises.

        ``type_modifier`` is accepted for completeness; no rule needs it today.
        """
        if text is None:
            return None
        conv = self._converters.get(type_oid) or self.converter(type_oid)
        if conv is _as_text:
            return text
        try:
            return conv(text)
        except Exception as e:  # any failure: pass the server's text, never crash
            self.fallbacks[type_oid] += 1
            if self.fallbacks[type_oid] == 1:
                log.warning(
                    "a value of type %s (oid %d) could not be converted (%s); "
                    "passing the server's text (logged once per type)",
                    self.type_name(type_oid), type_oid, type(e).__name__,
                )
            return text
