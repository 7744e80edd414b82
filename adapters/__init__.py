"""Source adapters, one module per source type, registered in :mod:`adapters.registry`."""
