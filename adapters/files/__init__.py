"""``type: files``: legacy exports and drop folders as change events.

Layout: :mod:`.config` (the strict config model), :mod:`.formats` (pure parsers: csv,
jsonl, fixed width), :mod:`.reader` (bounded record reading), :mod:`.identity` (file
identity across renames), :mod:`.session` (one file being read, events and dead
letters), :mod:`.modes` (drop, tail, snapshot) and :mod:`.adapter` (the registered
adapter type).
"""
