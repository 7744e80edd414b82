"""The one explicit registry of adapter types, keyed by their YAML ``type`` name.

Each adapter module exposes ``ADAPTER_TYPE``: its config model (with ``type`` as a
``Literal`` so the config loader can discriminate) and a factory. Adding a source type
means writing its module and adding one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapters.base import Adapter, AdapterConfig


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What the daemon hands every adapter besides its own config."""

    state_dir: Path
    subject_prefix: str = "cdc"


@dataclass(frozen=True, slots=True)
class AdapterType:
    name: str
    config_model: type[AdapterConfig]
    factory: Callable[[AdapterConfig, AdapterContext], Adapter]


def _load() -> dict[str, AdapterType]:
    from adapters import sql_poll

    types = [sql_poll.ADAPTER_TYPE]
    from adapters.files.adapter import ADAPTER_TYPE as files_type; types.append(files_type)  # noqa: E702, I001
    from adapters.postgres.adapter import ADAPTER_TYPE as pg_type; types.append(pg_type)  # noqa: E702, I001
    from adapters.outbox_table import ADAPTER_TYPE as outbox_table_type; types.append(outbox_table_type)  # noqa: E501, E702, I001
    return {t.name: t for t in types}


REGISTRY: dict[str, AdapterType] = _load()


def create(config: AdapterConfig, context: AdapterContext) -> Adapter:
    return REGISTRY[config.type].factory(config, context)
