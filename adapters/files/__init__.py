"""``type: files``: legacy exports and drop folders as change events.

Layout: :mod:`.config` (the strict config model), :mod:`.formats` (pure parsers: csv,
jsonl, fixed width), :mod:`.reader` (bounded record reading), :mod:`.identity` (file
identity across renames), :mod:`.session` (one file being read, events and dead
letters), :mod:`.modes` (drop, tail, snapshot) and :mod:`.adapter` (the registered
adapter type).
"""

from __future__ import annotations

from cdc_bridge.adapters.contract import Adapter, AdapterConfig, AdapterContext, AdapterType
from cdc_bridge.adapters.files.config import FilesConfig


def _factory(config: AdapterConfig, context: AdapterContext) -> Adapter:
    from cdc_bridge.adapters.files.adapter import FilesAdapter

    assert isinstance(config, FilesConfig)
    return FilesAdapter(config, context)


ADAPTER_TYPE = AdapterType("files", FilesConfig, _factory)
