"""The daemon: runs every source and the relay, supervised, and serves operations.

:mod:`.daemon` (wiring and the capture loop: batches to the outbox, then acknowledge),
:mod:`.supervisor` (restart with back-off), :mod:`.relay_process` and
:mod:`.relay_child` (the relay in its own process), :mod:`.instance` (one daemon per
state), :mod:`.embedded` (the embedded nats-server), :mod:`.control` (requests from the
CLI), :mod:`.snapshots` (on-demand re-snapshots), :mod:`.http` and :mod:`.probe`
(health, readiness, metrics), :mod:`.logs`.

May import every other stage; nothing but the CLI imports it.
"""
