"""``python -m bench.soak``: run the fault-injection soak and print its result table.

Example (ten minutes, seed 7, every available source)::

    .venv/bin/python -m bench.soak --duration 600 --seed 7

Fault kinds (``--kinds`` takes prefixes): kill9:bridge, restart:<server>,
cut/refuse/delay:<target>, diskfull:outbox, recreate:table and alter:publication
(postgres), restore:state_dir (only with sources whose position survives a restored
state_dir: ``--sources postgres``), and with ``--cluster`` the cluster kinds. With
``--group N`` (N bridges in group mode on one PostgreSQL outbox): kill9:member,
stop:member and refuse:member-outbox instead of kill9:bridge, diskfull and restore.

Exit code 0 when every change arrived exactly once in order and every fault recovered;
1 otherwise. The last line of output is ``SOAK {json}`` for scripts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.soak.driver import ALL_SOURCES, Soak, SoakOptions
from bench.soak.table import render, summary_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sources", default=",".join(ALL_SOURCES),
                   help="comma-separated: postgres,sql_poll,files,mysql_binlog")
    p.add_argument("--kinds", default="", help="comma-separated fault kind prefixes")
    p.add_argument("--keys", type=int, default=200, help="keys per mutable table")
    p.add_argument("--rate", type=float, default=20.0, help="transactions/s per writer")
    p.add_argument("--gap", default="1,6", help="min,max seconds between faults")
    p.add_argument("--no-disk-fault", action="store_true")
    p.add_argument("--cluster", action="store_true",
                   help="a local 3-node JetStream cluster, R3 stream, cluster faults")
    p.add_argument("--duplicate-window", type=float, default=20.0,
                   help="the stream's duplicate window in seconds (at least 16); "
                        "restore:state_dir waits longer than it")
    p.add_argument("--group", type=int, default=0,
                   help="N bridges in group mode on one PostgreSQL outbox, member faults")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lo, hi = (float(x) for x in args.gap.split(","))
    opts = SoakOptions(
        duration_s=args.duration, seed=args.seed,
        sources=tuple(s for s in args.sources.split(",") if s),
        kinds=tuple(k for k in args.kinds.split(",") if k) or None,
        n_keys=args.keys, rate=args.rate, gap_s=(lo, hi), disk_fault=not args.no_disk_fault,
        cluster=args.cluster, duplicate_window_s=args.duplicate_window,
        workdir=args.workdir, keep_workdir=args.keep or args.workdir is not None,
        group=args.group,
    )
    result = Soak(opts).run()
    print(render(result))
    print("SOAK " + summary_json(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
