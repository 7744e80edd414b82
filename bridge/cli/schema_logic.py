"""What ``cdc-bridge schema`` prints: registry entries as tables of text or JSON (pure).

The I/O (reading the registry bucket and the outbox, queueing an accept) is in
:mod:`cdc_bridge.cli.schema`; here entries (the registry documents,
:func:`cdc_bridge.kernel.schemas.registry_entry`) become lines and dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.kernel.schemas import diff, shape_of_entry, table_ref, verdict


@dataclass(slots=True)
class TableVersions:
    """Every registered version of one table, plus what the outbox says of it."""

    adapter: str
    schema: str | None
    table: str
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: From the outbox (``None``: not read): why it is paused, how many rows are held.
    paused: str | None = None
    held: int = 0

    @property
    def ref(self) -> str:
        return table_ref(self.schema, self.table)

    @property
    def latest(self) -> int:
        return max(self.entries, default=0)


def group_entries(entries: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], TableVersions]:
    """Registry documents by ``(adapter, schema.table)``."""
    out: dict[tuple[str, str], TableVersions] = {}
    for e in entries:
        key = (str(e["adapter"]), table_ref(e.get("schema"), str(e["table"])))
        tv = out.get(key)
        if tv is None:
            tv = out[key] = TableVersions(key[0], e.get("schema"), str(e["table"]))
        tv.entries[int(e["version"])] = dict(e)
    return out


def find_table(tables: Mapping[tuple[str, str], TableVersions], adapter: str, table: str
               ) -> TableVersions | None:
    """The table an operator names: ``schema.table``, or a table name that is unique."""
    hit = tables.get((adapter, table))
    if hit is not None:
        return hit
    matches = [tv for (a, _), tv in tables.items() if a == adapter and tv.table == table]
    return matches[0] if len(matches) == 1 else None


def list_rows(tables: Iterable[TableVersions]) -> list[dict[str, Any]]:
    rows = []
    for tv in sorted(tables, key=lambda t: (t.adapter, t.ref)):
        latest = tv.entries.get(tv.latest, {})
        rows.append({"adapter": tv.adapter, "table": tv.ref, "version": tv.latest,
                     "versions": sorted(tv.entries), "columns": len(latest.get("columns", [])),
                     "key": latest.get("key", []), "uri": latest.get("uri"),
                     "paused": tv.paused, "held": tv.held})
    return rows


def render_list(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no schemas registered yet (nothing captured, or nats.schema_registry off)"]
    head = ("ADAPTER", "TABLE", "VERSION", "COLUMNS", "STATE")
    body = [(r["adapter"], r["table"], f"v{r['version']}", str(r["columns"]),
             f"PAUSED, {r['held']} held: {r['paused']}" if r["paused"] else "flowing")
            for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=False)).rstrip()
            for row in (head, *body)]


def render_show(tv: TableVersions, version: int) -> list[str]:
    entry = tv.entries[version]
    lines = [f"{tv.adapter} {tv.ref} v{version} (of {tv.latest}): {entry.get('uri')}",
             f"key: {', '.join(entry.get('key') or []) or '(none)'}"]
    cols = entry.get("columns", [])
    head = ("COLUMN", "SOURCE TYPE", "JSON", "NULL")
    body = [(str(c["name"]), str(c["source_type"]),
             str(c.get("json_type", "any")) + (f" ({c['format']})" if c.get("format") else ""),
             {True: "yes", False: "no"}.get(c.get("nullable"), "?")) for c in cols]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(3)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=False)).rstrip()
              for row in (head, *body)]
    if tv.paused and version == tv.latest:
        lines.append(f"PAUSED ({tv.held} events held): {tv.paused}")
    return lines


def diff_report(tv: TableVersions, old: int, new: int) -> dict[str, Any]:
    """The difference between two registered versions, with its verdict."""
    d = diff(shape_of_entry(tv.entries[old]), shape_of_entry(tv.entries[new]))
    return {"adapter": tv.adapter, "table": tv.ref, "from": old, "to": new,
            "verdict": verdict(d), "diff": d.as_dict(), "lines": d.lines()}


def render_diff(report: Mapping[str, Any]) -> list[str]:
    head = (f"{report['adapter']} {report['table']} v{report['from']} -> v{report['to']}: "
            f"{report['verdict']}")
    return [head, *(report["lines"] or ["(no difference in columns or key)"])]
