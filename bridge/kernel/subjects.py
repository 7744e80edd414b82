"""Subject templates: where a change event is published, when the default will not do.

The default subject is ``<prefix>.<adapter>.<schema>.<table>.<op>``
(:func:`cdc_bridge.kernel.events.change_subject`). A template replaces what follows the
prefix, e.g. ``erp.{col:tenant}.{table}.{op}``; the result is always
``<prefix>.<rendered>``, so it stays inside the stream's ``<prefix>.>``.

Tokens: ``{adapter}``, ``{schema}``, ``{table}``, ``{op}`` and ``{col:<name>}`` (a column
of the row). Every value is sanitised with :func:`~cdc_bridge.kernel.events.subject_token`
(a missing value becomes ``_``), so a value can never add a dot, a wildcard or an empty
token. Which row image a column is read from (:func:`column_value`): the *before* image
for updates and deletes when it has the column, else the *after* image; nothing for a
truncate. A key's events thus stay on one subject until the column really changes
(the update that changes it is still published under the old value).

:func:`parse_template` checks a template's text and raises :class:`ValueError` with the
reason; :class:`SubjectRouter` picks the template of an event's table and renders it
(bound per table once, cached). The checks across tables and adapters live in
:mod:`cdc_bridge.kernel.subject_check`. Everything here is pure.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.kernel.events import ChangeEvent, dumps, subject_token

#: The default subject, written as a template (for the checks; never rendered).
DEFAULT_TEMPLATE = "{adapter}.{schema}.{table}.{op}"
#: Matches any schema or any table in a :class:`SubjectScope`.
ANY = "*"
#: First tokens a template may not start with: the routed outbox events' space.
RESERVED_FIRST = frozenset({"outbox"})
#: The op values an ``{op}`` token renders.
OP_VALUES = frozenset({"c", "u", "d", "r", "t"})

_NAMED = frozenset({"adapter", "schema", "table", "op"})
_LITERAL = re.compile(r"[A-Za-z0-9_\-]+")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Var:
    """A placeholder: ``kind`` is ``adapter``, ``schema``, ``table``, ``op`` or ``col``."""

    kind: str
    column: str = ""

    def __str__(self) -> str:
        return f"{{col:{self.column}}}" if self.kind == "col" else f"{{{self.kind}}}"


#: One subject token of a template: literal text and placeholders, in order.
Piece = str | Var
Token = tuple[Piece, ...]


@dataclass(frozen=True, slots=True)
class SubjectTemplate:
    """A checked template (see :func:`parse_template`)."""

    text: str
    tokens: tuple[Token, ...]

    def kinds(self) -> frozenset[str]:
        return frozenset(p.kind for t in self.tokens for p in t if isinstance(p, Var))

    def columns(self) -> tuple[str, ...]:
        return tuple(p.column for t in self.tokens for p in t
                     if isinstance(p, Var) and p.kind == "col")

    def bind(self, prefix: str, adapter: str, schema: str | None, table: str) -> BoundTemplate:
        """This template for one table: adapter, schema and table filled in."""
        fixed = {"adapter": subject_token(adapter), "schema": subject_token(schema),
                 "table": subject_token(table)}
        out: list[str | Var] = [prefix, "."]
        for i, token in enumerate(self.tokens):
            if i:
                out.append(".")
            for piece in token:
                value = fixed.get(piece.kind) if isinstance(piece, Var) else piece
                _append(out, value if value is not None else piece)
        return BoundTemplate(tuple(out))


def _append(out: list[str | Var], piece: str | Var) -> None:
    if isinstance(piece, str) and out and isinstance(out[-1], str):
        out[-1] += piece
    else:
        out.append(piece)


@dataclass(frozen=True, slots=True)
class BoundTemplate:
    """A template bound to a prefix and one table: only ``{op}`` and columns are left."""

    pieces: tuple[str | Var, ...]

    def render(self, event: ChangeEvent) -> str:
        parts: list[str] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                parts.append(piece)
            elif piece.kind == "op":
                parts.append(event.op)
            else:
                parts.append(subject_token(value_text(column_value(event, piece.column))))
        return "".join(parts)


def column_value(event: ChangeEvent, column: str) -> Any:
    """The value a ``{col:<column>}`` token renders: from the before image for updates and
    deletes when it has the column, else from the after image (``None`` when neither)."""
    before, after = event.before, event.after
    if event.op in ("u", "d") and before is not None and column in before:
        return before[column]
    if after is not None and column in after:
        return after[column]
    if before is not None:
        return before.get(column)
    return None


def value_text(value: Any) -> str | None:
    """A column value as subject text, before sanitising (``None`` stays ``None``)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    text = dumps(value).decode()
    return text[1:-1] if text.startswith('"') else text


