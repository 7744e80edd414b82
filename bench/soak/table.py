"""The soak's result as plain-text tables (and a one-line JSON summary).

Two tables: faults by kind (count, max and mean recovery, never recovered) and, per
source table, events written / delivered / lost / duplicated / out of order (plus
unexpected, final-state mismatches and, for pollers, collapsed intermediate states).
"""

from __future__ import annotations

import json
from collections import defaultdict

from bench.soak.driver import SoakResult


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join([line, sep, *body])


def fault_rows(result: SoakResult) -> list[list[str]]:
    by_kind: dict[str, list[float | None]] = defaultdict(list)
    for f in result.faults:
        by_kind[f.kind].append(f.recovery_s)
    rows = []
    for kind in sorted(by_kind):
        rec = [r for r in by_kind[kind] if r is not None]
        never = len(by_kind[kind]) - len(rec)
        rows.append([kind, str(len(by_kind[kind])),
                     f"{max(rec):.2f}" if rec else "-",
                     f"{sum(rec) / len(rec):.2f}" if rec else "-", str(never)])
    return rows


def render(result: SoakResult) -> str:
    out = [f"soak: seed={result.seed} duration={result.duration_s:.0f}s "
           f"sources={','.join(result.sources) or 'none'}", ""]
    out.append(_grid(["fault", "count", "max recovery s", "mean recovery s", "not recovered"],
                     fault_rows(result) or [["(none)", "0", "-", "-", "0"]]))
    out.append("")
    rows = [[t.label, t.mode, str(t.written), str(t.delivered), str(t.lost), str(t.duplicated),
             str(t.out_of_order), str(t.unexpected), str(t.final_mismatch), str(t.collapsed)]
            for t in result.tables]
    tot = [sum(getattr(t, a) for t in result.tables) for a in
           ("written", "delivered", "lost", "duplicated", "out_of_order", "unexpected",
            "final_mismatch", "collapsed")]
    rows.append(["TOTAL", "", *map(str, tot)])
    out.append(_grid(["table", "check", "written", "delivered", "lost", "duplicated",
                      "out of order", "unexpected", "final mismatch", "collapsed"], rows))
    out.append("")
    out.append(f"faults injected: {len(result.faults)}; dead letters: {result.dead_letters}; "
               f"stray messages: {result.strays}; unexpected bridge exits: "
               f"{len(result.unexpected_exits)}; final bridge exit code: "
               f"{result.final_exit_code}")
    for t in result.tables:
        for ex in t.examples:
            out.append(f"  {t.label}: {ex}")
    for e in result.unexpected_exits:
        out.append(f"  bridge exit: {e}")
    out.extend(f"note: {n}" for n in result.notes)
    out.append("RESULT: " + ("PASS" if result.ok else "FAIL"))
    return "\n".join(out)


def summary_json(result: SoakResult) -> str:
    return json.dumps({
        "seed": result.seed, "duration_s": round(result.duration_s, 1), "ok": result.ok,
        "sources": result.sources,
        "faults": {r[0]: {"count": int(r[1]), "max_recovery_s": r[2]} for r in
                   fault_rows(result)},
        "tables": {t.label: {"written": t.written, "delivered": t.delivered, "lost": t.lost,
                             "duplicated": t.duplicated, "out_of_order": t.out_of_order}
                   for t in result.tables},
    })
