"""Micro-benchmark: the capture path's encoding (``encode_batch``) per event, with the
default subjects and with subject templates (docs/subjects.md).

No servers: ``--events`` update events of one table (before and after images, a tenant
column) are encoded ``--rounds`` times per variant; the best round is reported, in
microseconds per event. Run: ``.venv/bin/python bench/bench_subjects.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.subjects import ANY, SubjectRouter, SubjectScope, parse_template
from cdc_bridge.outbox.writer import encode_batch


def _router(text: str) -> SubjectRouter | None:
    return SubjectRouter.build("erp", [SubjectScope(ANY, ANY, parse_template(text))])


def _best(fn: Callable[[], object], rounds: int, n: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    n = args.events
    events = [ChangeEvent("erp", "invoices", "u", f"invoices:{i}", key={"id": i},
                          before={"id": i, "tenant": f"t{i % 7}", "amount": "10.00"},
                          after={"id": i, "tenant": f"t{i % 7}", "amount": "11.00"},
                          ts_ms=1795000000000) for i in range(n)]
    batch = ChangeBatch(events, None)
    variants = {
        "no template": None,
        "erp.{table}.{op}": _router("erp.{table}.{op}"),
        "erp.{col:tenant}.{table}.{op}": _router("erp.{col:tenant}.{table}.{op}"),
    }
    results = {}
    for name, router in variants.items():
        def run(router: SubjectRouter | None = router) -> object:
            return encode_batch(batch, "cdc", subjects=router)
        _best(run, 3, n)  # warm the caches
        results[name] = round(_best(run, args.rounds, n), 2)
    base = results["no template"]
    for name, us in results.items():
        print("BENCH " + json.dumps({"metric": f"encode_batch, {name}", "value": us,
                                     "unit": "us/event", "ratio": round(us / base, 3)}))


if __name__ == "__main__":
    main()
