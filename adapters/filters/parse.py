"""Text -> :mod:`~cdc_bridge.adapters.filters.nodes` tree, with errors that point at the text.

The grammar (keywords in any case)::

    expr     := term ("or" term)*
    term     := factor ("and" factor)*
    factor   := "not" factor | "(" expr ")" | test
    test     := operand ("=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") operand
              | operand "is" ["not"] "null"
              | operand ["not"] "in" "(" constant ("," constant)* ")"
    operand  := name | "quoted name" | op | constant
    constant := 'text' | number | true | false

``op`` is the change's operation; a column named ``op`` is written ``"op"``. Text
constants double a quote to hold one (``'O''Brien'``). ``= null`` is refused (it is
never true in SQL): write ``is null``. The grammar is Lark's (LALR); its syntax errors
become :class:`FilterSyntaxError` with the line, column and a caret under the spot.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from cdc_bridge.adapters.filters.nodes import (
    And,
    Column,
    Compare,
    Comparison,
    Expr,
    InList,
    IsNull,
    Literal,
    Not,
    Operand,
    OpRef,
    Or,
    Value,
)

_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: factor (_AND factor)*
?factor: _NOT factor                          -> not_
       | "(" or_expr ")"
       | operand CMP operand                  -> compare
       | operand _IS NULL                     -> is_null
       | operand _IS _NOT NULL                -> is_not_null
       | operand _IN "(" constants ")"        -> in_
       | operand _NOT _IN "(" constants ")"   -> not_in
constants: constant ("," constant)*
?operand: NAME                                -> name
        | QUOTED                              -> quoted
        | constant
?constant: STRING                             -> string
         | NUMBER                             -> number
         | _TRUE                              -> true
         | _FALSE                             -> false
         | NULL                               -> null

CMP: "<=" | ">=" | "!=" | "<>" | "=" | "<" | ">"
_OR.2: /or\b/i
_AND.2: /and\b/i
_NOT.2: /not\b/i
_IS.2: /is\b/i
_IN.2: /in\b/i
_TRUE.2: /true\b/i
_FALSE.2: /false\b/i
NULL.2: /null\b/i
NAME.1: /[A-Za-z_][A-Za-z0-9_$]*/
QUOTED: /"([^"]|"")+"/
STRING: /'([^']|'')*'/
NUMBER: /[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/

%import common.WS
%ignore WS
"""

_KEYWORDS = frozenset({"or", "and", "not", "is", "in", "true", "false", "null"})

#: Terminal names -> what a person would type, for "expected ..." in errors.
_WORDS = {
    "CMP": "a comparison (= != < <= > >=)", "_IS": "is", "_IN": "in", "_NOT": "not",
    "_AND": "and", "_OR": "or", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
    "NAME": "a column", "QUOTED": "a column", "STRING": "a value", "NUMBER": "a value",
    "_TRUE": "a value", "_FALSE": "a value", "NULL": "a value", "$END": "the end",
}


class FilterSyntaxError(ValueError):
    """A filter that does not parse, or says something that is never true."""

    def __init__(self, text: str, line: int, column: int, problem: str) -> None:
        self.text, self.line, self.column, self.problem = text, line, column, problem
        super().__init__(self._render())

    def _render(self) -> str:
        lines = self.text.splitlines() or [""]
        src = lines[min(self.line, len(lines)) - 1]
        where = (f"column {self.column}" if len(lines) == 1
                 else f"line {self.line}, column {self.column}")
        return f"{self.problem} at {where}\n    {src}\n    {' ' * (self.column - 1)}^"


class _Misuse(Exception):
    def __init__(self, token: Token, problem: str) -> None:
        super().__init__(problem)
        self.token, self.problem = token, problem


_NULL = object()


