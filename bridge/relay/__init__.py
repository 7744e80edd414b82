"""The relay: pending outbox rows to JetStream, pipelined, exactly once.

:mod:`.settings` (the ``nats`` and ``outbox`` config blocks, passed whole),
:mod:`.rules` (pure delivery rules: what may be published, what a PubAck means),
:mod:`.publisher` (the NATS connection and pipelined publishes) and :mod:`.relay` (the
loop: read, publish, await PubAcks, delete a stored prefix).

Depends on :mod:`cdc_bridge.outbox`, :mod:`cdc_bridge.kernel` and the metric
definitions of :mod:`cdc_bridge.metrics`; the daemon runs it in a child process.
"""
