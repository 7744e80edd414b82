"""Upcasters: bring an event of an older table version to the shape a service is written for.

A service registers one function per table and version step; each takes the decoded
CloudEvent (a dict, its own copy: change it in place or build a new one) of version N
and returns it in the shape of version N + 1::

    upcasters = Upcasters()

    @upcasters.register("shop", "public.orders", from_version=1)
    def v1_to_v2(event: dict) -> dict:
        for image in ("before", "after"):
            row = event["data"][image]
            if row is not None:
                row["currency"] = "EUR"  # the column v2 added
        return event

The chain of a table runs from its lowest ``from_version`` up to its *target*: the
version after its highest upcaster, or the one :meth:`Upcasters.target` declares.
:meth:`Upcasters.upcast` applies the steps from the event's
``data.source.schema_version`` up to the target, setting ``schema_version`` and
``dataschema`` after each; an event at or past the target, without a version, or of a
table without upcasters is left alone. A step is called for every op (``c``, ``u``,
``d``, ``r``, ``t``): ``before`` may be null, or hold only the key for a delete.

Errors: a second upcaster for the same step, or one at or past a declared target, is a
``ValueError`` at registration; a gap in a chain (steps 1 and 3, none from 2) is an
:class:`UpcastError` from :meth:`Upcasters.check`, which the consumer calls when it is
built (and :meth:`upcast` at first use); an event older than a chain's first step
cannot be upcast (:class:`UpcastError`: the consumer dead-letters it with the reason).

Pure: no I/O; :mod:`cdc_bridge.client.evolution` calls it in the consumer's path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.kernel.schemas import parse_schema_uri, schema_uri, table_ref

#: One step: the CloudEvent of version N in, the CloudEvent of version N + 1 out.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UpcastError(Exception):
    """A chain with a gap, or an event the chain cannot bring to its target."""


@dataclass(slots=True)
class _Chain:
    steps: dict[int, Upcaster] = field(default_factory=dict)
    declared: int | None = None

    @property
    def target(self) -> int:
        if self.declared is not None:
            return self.declared
        return max(self.steps) + 1 if self.steps else 0

    def missing(self) -> list[int]:
        """The steps (``from`` versions) missing between the first step and the target."""
        if not self.steps:
            return []
        return [v for v in range(min(self.steps), self.target) if v not in self.steps]


def _check_table(table: str) -> str:
    if "." not in table:
        raise ValueError(f"name the table as <schema>.<table> ('_.{table}' for a source "
                         f"without schemas), not {table!r}")
    return table


class Upcasters:
    """Upcasters of a service, per ``(adapter, "<schema>.<table>")`` and version step."""

    def __init__(self) -> None:
        self._chains: dict[tuple[str, str], _Chain] = {}
        self._checked = False

    def register(self, adapter: str, table: str, from_version: int
                 ) -> Callable[[Upcaster], Upcaster]:
        """Decorator: the function brings ``table``'s events of ``from_version`` to the next."""
        def decorate(fn: Upcaster) -> Upcaster:
            self.add(adapter, table, from_version, fn)
            return fn
        return decorate

    def add(self, adapter: str, table: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` as the step from ``from_version`` (see :meth:`register`)."""
        if not isinstance(from_version, int) or from_version < 1:
            raise ValueError(f"from_version must be a version number (1 or more), "
                             f"not {from_version!r}")
        chain = self._chains.setdefault((adapter, _check_table(table)), _Chain())
        if from_version in chain.steps:
            raise ValueError(f"{adapter} {table}: an upcaster from v{from_version} is "
                             f"registered already ({_name(chain.steps[from_version])})")
        if chain.declared is not None and from_version >= chain.declared:
            raise ValueError(f"{adapter} {table}: an upcaster from v{from_version} goes past "
                             f"the declared target v{chain.declared}")
        chain.steps[from_version] = fn
        self._checked = False

    def target(self, adapter: str, table: str, version: int) -> None:
        """Declare the version ``table``'s events are brought to (default: the version
        after the highest upcaster)."""
        chain = self._chains.setdefault((adapter, _check_table(table)), _Chain())
        beyond = [v for v in chain.steps if v >= version]
        if beyond:
            raise ValueError(f"{adapter} {table}: the upcaster from v{max(beyond)} goes past "
                             f"the target v{version}")
        chain.declared = version
        self._checked = False

    def target_of(self, adapter: str, table: str) -> int | None:
        """The version ``table``'s events are brought to; ``None``: no upcasters for it."""
        chain = self._chains.get((adapter, table))
        return chain.target if chain is not None else None

    def tables(self) -> list[tuple[str, str]]:
        return sorted(self._chains)

    def check(self) -> None:
        """:class:`UpcastError` naming every missing step of every chain."""
        gaps = [f"{adapter} {table}: no upcaster from "
                + ", ".join(f"v{v}" for v in chain.missing())
                + f" (chain v{min(chain.steps)} -> v{chain.target})"
                for (adapter, table), chain in sorted(self._chains.items())
                if chain.missing()]
        if gaps:
            raise UpcastError("missing links in upcaster chains: " + "; ".join(gaps))
        self._checked = True

    def needs(self, adapter: str, table: str, version: int | None) -> bool:
        """Whether an event of ``table`` at ``version`` is older than its target."""
        if version is None or not self._chains:
            return False
        chain = self._chains.get((adapter, table))
        return chain is not None and version < chain.target

    def upcast(self, ce: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``ce`` brought to its table's target, and the number of steps applied."""
        if not self._checked:
            self.check()
        data = ce.get("data")
        src = data.get("source") if isinstance(data, dict) else None
        if not isinstance(src, dict):
            return ce, 0
        adapter, schema, table = str(src.get("adapter", "")), src.get("schema"), \
            str(src.get("table", ""))
        version = src.get("schema_version")
        ref = table_ref(schema, table)
        if not isinstance(version, int) or not self.needs(adapter, ref, version):
            return ce, 0
        chain = self._chains[(adapter, ref)]
        steps = 0
        while version < chain.target:
            fn = chain.steps.get(version)
            if fn is None:
                raise UpcastError(f"{adapter} {ref}: event of v{version} is older than the "
                                  f"first upcaster (from v{min(chain.steps, default=0)}); "
                                  f"cannot bring it to v{chain.target}")
            out = fn(ce)
            if not isinstance(out, dict) or not isinstance(out.get("data"), dict):
                raise UpcastError(f"{adapter} {ref}: upcaster {_name(fn)} (v{version}) did "
                                  "not return a CloudEvent dict with data")
            version += 1
            _stamp(out, adapter, schema, table, version)
            ce = out
            steps += 1
        return ce, steps


def _stamp(ce: dict[str, Any], adapter: str, schema: str | None, table: str,
           version: int) -> None:
    """Say in ``ce`` that it is now of ``version`` (``schema_version``, ``dataschema``)."""
    data = ce["data"]
    src = data.get("source")
    if not isinstance(src, dict):
        src = data["source"] = {"adapter": adapter, "schema": schema, "table": table}
    src["schema_version"] = version
    uri = ce.get("dataschema")
    parsed = parse_schema_uri(uri) if isinstance(uri, str) else None
    if parsed is not None:
        ce["dataschema"] = schema_uri(parsed[0], adapter, schema, table, version)


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or fn)
