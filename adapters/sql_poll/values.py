"""Pure value helpers of the polling adapter: cursor encoding, keys, versions, row hashes.

Cursor values go into the JSON checkpoint and must come back as the very same Python
values (a ``datetime`` with its microseconds and its tzinfo or lack of it, a ``Decimal``
with its digits), so that the next query binds exactly what was read. JSON natives
(int, str, float, bool, null) are stored as they are; other types as a tagged pair
``["~dt", "2024-05-01T10:00:00.123456+00:00"]``. Nothing is ever rounded or shifted.

Row hashes are BLAKE2b-128 of the row image as the bridge serialises it (after column
rules), so a change only in an excluded column is not a change, and the hash of a row
does not depend on the driver's Python types beyond what ends up in the event.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from cdc_bridge.kernel.events import dumps

_blake2b = hashlib.blake2b
_b64 = base64.b64encode

CursorValue = Any
Cursor = tuple[CursorValue, ...]

_TAGS = ("~dt", "~d", "~t", "~dec", "~b", "~uuid", "~int")
_INT64 = range(-(2**63), 2**63)
_PLAIN = (str, float, bool, type(None))


def encode_value(value: Any) -> Any:
    """A cursor value as JSON-able data that :func:`decode_value` turns back exactly."""
    kind = type(value)
    if kind is int:  # the common cases first: this runs for every row read
        return value if value in _INT64 else ["~int", str(value)]
    if kind in _PLAIN:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return ["~int", str(value)]  # JSON numbers beyond 64 bits are not portable
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        # a string that looks like a tagged pair is impossible (pairs are lists)
        return value
    if isinstance(value, dt.datetime):
        return ["~dt", value.isoformat()]
    if isinstance(value, dt.date):
        return ["~d", value.isoformat()]
    if isinstance(value, dt.time):
        return ["~t", value.isoformat()]
    if isinstance(value, decimal.Decimal):
        return ["~dec", str(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["~b", base64.b64encode(bytes(value)).decode("ascii")]
    if isinstance(value, uuid.UUID):
        return ["~uuid", str(value)]
    raise TypeError(f"unsupported cursor value type {type(value).__name__}")


def decode_value(data: Any) -> Any:
    if not isinstance(data, list):
        return data
    if len(data) != 2 or data[0] not in _TAGS:
        raise ValueError(f"malformed cursor value in checkpoint: {data!r}")
    tag, text = data
    if tag == "~dt":
        return dt.datetime.fromisoformat(text)
    if tag == "~d":
        return dt.date.fromisoformat(text)
    if tag == "~t":
        return dt.time.fromisoformat(text)
    if tag == "~int":
        return int(text)
    if tag == "~dec":
        return decimal.Decimal(text)
    if tag == "~b":
        return base64.b64decode(text)
    return uuid.UUID(text)


def encode_cursor(cursor: Cursor | None) -> Sequence[Any] | None:
    """A cursor as JSON-able data: the tuple itself when every value is JSON already."""
    if cursor is None:
        return None
    for v in cursor:  # no new list per row in the common case (ints, strings)
        kind = type(v)
        if kind not in _PLAIN and (kind is not int or v not in _INT64):
            return [encode_value(v) for v in cursor]
    return cursor


def decode_cursor(data: Sequence[Any] | None) -> Cursor | None:
    return None if data is None else tuple(decode_value(v) for v in data)


def value_text(value: Any) -> str:
    """A stable text form of one value, for positions and event ids."""
    if type(value) is int and value in _INT64:  # what ``dumps`` writes, without the call
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, str):
        return value
    return dumps(value).decode()


def key_text(key: Mapping[str, Any]) -> str:
    """The key as compact JSON in key-column order (stable across reads)."""
    return dumps(dict(key)).decode()


def row_hash(image: Mapping[str, Any]) -> bytes:
    """BLAKE2b-128 of the serialised row image (column order as given)."""
    return hashlib.blake2b(dumps(dict(image)), digest_size=16).digest()


def fingerprint(*parts: str | bytes) -> str:
    """A short hash identifying one row version (for the dedup window)."""
    if len(parts) == 1 and type(parts[0]) is str:  # one call per row: the short way
        return _b64(_blake2b(parts[0].encode() + b"\x1f", digest_size=9).digest()).decode()
    h = hashlib.blake2b(digest_size=9)
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\x1f")
    return base64.b64encode(h.digest()).decode("ascii")


def compare_cursor(a: Cursor, b: Cursor) -> int:
    """-1/0/1 like SQL's row ordering of the cursor columns (values are never NULL)."""
    for x, y in zip(a, b, strict=True):
        if x != y:
            return -1 if x < y else 1
    return 0


def same_table(was: str, now: str) -> bool:
    """Do two table identities (:meth:`~.source.TableSource.identity`) name one table?

    MySQL/MariaDB identities are ``<creation time>#<InnoDB table id>``; an ``ALTER
    TABLE`` that adds or drops a column in place keeps the table id but moves the
    creation time, so when both carry a table id only the ids are compared (TRUNCATE,
    DROP + CREATE and a copying ALTER give a new id). Otherwise the whole text is.
    """
    if was == now:
        return True
    old_id = was.rpartition("#")[2] if "#" in was else ""
    new_id = now.rpartition("#")[2] if "#" in now else ""
    return bool(old_id) and old_id == new_id