def parse_template(text: str) -> SubjectTemplate:
    """Check ``text`` and compile it; :class:`ValueError` says what is wrong.

    Rules: dot-separated tokens, none empty; literal text only ``[A-Za-z0-9_-]`` (no
    wildcards, no spaces); placeholders ``{adapter}``, ``{schema}``, ``{table}``,
    ``{op}``, ``{col:<name>}``; ``{op}`` somewhere, or a last token that is fixed text;
    the first token fixed text or ``{adapter}``, not ``outbox`` and not starting with
    ``_`` (reserved: routed outbox events, dead letters).
    """
    where = f"subject template {text!r}"
    if not text:
        raise ValueError(f"{where}: empty")
    if text.startswith(".") or text.endswith(".") or ".." in text:
        raise ValueError(f"{where}: has an empty token (a leading, trailing or double dot)")
    tokens = tuple(_parse_token(raw, where) for raw in text.split("."))
    template = SubjectTemplate(text, tokens)
    first = tokens[0]
    if not (first == (Var("adapter"),) or all(isinstance(p, str) for p in first)):
        raise ValueError(f"{where}: the first token must be fixed text or {{adapter}} "
                         "(a value there could reach another adapter's or a reserved space)")
    if len(first) == 1 and isinstance(first[0], str) and (
            first[0] in RESERVED_FIRST or first[0].startswith("_")):
        raise ValueError(f"{where}: the first token {first[0]!r} is reserved "
                         "('outbox' for routed events, '_...' for dead letters)")
    last = tokens[-1]
    if "op" not in template.kinds() and not all(isinstance(p, str) for p in last):
        raise ValueError(f"{where}: needs {{op}}, or a last token of fixed text "
                         "(one subject for every op, e.g. '.all')")
    return template


def _parse_token(raw: str, where: str) -> Token:
    pieces: list[Piece] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(raw):
        if m.start() > pos:
            pieces.append(_literal(raw[pos:m.start()], where))
        pieces.append(_var(m.group(1), where))
        pos = m.end()
    if pos < len(raw):
        pieces.append(_literal(raw[pos:], where))
    return tuple(pieces)


def _literal(text: str, where: str) -> str:
    if "{" in text or "}" in text:
        raise ValueError(f"{where}: unbalanced brace in {text!r}")
    if "*" in text or ">" in text:
        raise ValueError(f"{where}: wildcards ('*', '>') are not allowed")
    if not _LITERAL.fullmatch(text):
        raise ValueError(f"{where}: {text!r}: fixed text may only hold letters, digits, "
                         "'_' and '-'")
    return text


def _var(name: str, where: str) -> Var:
    name = name.strip()
    if name in _NAMED:
        return Var(name)
    kind, colon, column = name.partition(":")
    if kind.strip() == "col" and colon:
        if not column.strip():
            raise ValueError(f"{where}: {{col:}} needs a column name")
        return Var("col", column.strip())
    raise ValueError(f"{where}: unknown token {{{name}}} (known: {{adapter}}, {{schema}}, "
                     "{table}, {op}, {col:<column>})")


@dataclass(frozen=True, slots=True)
class SubjectScope:
    """Which of an adapter's tables one template covers.

    ``schema`` and ``table`` are names as events carry them, or :data:`ANY`; ``template``
    ``None`` means the default subject. ``where`` names the config key (for messages);
    ``shared`` is the user's ``allow_shared_subject``.
    """

    schema: str | None
    table: str
    template: SubjectTemplate | None
    where: str = "subject"
    shared: bool = False


@dataclass(slots=True)
class SubjectRouter:
    """One adapter's templates by table; renders an event's subject.

    Lookup: the exact ``(schema, table)``, else the schema's ``ANY`` scope, else an
    ``(ANY, ANY)`` scope; none, or one without a template: the default subject
    (:meth:`bound` returns ``None``, the caller keeps its fast path).
    """

    adapter: str
    scopes: tuple[SubjectScope, ...]
    _exact: dict[tuple[str | None, str], SubjectTemplate | None] = field(default_factory=dict)
    _cache: dict[tuple[str, str | None, str], BoundTemplate | None] = field(
        default_factory=dict)

    def __post_init__(self) -> None:
        for scope in self.scopes:
            self._exact.setdefault((scope.schema, scope.table), scope.template)

    @classmethod
    def build(cls, adapter: str, scopes: Iterable[SubjectScope]) -> SubjectRouter | None:
        """The router, or ``None`` when no scope has a template (the fast path)."""
        kept = tuple(scopes)
        if not any(s.template is not None for s in kept):
            return None
        return cls(adapter, kept)

    def template_for(self, schema: str | None, table: str) -> SubjectTemplate | None:
        exact = self._exact
        for probe in ((schema, table), (schema, ANY), (ANY, ANY)):
            if probe in exact:
                return exact[probe]
        return None

    def bound(self, prefix: str, schema: str | None, table: str) -> BoundTemplate | None:
        key = (prefix, schema, table)
        try:
            return self._cache[key]
        except KeyError:
            template = self.template_for(schema, table)
            found = None if template is None else template.bind(
                prefix, self.adapter, schema, table)
            if len(self._cache) < 65_536:
                self._cache[key] = found
            return found

    def subject(self, event: ChangeEvent, prefix: str) -> str:
        """The subject of ``event`` (the default one when no template covers its table)."""
        bound = self.bound(prefix, event.schema, event.table)
        return event.subject(prefix) if bound is None else bound.render(event)

    def filter_for(self, prefix: str, schema: str | None, table: str) -> str | None:
        """A NATS filter that takes every subject of the table (``{op}`` and columns as
        ``*``), or ``None`` when the table is on the default subject."""
        bound = self.bound(prefix, schema, table)
        if bound is None:
            return None
        tokens = "".join(p if isinstance(p, str) else "\x00" for p in bound.pieces).split(".")
        return ".".join("*" if "\x00" in t else t for t in tokens)


def describe(scope: SubjectScope) -> str:
    """``schema.table`` of a scope for messages (``*`` for any)."""
    return f"{scope.schema or '_'}.{scope.table}" if scope.schema != ANY or scope.table != ANY \
        else "every table"

