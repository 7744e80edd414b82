"""Logging set-up: human-readable text or JSON lines with fields, secrets redacted.

:class:`RedactingFilter` rewrites every record's final message and its string fields:
passwords inside URLs (``scheme://user:secret@host``) and any registered secret value
(from the config: passwords, tokens, interpolated environment values) become ``***``.
It is installed on the root handler, so no code path can log a secret by mistake.

Fields: JSON lines (python-json-logger) carry ``ts``, ``level``, ``logger``, ``msg``, and
every field a log call passes in ``extra`` (``table``, ``event_id``, ``position``...)
as its own key. :func:`bind_log_fields` adds fields to every record logged in the
current asyncio task and the threads it starts (:mod:`cdc_bridge.kernel.logfields`): the
daemon binds ``adapter`` in each adapter's task, so every line an adapter logs carries it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from cdc_bridge.kernel.logfields import bind_log_fields, bound_log_fields

__all__ = ["ContextFields", "JsonFormatter", "RedactingFilter", "bind_log_fields",
           "redact_url", "setup_logging"]

_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@\s]+@")


def redact_url(text: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (anywhere in text)."""
    return _URL_PASSWORD.sub(lambda m: m.group("pre") + "***@", text)


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        text = redact_url(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = self.redact(message)
        record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


#: A plain record's attributes: anything else on a record is a field from ``extra``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime"}

class ContextFields(logging.Filter):
    """Copies the fields bound with :func:`bind_log_fields` onto each record (a field
    passed in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in bound_log_fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level`` (lower case),
    ``logger``, ``msg``, ``exc`` when there is a traceback, then the record's fields."""

    def __init__(self) -> None:
        super().__init__("{levelname}{name}{message}{exc_info}", style="{",
                         rename_fields={"levelname": "level", "name": "logger",
                                        "message": "msg", "exc_info": "exc"},
                         timestamp="ts", json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()
        log_data.pop("exc", None)
        log_data.pop("exc_text", None)
        if record.exc_text:  # the traceback as RedactingFilter left it
            log_data["exc"] = record.exc_text
        ordered = {"ts": log_data.pop("ts")}
        ordered.update(log_data)
        log_data.clear()
        log_data.update(ordered)


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFields())
    handler.addFilter(RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("nats").setLevel(max(logging.getLogger().level, logging.WARNING))
