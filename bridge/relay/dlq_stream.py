"""The dead-letter stream: ``<STREAM>_DLQ`` capturing ``<prefix>_dlq.>``.

Dead letters (the relay's poison messages, the sources' unparsable input, downstream
consumers' give-ups) live outside the main stream and outside ``<prefix>.>``, so no
``<prefix>.>`` subscriber, durable consumer or replay receives them. This stream keeps
them until a person redrives or purges them (``cdc-bridge dlq``): no age limit, the same
storage, replicas and duplicate window as the main stream (the dead letters' ids are
deterministic, so a re-dead-lettering after a crash is dropped as a duplicate).

Called by :meth:`cdc_bridge.relay.publisher.Publisher.ensure_stream` (so it exists
before the relay can need it) and reported by ``cdc-bridge init``.
"""

from __future__ import annotations

import logging
from typing import Literal

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from cdc_bridge.kernel.errors import ConfigError, PublishUnavailable
from cdc_bridge.kernel.events import dead_letter_prefix, dead_letter_stream
from cdc_bridge.relay.jsconfig import storage_type
from cdc_bridge.relay.settings import NatsConfig

log = logging.getLogger("cdc_bridge.publisher")

Outcome = Literal["created", "updated", "up to date"]


def dlq_stream_config(cfg: NatsConfig) -> api.StreamConfig:
    return api.StreamConfig(
        name=dead_letter_stream(cfg.stream),
        subjects=[f"{dead_letter_prefix(cfg.subject_prefix)}.>"],
        storage=storage_type(cfg),
        num_replicas=cfg.replicas,
        duplicate_window=cfg.duplicate_window,
    )


async def ensure_dlq_stream(js: JetStreamContext, cfg: NatsConfig) -> Outcome:
    """Create the dead-letter stream, or fix its subjects/replicas; say which."""
    wanted = dlq_stream_config(cfg)
    name = wanted.name or ""
    try:
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(wanted)
            log.info("created dead-letter stream %s for %s", name, wanted.subjects[0]
                     if wanted.subjects else "")
            return "created"
        have = info.config
        if (sorted(have.subjects or []) != sorted(wanted.subjects or [])
                or (have.num_replicas or 1) != cfg.replicas):
            # keep what a person added (subjects), add ours
            wanted.subjects = sorted({*(have.subjects or []), *(wanted.subjects or [])})
            wanted.storage = have.storage
            wanted.max_age = have.max_age
            await js.update_stream(wanted)
            log.info("updated dead-letter stream %s (subjects %s, replicas %d)", name,
                     ", ".join(wanted.subjects), cfg.replicas)
            return "updated"
        return "up to date"
    except nats.js.errors.BadRequestError as e:
        raise ConfigError([f"nats.stream: JetStream refused the dead-letter stream {name}: "
                           f"{e.description}"]) from e
    except (TimeoutError, nats.errors.Error, OSError) as e:
        raise PublishUnavailable(f"JetStream not available: {type(e).__name__}: {e}") from e
