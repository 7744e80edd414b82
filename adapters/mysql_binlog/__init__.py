"""MariaDB/MySQL binary log adapter (``type: mysql_binlog``): every change, deletes included.

Modules, from the wire up:

* :mod:`.config` — the strict config model.
* :mod:`.values` — binlog and ``SELECT`` values to their JSON form (pure).
* :mod:`.position` — binlog positions, the checkpoint, the snapshot-resume filter (pure).
* :mod:`.changes` — binlog records to change events, transactions, ids (pure).
* :mod:`.setup` — server checks with the statement fixing each problem; table metadata.
* :mod:`.snapshot` — the consistent, chunked, resumable ``op: r`` copy.
* :mod:`.stream` — mysql-replication in a thread, records to the event loop.
* :mod:`.adapter` — the Adapter: decides snapshot/stream, wires it all.
"""

from __future__ import annotations

from cdc_bridge.adapters.contract import Adapter, AdapterConfig, AdapterContext, AdapterType
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig


def _factory(config: AdapterConfig, context: AdapterContext) -> Adapter:
    from cdc_bridge.adapters.mysql_binlog.adapter import MysqlBinlogAdapter

    assert isinstance(config, MysqlBinlogConfig)
    return MysqlBinlogAdapter(config, context)


ADAPTER_TYPE = AdapterType("mysql_binlog", MysqlBinlogConfig, _factory)
