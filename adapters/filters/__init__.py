"""Row filters per table: one small expression language for every source.

``filter: "status in ('open', 'paid') and amount >= 100"`` next to ``columns`` in a
table block. Parsed with Lark into a typed tree (:mod:`.nodes`, :mod:`.parse`), checked
at config load (:data:`FilterText`), then either pushed down into the source's own
query (:mod:`.sql`: SQLAlchemy for ``sql_poll``, PostgreSQL text for publication row
filters and snapshots) or compiled into a closure run by the bridge
(:mod:`.evaluate`), with one rule for updates that cross the filter
(:mod:`.rowfilter`). See docs/filters.md.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from cdc_bridge.adapters.filters.parse import FilterSyntaxError
from cdc_bridge.adapters.filters.rowfilter import Routed, RowFilter, row_filter

__all__ = ["FilterSyntaxError", "FilterText", "Routed", "RowFilter", "row_filter"]


def _check(text: str) -> str:
    row_filter(text)  # FilterSyntaxError is a ValueError: pydantic reports it at the key
    return text


#: A ``filter:`` value in a config model: parsed when the config is loaded.
FilterText = Annotated[str, AfterValidator(_check)]
