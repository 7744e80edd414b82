"""Rows the database driver cannot decode: how they are recognised and dead-lettered.

A legacy table can hold text that is not valid in the encoding it claims: SQLite
stores whatever bytes the application wrote into a ``TEXT`` column, and a PostgreSQL
``SQL_ASCII`` database accepts any byte. Reading such a row fails for the whole page
(SQLite: ``Could not decode to UTF-8``; PostgreSQL: SQLSTATE 22021 ``invalid byte
sequence``, or 22P05 when the client encoding cannot represent a character). Retrying
cannot help, so a failing page is not an outage: :mod:`.source` re-reads it in smaller
ranges to single out the rows that fail (their cursor and key columns still decode),
and each such row becomes a :class:`BadRow`, sent to the dead-letter subject by the
mode that read it, while the rows around it flow as usual.

MariaDB/MySQL never get here: the server converts every value to the connection's
character set and substitutes ``?`` for what it cannot convert, so the driver always
receives valid text.

A key or cursor column that itself cannot be decoded leaves nothing to identify or
skip the row by; :func:`undecodable` lets :func:`~.source.classify` turn that into a
:class:`~cdc_bridge.kernel.errors.DecodeError` (fatal, with the database's message) instead of a
retry loop. Pure helpers, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.kernel.events import DeadLetter, dumps

#: SQLSTATEs (PostgreSQL) of values that cannot be decoded or converted.
_BAD_TEXT_STATES = frozenset({"22021", "22P05"})
#: The SQLite ``sqlite3`` module's message for TEXT that is not UTF-8.
_SQLITE_BAD_TEXT = "Could not decode to UTF-8"


def undecodable(e: BaseException) -> bool:
    """Is ``e`` (an SQLAlchemy error or a driver's) a value that cannot be decoded?"""
    orig = getattr(e, "orig", None) or e
    if isinstance(orig, UnicodeError):
        return True
    if getattr(orig, "sqlstate", None) in _BAD_TEXT_STATES:
        return True
    return _SQLITE_BAD_TEXT in str(orig)


def ascii_text(text: str) -> str:
    """``text`` as printable ASCII (for headers and reasons), non-ASCII escaped."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be read whole: where it is, what could be read, and why."""

    #: The values of the columns the page is ordered by (its cursor or key).
    cursor: tuple[Any, ...]
    key: dict[str, Any]
    #: Names of the columns that cannot be decoded (empty: the database did not say).
    columns: list[str]
    reason: str
    #: The columns that could be read.
    partial: dict[str, Any] = field(default_factory=dict)

    def dead_letter(self, adapter: str, table: str, position: str,
                    extra: Mapping[str, str] | None = None) -> DeadLetter:
        """The dead letter for this row at ``position`` (deterministic: the row's version)."""
        payload = dumps({"table": table, "key": self.key, "columns": self.columns,
                         "row": self.partial})
        return DeadLetter(
            adapter=adapter, position=position, reason=ascii_text(self.reason),
            payload=payload,
            context={"table": ascii_text(table), "key": ascii_text(dumps(self.key).decode()),
                     "column": ascii_text(",".join(self.columns)), **(extra or {})})
