"""The sources: one package per source type; the contract is :mod:`.contract`.

Each source registers itself in its own package (``ADAPTER_TYPE``) and
:mod:`.registry` finds it; :mod:`.transform` holds the column rules every source shares.
Sources import only :mod:`cdc_bridge.kernel` and this folder's shared parts.
"""
