"""Per-table column rules shared by every adapter: include/exclude columns and masking.

Config (inside a table block of any adapter)::

    columns:
      exclude: [internal_notes]          # dropped from before/after
      mask: [email, phone]               # replaced by a salted hash
      mask_salt: ${MASK_SALT}            # secret; same salt -> same hash (joinable)

Masking is ``sha256(salt || value)`` as hex, with a ``sha256:`` prefix so consumers can
tell a masked value from a real one; ``None`` stays ``None``. Key columns may be masked
too (the event key then carries the hash, which still orders and deduplicates per key).
Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from cdc_bridge.kernel.events import dumps
from cdc_bridge.kernel.model import StrictModel


class ColumnRules(StrictModel):
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    mask: list[str] = Field(default_factory=list)
    mask_salt: str = Field(default="", repr=False)

    def is_noop(self) -> bool:
        return self.include is None and not self.exclude and not self.mask


def mask_value(value: Any, salt: str) -> str | None:
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else (
        value.encode() if isinstance(value, str) else dumps(value))
    return "sha256:" + hashlib.sha256(salt.encode() + raw).hexdigest()


def apply_rules(row: Mapping[str, Any] | None, rules: ColumnRules | None) -> dict[str, Any] | None:
    """The row as it should appear in an event (``None`` stays ``None``)."""
    if row is None:
        return None
    if rules is None or rules.is_noop():
        return dict(row)
    out: dict[str, Any] = {}
    include = set(rules.include) if rules.include is not None else None
    exclude = set(rules.exclude)
    mask = set(rules.mask)
    for name, value in row.items():
        if name in exclude or (include is not None and name not in include):
            continue
        out[name] = mask_value(value, rules.mask_salt) if name in mask else value
    return out
