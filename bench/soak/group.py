"""Group mode in the soak (``--group N``): N bridges on one PostgreSQL outbox, faults on
members.

The outbox gets a PostgreSQL server of its own; each member reaches it through a proxy
of its own, so one member's path can be refused alone. Kinds (docs/group.md):

- ``kill9:member``: SIGKILL one member (drawn by the seeded RNG), restart it on heal;
- ``stop:member``: SIGSTOP one member for longer than the lease (its leases are taken
  over; once resumed it must commit nothing, notice and rejoin), SIGCONT on heal;
- ``refuse:member-outbox``: refuse one member's connections to the outbox for longer
  than the lease, then heal.

The soak's recovery time (heal -> every source's probe in the stream) and its stream
verification are unchanged: every change once, in order, nothing lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.soak.faults import Fault
from bench.soak.proxy import FaultProxy
from tests.helpers import BridgeProcess

log = logging.getLogger("soak.group")

#: The members' lease (the default): the pause and refusal faults hold longer.
LEASE_S = 10.0


class Members:
    """The bridges of the group, which of them a fault holds down, and their faults."""

    def __init__(self, configs: list[Path], logs: list[Path], proxies: list[FaultProxy],
                 rng: random.Random) -> None:
        self.procs = [BridgeProcess(c, lg) for c, lg in zip(configs, logs, strict=True)]
        self.proxies = proxies
        self.rng = rng
        #: Members a fault keeps down on purpose (not restarted by :meth:`check`).
        self.down: set[int] = set()

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def check(self, unexpected: Callable[[str], None]) -> None:
        """Restart any member that exited on its own (and report it)."""
        for i, p in enumerate(self.procs):
            if i not in self.down and not p.alive():
                code = p.proc.returncode if p.proc else None
                unexpected(f"member b{i} exit code {code}")
                log.warning("member b%d exited on its own (code %s); restarting", i, code)
                p.start()

    def faults(self) -> list[Fault]:
        picked = [0]

        def pick() -> int:
            picked[0] = self.rng.randrange(len(self.procs))
            return picked[0]

        def kill() -> None:
            i = pick()
            self.down.add(i)
            self.procs[i].kill9()

        def restart() -> None:
            self.procs[picked[0]].start()
            self.down.discard(picked[0])

        def signal_member(sig: signal.Signals) -> Callable[[], None]:
            def send() -> None:
                i = pick() if sig == signal.SIGSTOP else picked[0]
                proc = self.procs[i].proc
                if proc is not None and proc.poll() is None:
                    os.kill(proc.pid, sig)
            return send

        def refuse() -> None:
            self.proxies[pick()].refuse()

        def past_lease(rng: random.Random) -> float:
            return LEASE_S + rng.uniform(2.0, 4.0)

        return [
            Fault("kill9:member", kill, restart, lambda rng: rng.uniform(0.0, 2.0)),
            Fault("stop:member", signal_member(signal.SIGSTOP), signal_member(signal.SIGCONT),
                  past_lease),
            Fault("refuse:member-outbox", refuse, lambda: self.proxies[picked[0]].heal(),
                  past_lease),
        ]

    def terminate(self, timeout_s: float) -> int:
        """SIGTERM every member; the worst exit code (0 when all stopped cleanly)."""
        codes = [p.terminate(timeout_s) for p in self.procs]
        return max(codes, key=abs)

    def kill(self) -> None:
        for p in self.procs:
            if p.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.proc.pid, signal.SIGCONT)
            if p.alive():
                p.kill9()

    def logs(self) -> str:
        return "".join(p.log() for p in self.procs)


def member_settings(i: int, outbox_port: int, work: Path) -> dict[str, Any]:
    """The config keys of member ``i``: its state_dir, the outbox through its proxy, the
    group block."""
    return {
        "state_dir": str(work / f"state-b{i}"),
        "outbox": {"url": f"postgresql://postgres@127.0.0.1:{outbox_port}/postgres",
                   "poll_interval": "200ms"},
        "group": {"enabled": True, "member_id": f"b{i}"},
    }
