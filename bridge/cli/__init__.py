"""The ``cdc-bridge`` command: one module per command group.

:mod:`.main` (click group: run, validate, tail, status, snapshot, replay, init, outbox).
Commands import their heavy parts when run, so ``--help`` stays quick.
"""
