"""``type: sql_poll`` — change capture by polling any SQL database through SQLAlchemy Core.

For legacy databases that offer no log we can read. Modules:

- :mod:`.config`: the strict config models (adapter block, one block per table);
- :mod:`.source`: SQLAlchemy engine, reflection and keyset reads (the only SQL);
- :mod:`.badrows`: rows whose text the driver cannot decode, sent as dead letters;
- :mod:`.values`, :mod:`.window`, :mod:`.diff`: pure logic (cursor encoding, the
  look-back window for out-of-order commits, row diffing);
- :mod:`.cursor_mode`: ``incrementing``, ``timestamp``, ``timestamp+incrementing``;
- :mod:`.diff_state`, :mod:`.diff_mode`: ``diff`` (hash state file, passes, deletes);
- :mod:`.adapter`: scheduling, batches and checkpoints, error mapping.

``mode: query`` polls a custom SELECT with any of the other modes.

"""

from __future__ import annotations

from cdc_bridge.adapters.contract import Adapter, AdapterConfig, AdapterContext, AdapterType
from cdc_bridge.adapters.sql_poll.config import PollTable, SqlPollConfig


def _factory(config: AdapterConfig, context: AdapterContext) -> Adapter:
    from cdc_bridge.adapters.sql_poll.adapter import SqlPollAdapter

    assert isinstance(config, SqlPollConfig)
    return SqlPollAdapter(config, context)


ADAPTER_TYPE = AdapterType("sql_poll", SqlPollConfig, _factory)

__all__ = ["ADAPTER_TYPE", "PollTable", "SqlPollConfig"]
