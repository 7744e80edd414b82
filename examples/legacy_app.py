"""A stand-in for a legacy application: creates a small SQLite database and keeps writing.

Used by the quickstart: ``scripts/quickstart.sh`` runs it beside the bridge so that
changes visibly flow. Every ``--interval`` seconds it inserts a new invoice.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from pathlib import Path


def create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS invoices (
                id INTEGER PRIMARY KEY,
                customer TEXT NOT NULL,
                amount TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'open',
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
            );
            """
        )
        if conn.execute("SELECT COUNT(*) FROM invoices").fetchone()[0] == 0:
            conn.executemany(
                "INSERT INTO invoices (customer, amount) VALUES (?, ?)",
                [(f"customer-{i}", f"{10 * i}.00") for i in range(1, 6)],
            )


def run(path: Path, interval_s: float, count: int) -> None:
    rng = random.Random()
    written = 0
    while count == 0 or written < count:
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute(
                "INSERT INTO invoices (customer, amount) VALUES (?, ?)",
                (f"customer-{rng.randint(1, 50)}", f"{rng.randint(1, 99999) / 100:.2f}"),
            )
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
