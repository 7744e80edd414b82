"""Structured log fields bound to the current task or thread (``adapter``, ``table``...).

:func:`bind_log_fields` adds fields to every record logged afterwards in the current
context: an asyncio task and what it runs in threads through :func:`asyncio.to_thread`
(or ``run_in_executor`` with a copied context). The daemon's log handler copies them
onto each record (``cdc_bridge.daemon.logs``), so JSON lines carry them as keys. Plain
``contextvars``: sources can bind fields without knowing how logs are written.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

#: Replaced, never mutated: a context copied from another keeps the dict it had.
_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "log_fields", default=None)


def bind_log_fields(**fields: Any) -> None:
    """Add ``fields`` to every record logged from now on in this context; call it at the
    top of a task, or in a function run with a copied context."""
    _fields.set({**(_fields.get() or {}), **fields})


def bound_log_fields() -> Mapping[str, Any]:
    """The fields bound in the current context."""
    return _fields.get() or {}
