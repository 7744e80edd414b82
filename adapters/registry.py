"""The one explicit registry of adapter types, keyed by their YAML ``type`` name.

Each adapter module exposes ``ADAPTER_TYPE``: its config model (with ``type`` as a
``Literal`` so the config loader can discriminate) and a factory. Adding a source type
means writing its module and adding one line here.
"""

from __future__ import annotations

from adapters.base import Adapter, AdapterConfig, AdapterContext, AdapterType

__all__ = ["REGISTRY", "AdapterContext", "AdapterType", "create"]


def _load() -> dict[str, AdapterType]:
    from adapters import outbox_table, sql_poll
    from adapters.files import adapter as files
    from adapters.postgres import adapter as postgres

    types = [sql_poll.ADAPTER_TYPE, postgres.ADAPTER_TYPE, files.ADAPTER_TYPE,
             outbox_table.ADAPTER_TYPE]
    return {t.name: t for t in types}


REGISTRY: dict[str, AdapterType] = _load()


def create(config: AdapterConfig, context: AdapterContext) -> Adapter:
    return REGISTRY[config.type].factory(config, context)
