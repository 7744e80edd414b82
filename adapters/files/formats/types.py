"""Pure conversion of text fields to typed values, shared by the csv and fixed-width formats.

``convert(text, type)`` returns the value or raises :class:`RowError` with a reason that
names the problem (never the whole row). Blank text becomes ``None`` for every type
except ``str``. Decimals stay :class:`decimal.Decimal` (exact; strings on the wire).
Implied decimals shift the decimal point left: ``"001234"`` with 2 is ``12.34``; a
leading or trailing sign (``-12``, ``12-``) is accepted, as legacy numeric pictures
write either.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

from cdc_bridge.kernel.events import non_finite_text

_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n"})


class RowError(ValueError):
    """A record that cannot become a row; ``reason`` is short and names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _signed(text: str) -> str:
    if text.endswith(("-", "+")) and len(text) > 1:
        return text[-1] + text[:-1].strip()
    return text


def _number(text: str, implied: int, name: str) -> decimal.Decimal:
    try:
        value = decimal.Decimal(_signed(text))
    except decimal.InvalidOperation:
        raise RowError(f"field {name!r}: not a number: {text[:40]!r}") from None
    if not value.is_finite():
        raise RowError(f"field {name!r}: not a finite number: {text[:40]!r}")
    return value.scaleb(-implied) if implied else value


def _integer(text: str, implied: int, name: str) -> int:
    if not implied:
        try:  # plain digits: what the Decimal path below gives, in one call
            return int(text)
        except ValueError:
            pass
    value = _number(text, implied, name)
    if value != value.to_integral_value():
        raise RowError(f"field {name!r}: not an integer: {text[:40]!r}")
    return int(value)


def convert(text: str, type_: str, name: str, *, implied: int = 0,
            date_format: str | None = None) -> Any:
    """``text`` as a value of ``type_``; raises :class:`RowError` if it does not fit."""
    if type_ == "str":
        return text
    text = text.strip()
    if not text:
        return None
    if type_ == "int":
        return _integer(text, implied, name)
    if type_ == "decimal":
        return _number(text, implied, name)
    if type_ == "float":
        try:
            number = float(_signed(text))
        except ValueError:
            raise RowError(f"field {name!r}: not a number: {text[:40]!r}") from None
        # JSON has no NaN or infinities: the strings every source writes, never null
        return number if math.isfinite(number) else non_finite_text(number)
    if type_ == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise RowError(f"field {name!r}: not a boolean: {text[:40]!r}")
    if type_ in ("date", "datetime"):
        return _when(text, type_, name, date_format)
    raise RowError(f"field {name!r}: unknown type {type_!r}")


def _when(text: str, type_: str, name: str, fmt: str | None) -> Any:
    try:
        if fmt is not None:
            moment = dt.datetime.strptime(text, fmt)
            return moment.date() if type_ == "date" else moment
        if type_ == "date":
            return dt.date.fromisoformat(text)
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise RowError(f"field {name!r}: not a {type_}: {text[:40]!r}") from None


def decode(raw: bytes, encoding: str) -> str:
    """Bytes of one record as text, or :class:`RowError` naming the bad byte offset."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise RowError(f"undecodable bytes for {encoding} at byte {e.start} of the record") \
            from None
