"""Group mode's pure decisions: who should own what, and what this member does next.

Assignment (:func:`assign`) is deterministic from the set of live member ids alone, so
every member computes the same answer from the same table without talking to the
others. It is rendezvous hashing with a bound on the load: each resource ranks the
members by ``sha256(member + resource)``; resources are placed in name order, each on
the best-ranked member still below its share (``resources // members``, one more for
the first ``resources % members`` members to reach that). A member joining or leaving
moves few resources, and loads differ by one at most (with three members and three
resources, one each).

A round (:func:`plan_round`) compares what this member runs with the lease table and
the assignment: renew what it runs and still holds, stop what it lost (another owner,
or expired), hand over what is assigned to another live member (stop first, release
after: the old owner finishes and commits its batch before the new one starts), and
acquire what is assigned to it and free (or expired). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cdc_bridge.outbox.fence import Fence
from cdc_bridge.outbox.leases import LeaseRow


def _weight(member: str, resource: str) -> int:
    digest = hashlib.sha256(f"{member}\x00{resource}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rank(resource: str, members: Iterable[str]) -> list[str]:
    """Members in ``resource``'s order of preference (highest weight first)."""
    return sorted(members, key=lambda m: (_weight(m, resource), m), reverse=True)


def assign(resources: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    """Resource -> member, balanced (loads differ by one at most); empty without
    members."""
    live = sorted(set(members))
    names = sorted(set(resources))
    if not live:
        return {}
    base, extra = divmod(len(names), len(live))
    load = dict.fromkeys(live, 0)
    full = 0  # members already at base + 1 (at most ``extra`` of them)
    out: dict[str, str] = {}
    for resource in names:
        for member in rank(resource, live):
            if load[member] < (base + 1 if full < extra else base):
                out[resource] = member
                load[member] += 1
                full += load[member] == base + 1
                break
    return out


@dataclass(frozen=True, slots=True)
class Round:
    """What one member does in one round, in this order: stop the ``lost`` (no
    release: they are not ours any more), renew ``renew``, stop then release the
    ``handover``, try to acquire ``acquire``."""

    renew: list[Fence] = field(default_factory=list)
    lost: list[Fence] = field(default_factory=list)
    handover: list[Fence] = field(default_factory=list)
    acquire: list[str] = field(default_factory=list)


def plan_round(me: str, running: Mapping[str, Fence], leases: Iterable[LeaseRow],
               assignment: Mapping[str, str], live: Iterable[str]) -> Round:
    """This member's round; ``running``: resource -> fence of the work it runs now."""
    by_resource = {row.resource: row for row in leases}
    live_set = set(live)
    renew: list[Fence] = []
    lost: list[Fence] = []
    handover: list[Fence] = []
    for resource, fence in sorted(running.items()):
        row = by_resource.get(resource)
        if row is None or not row.held or row.owner != me or row.epoch != fence.epoch:
            lost.append(fence)
            continue
        target = assignment.get(resource)
        if target is not None and target != me and target in live_set:
            handover.append(fence)
        else:
            renew.append(fence)
    acquire = []
    for resource, target in sorted(assignment.items()):
        if target != me or resource in running:
            continue
        row = by_resource.get(resource)
        if row is None or not row.held:
            acquire.append(resource)
    return Round(renew, lost, handover, acquire)


def failover_bound_s(lease_s: float, renew_every_s: float) -> float:
    """The longest a resource stays unowned after its owner died silently: the lease
    runs out, then the next round of the new owner (at most ``renew_every`` later)."""
    return lease_s + renew_every_s
