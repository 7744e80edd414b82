"""The checks that keep templated subjects apart (run once, at config load).

Two different tables must never publish to the same subject by accident: a consumer
filtering one table's subject would get the other's events. So every template is
compared with every other one (and with the default subject of every other table),
after filling in what is known at config time (the adapter, and the schema and table of
a table listed by name). Two templates *can collide* when some rendering of one equals
some rendering of the other: same number of tokens, and at every position the tokens
can be equal (fixed text against fixed text: equal; a value against fixed text: the
text fits the value; two values: assumed they can). A scope that covers many tables
(``schema.*``, a files adapter whose ``table`` uses ``{stem}``) must have ``{table}`` in
its template (and ``{schema}`` when it spans schemas), or two of its own tables could
collide.

A collision is allowed only when both sides set ``allow_shared_subject: true``.
Pure; returns the problems as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cdc_bridge.kernel.events import subject_token
from cdc_bridge.kernel.subjects import (
    ANY,
    DEFAULT_TEMPLATE,
    OP_VALUES,
    SubjectScope,
    SubjectTemplate,
    Token,
    Var,
    describe,
    parse_template,
)

_DEFAULT = parse_template(DEFAULT_TEMPLATE)
_VALUE = "[A-Za-z0-9_\\-]+"


@dataclass(frozen=True, slots=True)
class _Shape:
    """A scope's template with what is known filled in, ready to compare."""

    adapter: str
    where: str
    scope: SubjectScope
    tokens: tuple[Token, ...]
    #: Table tokens a ``{table}`` of this scope never renders (tables listed on their own).
    excluded: frozenset[str]

    @property
    def templated(self) -> bool:
        return self.scope.template is not None


def _fill(template: SubjectTemplate, adapter: str, scope: SubjectScope) -> tuple[Token, ...]:
    known: dict[str, str] = {"adapter": subject_token(adapter)}
    if scope.schema != ANY:
        known["schema"] = subject_token(scope.schema)
    if scope.table != ANY:
        known["table"] = subject_token(scope.table)
    out: list[Token] = []
    for token in template.tokens:
        pieces: list[str | Var] = []
        for piece in token:
            value = known.get(piece.kind) if isinstance(piece, Var) else piece
            item: str | Var = piece if value is None else value
            if isinstance(item, str) and pieces and isinstance(pieces[-1], str):
                pieces[-1] += item
            else:
                pieces.append(item)
        out.append(tuple(pieces))
    return tuple(out)


def _regex(token: Token) -> re.Pattern[str]:
    parts = []
    for piece in token:
        if isinstance(piece, str):
            parts.append(re.escape(piece))
        elif piece.kind == "op":
            parts.append("[cudrt]")
        else:
            parts.append(_VALUE)
    return re.compile("".join(parts))


def _fixed(token: Token) -> str | None:
    return "".join(token) if all(isinstance(p, str) for p in token) else None  # type: ignore[arg-type]


def _token_can_match(a: Token, a_excl: frozenset[str], b: Token, b_excl: frozenset[str]) -> bool:
    fa, fb = _fixed(a), _fixed(b)
    if fa is not None and fb is not None:
        return fa == fb
    if fa is not None or fb is not None:
        text = fa if fa is not None else fb
        other, excl = (b, b_excl) if fa is not None else (a, a_excl)
        assert text is not None
        if other == (Var("table"),) and text in excl:
            return False
        return _regex(other).fullmatch(text) is not None
    for x, y in ((a, b), (b, a)):
        if x == (Var("op"),):
            return any(_regex(y).fullmatch(op) for op in OP_VALUES)
    return True


def can_collide(a: _Shape, b: _Shape) -> bool:
    if len(a.tokens) != len(b.tokens):
        return False
    return all(_token_can_match(x, a.excluded, y, b.excluded)
               for x, y in zip(a.tokens, b.tokens, strict=True))


def _shapes(adapter: str, scopes: Sequence[SubjectScope], where: str) -> list[_Shape]:
    exact = {(s.schema, s.table) for s in scopes if s.table != ANY}
    out = []
    for scope in scopes:
        excluded: frozenset[str] = frozenset()
        if scope.table == ANY and scope.schema != ANY:
            excluded = frozenset(subject_token(t) for s, t in exact
                                 if s == scope.schema and "_" not in subject_token(t))
        template = scope.template or _DEFAULT
        out.append(_Shape(adapter, f"{where}.{scope.where}", scope,
                          _fill(template, adapter, scope), excluded))
    return out


def _label(shape: _Shape) -> str:
    text = shape.scope.template.text if shape.scope.template else "the default subject"
    return f"{shape.where} ({shape.adapter}, {describe(shape.scope)}: {text!r})"


def _own_problems(shape: _Shape, prefix: str) -> list[str]:
    """What is wrong with one scope's template on its own."""
    template = shape.scope.template
    if template is None:
        return []
    out = []
    head = prefix.split(".")[0]
    if template.tokens[0] == (head,):
        out.append(f"{shape.where}: {template.text!r} starts with the subject prefix "
                   f"{head!r}: templates are relative to the prefix (the subject is "
                   f"'{prefix}.<template>')")
    if shape.scope.shared:
        return out
    kinds = template.kinds()
    if shape.scope.table == ANY and "table" not in kinds:
        out.append(f"{shape.where}: {template.text!r} covers several tables "
                   f"({describe(shape.scope)}) and has no {{table}}: two of them would "
                   "share subjects (add {table}, or set allow_shared_subject: true)")
    elif shape.scope.schema == ANY and "schema" not in kinds:
        out.append(f"{shape.where}: {template.text!r} covers tables of several schemas "
                   "and has no {schema}: two tables of the same name would share "
                   "subjects (add {schema}, or set allow_shared_subject: true)")
    return out


def check_subjects(prefix: str, adapters: Mapping[str, tuple[str, Sequence[SubjectScope]]]
                   ) -> list[str]:
    """Problems of the templates of every adapter (name -> (config path, scopes); an
    adapter without templates: one ``(ANY, ANY)`` scope without a template)."""
    problems: list[str] = []
    shapes: list[_Shape] = []
    for name, (where, scopes) in adapters.items():
        for shape in _shapes(name, scopes, where):
            shapes.append(shape)
            problems.extend(p for p in _own_problems(shape, prefix) if p not in problems)
    seen: set[tuple[str, str]] = set()
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            if not (a.templated or b.templated) or (a.scope.shared and b.scope.shared):
                continue  # default subjects: apart by adapter, schema and table
            if (a.where, b.where) in seen or not can_collide(a, b):
                continue
            seen.add((a.where, b.where))
            first = a if a.templated else b
            problems.append(
                f"{first.where}: can render the same subject for two tables: "
                f"{_label(a)} and {_label(b)}; put {{table}} (or fixed text that differs) "
                "in one of them, or set allow_shared_subject: true on both if they are "
                "meant to share")
    return problems
