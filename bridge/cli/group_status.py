"""``cdc-bridge status`` in group mode: the members and who holds which lease.

Read from the outbox database itself (:mod:`cdc_bridge.outbox.leases`), so the answer
is the same from any machine, whether or not a daemon runs on this one. Ages are the
database's. Pure rendering is separate from the one read.
"""

from __future__ import annotations

from typing import Any

from cdc_bridge.config import BridgeConfig
from cdc_bridge.outbox.base import StoreUnavailable
from cdc_bridge.outbox.leases import LeaseDb


def read_group(config: BridgeConfig) -> dict[str, Any] | None:
    """Members and leases as plain data; ``None`` outside group mode."""
    if not config.group.enabled:
        return None
    db = LeaseDb(config.outbox_url(), application_name="cdc-bridge status")
    try:
        rows = db.rows()
    except StoreUnavailable as e:
        return {"error": str(e), "members": [], "leases": []}
    finally:
        db.close()
    return rows.as_dict()


def render_group(group: dict[str, Any], me: str | None) -> list[str]:
    """Text lines: one per member, then one per lease."""
    if group.get("error"):
        return [f"group: {group['error']}"]
    live = [m for m in group["members"] if m["live"]]
    lines = [f"group: {len(live)} live member(s)" + (f", this daemon is {me}" if me else "")]
    for m in group["members"]:
        state = "live" if m["live"] else "gone"
        lines.append(f"  member {m['member_id']}: {state}, pid {m['pid']} on {m['host']}, "
                     f"heartbeat {m['heartbeat_age_s']}s ago")
    for r in group["leases"]:
        if r["owner"] is None:
            lines.append(f"  lease {r['resource']}: free (epoch {r['epoch']})")
        else:
            lines.append(f"  lease {r['resource']}: {r['owner']}, epoch {r['epoch']}, "
                         f"held {r['age_s']}s, expires in {r['expires_in_s']}s")
    return lines
