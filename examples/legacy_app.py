"""A stand-in for a legacy application: creates a small SQLite database and keeps writing.

Used by the quickstart: ``scripts/quickstart.sh`` runs it beside the bridge so that
changes visibly flow. Every ``--interval`` seconds it inserts a new invoice and, now and
then, marks an invoice paid (bumping ``updated_at``), and inserts, renames or deletes a
customer; ``customers`` has no change column, which is what the ``diff`` mode is for.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from pathlib import Path

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"


def create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS invoices (
                id INTEGER PRIMARY KEY,
                customer TEXT NOT NULL,
                amount TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'open',
                updated_at TEXT NOT NULL DEFAULT ({_NOW})
            );
            CREATE TABLE IF NOT EXISTS customers (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                email TEXT
            );
            """
        )
        if conn.execute("SELECT COUNT(*) FROM invoices").fetchone()[0] == 0:
            conn.executemany(
                "INSERT INTO invoices (customer, amount) VALUES (?, ?)",
                [(f"customer-{i}", f"{10 * i}.00") for i in range(1, 6)],
            )
        if conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 0:
            conn.executemany("INSERT INTO customers (id, name, email) VALUES (?, ?, ?)",
                             [(i, f"customer-{i}", f"c{i}@example.com") for i in range(1, 6)])


def tick(conn: sqlite3.Connection, rng: random.Random) -> None:
    conn.execute(
        "INSERT INTO invoices (customer, amount) VALUES (?, ?)",
        (f"customer-{rng.randint(1, 50)}", f"{rng.randint(1, 99999) / 100:.2f}"),
    )
    if rng.random() < 0.3:
        conn.execute(f"UPDATE invoices SET status = 'paid', updated_at = {_NOW} WHERE id = "
                     "(SELECT id FROM invoices WHERE status = 'open' ORDER BY random() LIMIT 1)")
    roll = rng.random()
    if roll < 0.2:
        conn.execute("INSERT OR IGNORE INTO customers (id, name, email) VALUES (?, ?, ?)",
                     (rng.randint(1, 50), f"customer-{rng.randint(1, 999)}", None))
    elif roll < 0.35:
        conn.execute("UPDATE customers SET name = ? WHERE id = "
                     "(SELECT id FROM customers ORDER BY random() LIMIT 1)",
                     (f"renamed-{rng.randint(1, 999)}",))
    elif roll < 0.45:
        conn.execute("DELETE FROM customers WHERE id = "
                     "(SELECT id FROM customers ORDER BY random() LIMIT 1)")


def run(path: Path, interval_s: float, count: int) -> None:
    rng = random.Random()
    written = 0
    while count == 0 or written < count:
        with sqlite3.connect(path, timeout=30) as conn:
            tick(conn, rng)
        written += 1
        time.sleep(interval_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=Path(".cdc-bridge/legacy.db"))
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0, help="stop after N writes (0 = never)")
    parser.add_argument("--create-only", action="store_true")
    args = parser.parse_args()
    create(args.db)
    if not args.create_only:
        run(args.db, args.interval, args.count)


if __name__ == "__main__":
    main()
