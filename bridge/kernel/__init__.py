"""The kernel: what every stage shares, and nothing else.

Events and their ids and subjects (:mod:`.events`), the error tree (:mod:`.errors`), the
batch a source hands the outbox (:mod:`.batch`), header names on the wire
(:mod:`.wire`), the outbox-table contract shared by ``write_event`` and its source
(:mod:`.outbox_table`), config building blocks (:mod:`.model`) and the one back-off
policy (:mod:`.backoff`).

Rule: the kernel imports nothing of ours, and no database driver, HTTP server or
metrics library (``tests/fast/test_layering.py`` checks it). Submodules are imported
one by one; this file imports none of them.
"""
