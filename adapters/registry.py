"""The registry of source types, found in the ``adapters/`` folder by their YAML ``type``.

Each source's own package (or module) registers itself with one line, naming its
config model and factory::

    ADAPTER_TYPE = AdapterType("sql_poll", SqlPollConfig, _factory)

This module imports every package of ``cdc_bridge.adapters`` and keeps those that
define ``ADAPTER_TYPE``; nothing else lists the sources. The config loader, the
generated reference, the README table and the conformance kit all read
:data:`REGISTRY`, so a new source needs no edit outside its own folder.
"""

from __future__ import annotations

import importlib
import pkgutil

from cdc_bridge.adapters.contract import Adapter, AdapterConfig, AdapterContext, AdapterType

__all__ = ["REGISTRY", "AdapterContext", "AdapterType", "create", "discover"]

#: Modules of this folder that are shared parts, not sources.
_SHARED = frozenset({"contract", "registry", "transform"})


def discover() -> dict[str, AdapterType]:
    """Every ``ADAPTER_TYPE`` under ``cdc_bridge.adapters``, by name, sorted."""
    import cdc_bridge.adapters as package

    found: dict[str, AdapterType] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _SHARED or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        kind = getattr(module, "ADAPTER_TYPE", None)
        if not isinstance(kind, AdapterType):
            continue
        if kind.name in found:
            raise RuntimeError(f"two sources register the type {kind.name!r}")
        found[kind.name] = kind
    return dict(sorted(found.items()))


REGISTRY: dict[str, AdapterType] = discover()


def create(config: AdapterConfig, context: AdapterContext) -> Adapter:
    return REGISTRY[config.type].factory(config, context)
