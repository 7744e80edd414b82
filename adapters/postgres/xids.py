"""PostgreSQL's 32-bit transaction ids: masking and wrap-around order. Pure."""

from __future__ import annotations

XID_MASK = 0xFFFF_FFFF


def precedes(a: int, b: int) -> bool:
    """32-bit transaction id ``a`` is older than ``b`` (modulo-2^32, like PostgreSQL)."""
    return ((a - b) & XID_MASK) >= 0x8000_0000
