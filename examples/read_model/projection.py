"""The projection: invoice change events -> an ``invoices`` table and a per-customer view.

Pure SQL over one SQLite connection, no NATS here (the service wires it to
:mod:`cdc_bridge.client.consumer`). Rules:

- ``c``/``r``/``u``: upsert the row image (``after``);
- ``d``: keep a tombstone (``_deleted = 1``) rather than deleting, so an older event
  redelivered late cannot bring the row back;
- ``t``: tombstone every row;
- every row remembers ``_seq``, the stream sequence of the event that last wrote it; an
  event with a lower sequence than the row's is ignored (a nak'ed event coming back after
  a later one, or a live event re-read after a rebuild), so the model never regresses.

Writes are left uncommitted: the seen-store's ``mark`` commits them together with the
event id (see :mod:`cdc_bridge.client.seen`).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from cdc_bridge.client import Event

COLUMNS = ("id", "customer", "amount", "status", "updated_at")

SCHEMA = """
CREATE TABLE IF NOT EXISTS invoices (
    id INTEGER PRIMARY KEY,
    customer TEXT,
    amount TEXT,
    status TEXT,
    updated_at TEXT,
    _seq INTEGER NOT NULL,
    _deleted INTEGER NOT NULL DEFAULT 0
);
CREATE VIEW IF NOT EXISTS customer_totals AS
    SELECT customer, COUNT(*) AS invoices, SUM(CAST(amount AS REAL)) AS total
    FROM invoices WHERE _deleted = 0 GROUP BY customer;
"""


class Projection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        conn.commit()

    def reset(self) -> None:
        """Empty the model (start of a rebuild); committed by the caller."""
        self.conn.execute("DELETE FROM invoices")

    def _row_seq(self, key: Any) -> int | None:
        row = self.conn.execute("SELECT _seq FROM invoices WHERE id=?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def apply(self, event: Event) -> bool:
        """Apply one event; ``False`` if it was older than what the model holds."""
        if event.op == "t":
            self.conn.execute("UPDATE invoices SET _deleted=1, _seq=MAX(_seq, ?)",
                              (event.sequence,))
            return True
        image = event.row or {}
        key = (event.key or {}).get("id", image.get("id"))
        if key is None:
            raise ValueError(f"event {event.id} has no invoice id")
        current = self._row_seq(key)
        if current is not None and event.sequence and event.sequence < current:
            return False
        values = [image.get(c) for c in COLUMNS]
        values[0] = key
        self.conn.execute(
            "INSERT INTO invoices(id, customer, amount, status, updated_at, _seq, _deleted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " customer=excluded.customer, amount=excluded.amount, status=excluded.status,"
            " updated_at=excluded.updated_at, _seq=excluded._seq, _deleted=excluded._deleted",
            (*[None if v is None else str(v) if i else v for i, v in enumerate(values)],
             event.sequence, 1 if event.op == "d" else 0))
        return True

    def rows(self) -> list[tuple[Any, ...]]:
        """The live rows, as ``(id, customer, amount, status, updated_at)``, by id."""
        return self.conn.execute(
            "SELECT id, customer, amount, status, updated_at FROM invoices"
            " WHERE _deleted = 0 ORDER BY id").fetchall()
