"""A table's shape as events show it: the column rules applied to its columns. Pure.

Sources describe a table by its columns (:class:`~cdc_bridge.kernel.shapes.TableShape`);
the events carry row images after the table's column rules
(:mod:`cdc_bridge.adapters.transform`): excluded columns (or those an ``include`` leaves
out) are not there, masked ones are ``sha256:...`` strings (null stays null). The shape
of the table must say the same, so it goes through :func:`ruled_shape` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.shapes import ColumnShape, TableShape


def ruled_columns(columns: Iterable[ColumnShape], rules: ColumnRules | None
                  ) -> list[ColumnShape]:
    """``columns`` as a row image shows them after ``rules`` (order kept)."""
    if rules is None or rules.is_noop():
        return list(columns)
    include = set(rules.include) if rules.include is not None else None
    exclude = set(rules.exclude)
    mask = set(rules.mask)
    out: list[ColumnShape] = []
    for c in columns:
        if c.name in exclude or (include is not None and c.name not in include):
            continue
        out.append(dataclasses.replace(c, json_type="string", format=None)
                   if c.name in mask else c)
    return out


def ruled_shape(columns: Iterable[ColumnShape], key: Iterable[str],
                rules: ColumnRules | None) -> TableShape:
    """The :class:`TableShape` of a table with ``columns`` and ``key`` under ``rules``
    (the key names the source's key columns, as the events' ``key`` does)."""
    return TableShape.of(ruled_columns(columns, rules), key)
