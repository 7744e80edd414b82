"""The transactional outbox: events and the source's checkpoint, committed together.

:mod:`.base` (the store contract), :mod:`.sqlite` and :mod:`.postgres` (the backends),
:mod:`.factory` (a store from its URL), :mod:`.writer` (a source's batch to outbox
messages, encoded once), :mod:`.runner` (stores driven from worker threads) and
:mod:`.inspect` (what ``cdc-bridge outbox`` shows).

Depends on :mod:`cdc_bridge.kernel` only. The application-side table that services
write to is not this outbox: see :mod:`cdc_bridge.client.outbox`.
"""
