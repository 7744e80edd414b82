"""The fast lane: pure logic, no servers (see tests/conftest.py).

Property tests take their example counts from :func:`examples`: a tenth by default, so
the lane stays quick at a desk, and the full count when ``CDC_FUZZ=thorough`` (what
``scripts/test.sh`` sets for the whole run, as CI does).
"""

from __future__ import annotations

import os


def examples(thorough: int) -> int:
    """Hypothesis ``max_examples``: ``thorough`` with ``CDC_FUZZ=thorough``, else a tenth."""
    if os.environ.get("CDC_FUZZ") == "thorough":
        return thorough
    return max(30, thorough // 10)
