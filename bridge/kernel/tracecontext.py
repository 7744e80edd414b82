"""W3C trace context of an event, derived from its id alone (pure, no OpenTelemetry).

Every event carries a ``traceparent`` (https://www.w3.org/TR/trace-context/): in its
body, as the CloudEvents distributed-tracing extension attribute, and as the NATS
header of the same name. It is a function of the event id, so a re-read after a crash
gives the identical body and the same trace:

- trace id: the event id's 32 hex digits (a uuid5, so never all zeros);
- parent id: the 16 hex digits of the id's BLAKE2b-64 digest (the *capture span*: the
  bridge exports a span with exactly this id when tracing is on and the event is
  sampled, so the trace has its root);
- flags: ``01`` (sampled), or, with a sample ratio below 1, a decision taken from the
  trace id alone: its rightmost 56 bits (7 bytes, the part W3C Trace Context level 2
  and OpenTelemetry's consistent probability sampling take as the random part) at or
  above the rejection threshold ``(1 - ratio) * 2**56``. Not the older SDK
  ``TraceIdRatioBased`` rule over the low 64 bits: in a uuid the top bits of that half
  are the variant, constant, so it would sample all or nothing. Downstream services
  follow the flag (a parent-based sampler).

:func:`traceparent_in_body` finds the attribute near the start of a message body
without parsing it: the relay copies it into the header that way, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

#: The header (and CloudEvents attribute) name.
TRACEPARENT = "traceparent"
VERSION = "00"
_RANDOM_BITS = 56
_HEX = frozenset("0123456789abcdef")
_TRACE_ID = re.compile(r"(?!0{32})[0-9a-f]{32}")
_B2B = hashlib.blake2b
_MARK = b'"traceparent":"'
#: The attribute is looked for in this many leading bytes of a body (ours come first).
BODY_WINDOW = 256
_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2


class TraceParent(NamedTuple):
    trace_id: str
    span_id: str
    sampled: bool


def trace_id_of(event_id: str) -> str:
    """The trace id of an event: its id's hex digits (a non-UUID id is hashed to 32)."""
    tid = event_id.replace("-", "")
    if _TRACE_ID.fullmatch(tid):
        return tid
    tid = tid.lower()
    if _TRACE_ID.fullmatch(tid):
        return tid
    return _B2B(event_id.encode(), digest_size=16, person=b"cdc-trace").hexdigest()


def span_id_of(event_id: str) -> str:
    """The id of an event's capture span (the traceparent's parent id): never zero."""
    sid = _B2B(event_id.encode(), digest_size=8).hexdigest()
    return sid if sid != "0" * 16 else "0000000000000001"


def rejection_threshold(ratio: float) -> int:
    """Traces whose 56 random bits are below this are not sampled at ``ratio``."""
    return round((1.0 - min(1.0, max(0.0, ratio))) * (1 << _RANDOM_BITS))


def sampled(trace_id: str, ratio: float) -> bool:
    """Whether a trace with this id is sampled at ``ratio`` (deterministic)."""
    if ratio >= 1.0:
        return True
    return int(trace_id[18:32], 16) >= rejection_threshold(ratio)


def traceparent(event_id: str, ratio: float = 1.0) -> str:
    """``00-<trace id>-<capture span id>-<flags>`` of a message with this id."""
    tid = trace_id_of(event_id)
    flags = "01" if ratio >= 1.0 or sampled(tid, ratio) else "00"
    return f"00-{tid}-{span_id_of(event_id)}-{flags}"


def event_traceparent(event_id: str, ratio: float = 1.0) -> str:
    """:func:`traceparent` for an id made by :func:`cdc_bridge.kernel.events.event_id`
    (a lowercase uuid): the same value, without checking the id (once per event on the
    capture path)."""
    tid = event_id.replace("-", "")
    sid = _B2B(event_id.encode(), digest_size=8).hexdigest()
    if sid == "0000000000000000":
        sid = "0000000000000001"
    if ratio >= 1.0:
        return f"00-{tid}-{sid}-01"
    return f"00-{tid}-{sid}-{'01' if sampled(tid, ratio) else '00'}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The parts of a version-00 ``traceparent``; ``None`` if it is not a valid one."""
    if not value or len(value) < _LENGTH:
        return None
    value = value.strip().lower()
    parts = value.split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    version, tid, sid, flags = parts[:4]
    if version == VERSION and len(parts) != 4:
        return None
    if (len(tid) != 32 or len(sid) != 16 or len(flags) != 2
            or not _HEX.issuperset(version + tid + sid + flags)
            or tid == "0" * 32 or sid == "0" * 16):
        return None
    return TraceParent(tid, sid, bool(int(flags, 16) & 1))


def traceparent_in_body(body: bytes) -> str | None:
    """The ``traceparent`` attribute of a JSON body, if it is among its first bytes."""
    at = body.find(_MARK, 0, BODY_WINDOW)
    if at < 0:
        return None
    start = at + len(_MARK)
    end = start + _LENGTH
    if body[end:end + 1] != b'"':
        return None
    try:
        value = body[start:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    # (a cheap shape check: this runs per publish; :func:`parse_traceparent` is thorough)
    return value if value[2] == value[35] == value[52] == "-" else None


def with_traceparent(body: bytes, value: str) -> bytes:
    """``body`` (a JSON object) with a leading ``traceparent`` attribute, unless it has
    one among its first bytes already or is not a JSON object."""
    if not body.startswith(b"{") or body.find(_MARK, 0, BODY_WINDOW) >= 0:
        return body
    rest = body[1:].lstrip()
    sep = b"" if rest.startswith(b"}") else b","
    return b'{"traceparent":"' + value.encode("ascii") + b'"' + sep + rest
