"""Modes of the files adapter: ``drop`` (each new file once), ``tail`` (a growing file),
``snapshot`` (full extracts compared by key)."""
