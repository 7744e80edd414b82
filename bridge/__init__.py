"""cdc-bridge: change data capture from legacy systems into NATS JetStream.

The import package ``cdc_bridge`` maps the repository's folders (see setup.py and
ARCHITECTURE.md). The pipeline, stage by stage:

* :mod:`cdc_bridge.kernel` — events, errors, the batch/checkpoint types, wire constants;
  imports nothing of ours.
* :mod:`cdc_bridge.adapters` (folder ``adapters/``) — the sources; the contract is
  :mod:`cdc_bridge.adapters.contract`.
* :mod:`cdc_bridge.outbox` (folder ``outbox/``) — the transactional outbox stores.
* :mod:`cdc_bridge.relay` — outbox rows to JetStream, and its delivery rules.
* :mod:`cdc_bridge.daemon` — runs sources and the relay; :mod:`cdc_bridge.cli` the commands.
* :mod:`cdc_bridge.client` — the library services import (consumer, ``write_event``).

Importing this package loads nothing else.
"""

__version__ = "0.1.0"
