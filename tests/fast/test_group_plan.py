"""Group mode's pure logic: assignment, a member's round, the settings and URL options."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cdc_bridge.cli.group_status import render_group
from cdc_bridge.config import parse_config
from cdc_bridge.daemon.group_plan import assign, failover_bound_s, plan_round, rank
from cdc_bridge.daemon.instance import GROUP_HINT, SQLITE_HINT, Holder, state_dir_message
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.outbox.fence import RELAY_RESOURCE, Fence
from cdc_bridge.outbox.leases import LeaseRow, with_session_options

RESOURCES = ["erp", "shop", "files", RELAY_RESOURCE]


def lease(resource: str, owner: str | None, epoch: int, held: bool = True) -> LeaseRow:
    return LeaseRow(resource, owner, epoch, held, 1.0, 1.0, 5.0 if held else -1.0)


# -- assignment --------------------------------------------------------------------------


def test_assignment_is_deterministic_whatever_the_order_of_its_inputs() -> None:
    members = ["m-a", "m-b", "m-c"]
    first = assign(RESOURCES, members)
    for perm in itertools.permutations(members):
        assert assign(reversed(RESOURCES), perm) == first
    assert set(first) == set(RESOURCES) and set(first.values()) <= set(members)


def test_assignment_is_balanced_and_uses_every_member_when_it_can() -> None:
    for n in range(1, 7):
        members = [f"node-{i}" for i in range(n)]
        loads: dict[str, int] = {}
        for owner in assign(RESOURCES, members).values():
            loads[owner] = loads.get(owner, 0) + 1
        if n <= len(RESOURCES):
            assert max(loads.values()) - min(loads.values()) <= 1
        assert len(loads) == min(n, len(RESOURCES))


def test_three_resources_on_three_members_one_each() -> None:
    got = assign(["pg", "maria", RELAY_RESOURCE], ["a1", "b2", "c3"])
    assert sorted(got.values()) == ["a1", "b2", "c3"]


def test_no_members_no_assignment_and_a_lone_member_gets_everything() -> None:
    assert assign(RESOURCES, []) == {}
    assert set(assign(RESOURCES, ["solo"]).values()) == {"solo"}


def test_a_member_leaving_moves_only_what_it_had_or_what_balance_needs() -> None:
    resources = [f"r{i}" for i in range(12)]
    before = assign(resources, ["a", "b", "c", "d"])
    after = assign(resources, ["a", "b", "c"])
    moved = [r for r in resources if before[r] != after[r]]
    assert all(before[r] == "d" for r in moved) or len(moved) <= 6
    assert "d" not in after.values()


def test_rank_prefers_members_stably() -> None:
    assert rank("erp", ["x", "y", "z"]) == rank("erp", ["z", "y", "x"])


# -- a member's round ------------------------------------------------------------------


def test_round_renews_what_it_holds_and_acquires_what_is_free_and_assigned() -> None:
    assignment = {"erp": "me", "shop": "me", RELAY_RESOURCE: "other"}
    running = {"erp": Fence("erp", "me", 3)}
    leases = [lease("erp", "me", 3), lease("shop", None, 7, held=False),
              lease(RELAY_RESOURCE, "other", 2)]
    plan = plan_round("me", running, leases, assignment, ["me", "other"])
    assert plan.renew == [Fence("erp", "me", 3)]
    assert plan.acquire == ["shop"]
    assert plan.lost == [] and plan.handover == []


def test_round_never_acquires_a_lease_another_member_still_holds() -> None:
    plan = plan_round("me", {}, [lease("erp", "zombie", 4)], {"erp": "me"}, ["me"])
    assert plan.acquire == []
    expired = plan_round("me", {}, [lease("erp", "zombie", 4, held=False)], {"erp": "me"},
                         ["me"])
    assert expired.acquire == ["erp"]
    missing = plan_round("me", {}, [], {"erp": "me"}, ["me"])
    assert missing.acquire == ["erp"]


@pytest.mark.parametrize("row", [
    lease("erp", "me", 4),              # a newer epoch: taken over (and back) meanwhile
    lease("erp", "other", 4),           # another owner
    lease("erp", "me", 3, held=False),  # expired (a pause longer than the lease)
    None,                               # the row is gone
])
def test_round_stops_work_whose_lease_is_lost(row: LeaseRow | None) -> None:
    running = {"erp": Fence("erp", "me", 3)}
    plan = plan_round("me", running, [row] if row else [], {"erp": "me"}, ["me"])
    assert plan.lost == [Fence("erp", "me", 3)]
    assert plan.renew == [] and plan.acquire == []  # not re-acquired in the same round


def test_round_hands_over_to_a_live_member_only() -> None:
    running = {"erp": Fence("erp", "me", 3)}
    leases = [lease("erp", "me", 3)]
    plan = plan_round("me", running, leases, {"erp": "new"}, ["me", "new"])
    assert plan.handover == [Fence("erp", "me", 3)] and plan.renew == []
    dead_target = plan_round("me", running, leases, {"erp": "gone"}, ["me"])
    assert dead_target.renew == [Fence("erp", "me", 3)] and dead_target.handover == []


def test_failover_bound() -> None:
    assert failover_bound_s(10.0, 3.0) == 13.0


# -- settings, URLs, messages ------------------------------------------------------------


def test_group_settings_defaults_and_checks() -> None:
    cfg = parse_config("outbox: {url: 'postgresql://u@h/db'}\ngroup: {enabled: true}\n")
    assert (cfg.group.lease, cfg.group.renew_every, cfg.group.member_id) == (10.0, 3.0, None)
    with pytest.raises(ConfigError, match="renew_every"):
        parse_config("outbox: {url: 'postgresql://u@h/db'}\n"
                     "group: {enabled: true, lease: 4s, renew_every: 3s}\n")
    with pytest.raises(ConfigError, match="group mode needs a PostgreSQL outbox"):
        parse_config("group: {enabled: true}\n")
    with pytest.raises(ConfigError, match="member_id"):
        parse_config("outbox: {url: 'postgresql://u@h/db'}\n"
                     "group: {enabled: true, member_id: 'a b'}\n")


def test_session_options_are_added_to_the_url_keeping_the_others() -> None:
    url = with_session_options("postgresql://u@h/db?schema=x&options=-c%20work_mem%3D4MB",
                               {"idle_in_transaction_session_timeout": "5000"})
    query = parse_qs(urlsplit(url).query)
    assert query["schema"] == ["x"]
    assert query["options"] == ["-c work_mem=4MB -c idle_in_transaction_session_timeout=5000"]


def test_refusals_say_how_to_run_several_daemons() -> None:
    text = state_dir_message(Holder(1, "h", None), Path("/s"),
                             SQLITE_HINT)
    assert "stop it first; the SQLite outbox serves one daemon" in text
    assert "group.enabled: true" in GROUP_HINT


def test_status_lines_name_members_owners_epochs_and_ages() -> None:
    group = {"members": [{"member_id": "a", "host": "h1", "pid": 7, "live": True,
                          "heartbeat_age_s": 1.2},
                         {"member_id": "b", "host": "h2", "pid": 8, "live": False,
                          "heartbeat_age_s": 40.0}],
             "leases": [{"resource": "erp", "owner": "a", "epoch": 3, "age_s": 12.5,
                         "expires_in_s": 8.1},
                        {"resource": "_relay", "owner": None, "epoch": 2, "age_s": None,
                         "expires_in_s": None}]}
    lines = render_group(group, "a")
    assert lines[0] == "group: 1 live member(s), this daemon is a"
    assert "  member b: gone, pid 8 on h2, heartbeat 40.0s ago" in lines
    assert "  lease erp: a, epoch 3, held 12.5s, expires in 8.1s" in lines
    assert "  lease _relay: free (epoch 2)" in lines
