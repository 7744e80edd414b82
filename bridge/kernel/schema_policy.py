"""What a source does when a table's schema changes in a way consumers cannot follow.

Every adapter block takes ``schema_changes:`` (docs/schemas.md)::

    schema_changes:
      on_breaking: pause            # continue (default) | pause
      breaking: [breaking]          # the verdicts that count as breaking
      tables: {public.orders: continue}   # per table: continue | pause

``continue``: the new version flows; the change is logged at WARNING and counted
(``cdc_schema_changes_total{verdict}``). ``pause``: the schema-change event is published
(so consumers learn of the change), and the table's row events from then on are held in
the outbox, in order, unpublished, while the other tables keep flowing, until
``cdc-bridge schema accept ADAPTER TABLE`` (or ``POST /schema/accept``) releases them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cdc_bridge.kernel.model import StrictModel
from cdc_bridge.kernel.schemas import Verdict

OnBreaking = Literal["continue", "pause"]


def _only_breaking() -> list[Verdict]:
    return ["breaking"]


class SchemaPolicy(StrictModel):
    """Per adapter (``schema_changes:``): what a breaking schema change does."""

    #: ``continue``: publish the new version and say so (logs, metrics); ``pause``: hold
    #: the table's events in the outbox until ``cdc-bridge schema accept``.
    on_breaking: OnBreaking = "continue"
    #: Which verdicts count as breaking. ``breaking`` alone by default; add ``backward``
    #: to also hold changes that consumers written for the old version cannot read (a
    #: NOT NULL column dropped, a column that may now be null).
    breaking: list[Verdict] = Field(default_factory=_only_breaking, min_length=1)
    #: Per-table overrides of ``on_breaking``, by ``schema.table`` or table name.
    tables: dict[str, OnBreaking] = {}

    def action(self, schema: str | None, table: str, verdict: Verdict) -> OnBreaking:
        """What to do with a change of ``verdict`` to ``schema.table``."""
        if verdict not in self.breaking:
            return "continue"
        qualified = f"{schema}.{table}" if schema else table
        return self.tables.get(qualified, self.tables.get(table, self.on_breaking))