@v_args(inline=True)
class _ToTree(Transformer[Token, Expr]):
    def name(self, tok: Token) -> Operand:
        if tok.lower() in _KEYWORDS:
            raise _Misuse(tok, f"{tok!s} is a keyword, not a column (quote it: \"{tok!s}\")")
        return OpRef() if str(tok) == "op" else Column(str(tok))

    def quoted(self, tok: Token) -> Operand:
        return Column(tok[1:-1].replace('""', '"'))

    def string(self, tok: Token) -> Literal:
        return Literal(tok[1:-1].replace("''", "'"))

    def number(self, tok: Token) -> Literal:
        text = str(tok)
        if any(c in text for c in ".eE"):
            return Literal(Decimal(text))
        return Literal(int(text))

    def true(self) -> Literal:
        return Literal(True)

    def false(self) -> Literal:
        return Literal(False)

    def null(self, tok: Token) -> Any:
        return (_NULL, tok)

    def compare(self, left: Any, cmp: Token, right: Any) -> Compare:
        for side in (left, right):
            if isinstance(side, tuple):
                raise _Misuse(side[1], f"'{cmp!s} null' is never true: write 'is null' "
                                       "or 'is not null'")
        op = "!=" if cmp == "<>" else str(cmp)
        return Compare(left, cast(Comparison, op), right)

    def is_null(self, operand: Any, _null: Token) -> IsNull:
        return IsNull(self._operand(operand))

    def is_not_null(self, operand: Any, _null: Token) -> IsNull:
        return IsNull(self._operand(operand), negated=True)

    def constants(self, *items: Any) -> tuple[Value, ...]:
        out: list[Value] = []
        for item in items:
            if isinstance(item, tuple):
                raise _Misuse(item[1], "null in a list never matches: write 'is null'")
            out.append(item.value)
        return tuple(out)

    def in_(self, operand: Any, values: tuple[Value, ...]) -> InList:
        return InList(self._operand(operand), values)

    def not_in(self, operand: Any, values: tuple[Value, ...]) -> InList:
        return InList(self._operand(operand), values, negated=True)

    def not_(self, item: Expr) -> Not:
        return Not(item)

    def and_expr(self, *items: Expr) -> And:
        return And(tuple(items))

    def or_expr(self, *items: Expr) -> Or:
        return Or(tuple(items))

    @staticmethod
    def _operand(operand: Any) -> Operand:
        if isinstance(operand, tuple):
            raise _Misuse(operand[1], "null is not a column or value here")
        return cast(Operand, operand)


_PARSER = Lark(_GRAMMAR, parser="lalr", maybe_placeholders=False)


def parse(text: str) -> Expr:
    """Parse ``text``; raises :class:`FilterSyntaxError` (a ``ValueError``)."""
    if not text.strip():
        raise FilterSyntaxError(text, 1, 1, "empty filter")
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(text, e) from None
    try:
        result: Any = _ToTree().transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, _Misuse):
            tok = e.orig_exc.token
            raise FilterSyntaxError(text, tok.line or 1, tok.column or 1,
                                    e.orig_exc.problem) from None
        raise
    if isinstance(result, Column | OpRef | Literal | tuple):
        raise FilterSyntaxError(text, 1, 1, "a filter must be a test (a comparison, in, "
                                            "is null), not a lone value")
    return cast(Expr, result)


def _syntax_error(text: str, e: UnexpectedInput) -> FilterSyntaxError:
    line, column = max(e.line, 1), max(e.column, 1)
    if isinstance(e, UnexpectedEOF):
        lines = text.rstrip().splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        return FilterSyntaxError(text, line, column, "unexpected end of filter")
    if isinstance(e, UnexpectedCharacters):
        ch = text.splitlines()[line - 1][column - 1:column] if text else ""
        what = "unclosed quote" if ch in "'\"" else f"unexpected character {ch!r}"
        return FilterSyntaxError(text, line, column, what)
    token = getattr(e, "token", None)
    expected = sorted({_WORDS.get(t, t) for t in getattr(e, "expected", ()) or ()})
    hint = f" (expected {', '.join(expected)})" if expected else ""
    if token is None or token.type == "$END":
        lines = text.rstrip().splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        return FilterSyntaxError(text, line, column, f"the filter ends too early{hint}")
    return FilterSyntaxError(text, line, column, f"unexpected {str(token)!r}{hint}")


def op_position(text: str) -> tuple[int, int] | None:
    """Line and column of the first ``op`` (the operation) in ``text``, if any."""
    try:
        for tok in _PARSER.lex(text):
            if tok.type == "NAME" and str(tok) == "op":
                return tok.line or 1, tok.column or 1
    except UnexpectedInput:
        return None
    return None
