"""cdc-bridge core: configuration, canonical events, the daemon, the relay and the CLI.

Adapters (``adapters/``) turn source changes into :class:`bridge.events.ChangeEvent`
batches; the outbox (``outbox/``) stores them with the source checkpoint in one
transaction; the relay (:mod:`bridge.relay`) publishes them to NATS JetStream.
"""

__version__ = "0.1.0"
