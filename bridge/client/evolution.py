"""Schemas in the consumer's delivery path: validate, then upcast, then the handler.

:class:`SchemaStage` is what :class:`cdc_bridge.client.consumer.Consumer` runs on each
event before its handler when it was given ``validate=True`` or ``upcasters=``
(without either there is no stage and no cost):

1. a schema-change event passes through unchanged; its registry entry goes into the
   registry's cache (the version, and the table's latest);
2. ``validate``: the ``after`` image of a ``c``/``u``/``r`` event is checked against
   the JSON Schema of the version its ``dataschema`` names (read from the registry once
   per version, compiled once per version). A mismatch is :class:`SchemaInvalid`: the
   consumer dead-letters the event at once with the reason (:class:`Rejected`). An event without
   ``dataschema`` (a table its source does not describe) is not checked;
3. upcasters: an event older than its table's target is decoded again from its body
   and brought up step by step (:mod:`cdc_bridge.client.upcasting`); the handler gets
   the result, with the original order key. An event the chain cannot bring up is
   :class:`UpcastError`, dead-lettered at once; an exception inside an upcaster is a
   failure like the handler's (retried, then dead-lettered).

Since the stage is in the delivery path, it applies to whatever the consumer reads:
live events, a durable created over old history, replayed copies, redriven dead
letters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import orjson
from nats.js import JetStreamContext

from cdc_bridge.client.events import Event, event_of
from cdc_bridge.client.schemas import SchemaRegistry
from cdc_bridge.client.upcasting import UpcastError, Upcasters
from cdc_bridge.client.validation import RowValidators, SchemaInvalid, require_jsonschema

__all__ = ["Rejected", "SchemaInvalid", "SchemaStage", "UpcastError"]

#: Ops whose ``after`` image is validated.
VALIDATED_OPS = ("c", "u", "r")


class Rejected(Exception):
    """The stage refused an event for good (:class:`SchemaInvalid`, :class:`UpcastError`):
    the consumer dead-letters it at once with this reason."""


class SchemaStage:
    """Validation and upcasting for one consumer (see the module docstring)."""

    def __init__(self, validate: bool = False, upcasters: Upcasters | None = None,
                 registry: SchemaRegistry | None = None) -> None:
        if validate:
            require_jsonschema()  # fail when the consumer is built, not at the first event
        if upcasters is not None:
            upcasters.check()  # a missing link is an error before anything is consumed
        self.validate = validate
        self.upcasters = upcasters
        self.registry = registry
        self._given = registry is not None
        self.validators = RowValidators()
        self.validated = 0
        self.upcast = 0

    def bind(self, js: JetStreamContext, stream: str) -> None:
        """Read the registry over the consumer's connection (unless one was given); a new
        connection (another :meth:`Consumer.run`) gets a new reader, with the cache kept."""
        if self._given:
            return
        old = self.registry
        self.registry = SchemaRegistry(js, stream=stream)
        if old is not None:
            self.registry.adopt(old)

    async def prepare(self, event: Event, body: bytes) -> Event:
        """The event the handler gets (``body``: the message's CloudEvent bytes);
        :class:`Rejected` if there is none."""
        try:
            return await self._prepare(event, body)
        except (SchemaInvalid, UpcastError) as e:
            raise Rejected(str(e)) from e

    async def _prepare(self, event: Event, body: bytes) -> Event:
        if event.is_schema_change:
            entry = event.data.get("entry")
            if self.registry is not None and isinstance(entry, Mapping):
                self.registry.remember(entry)
            return event
        if self.validate and event.dataschema is not None and event.op in VALIDATED_OPS:
            await self._check(event, event.dataschema)
        upcasters = self.upcasters
        if upcasters is not None and upcasters.needs(event.adapter, event.table_ref,
                                                     event.schema_version):
            ce, steps = upcasters.upcast(orjson.loads(body))
            if steps:
                try:
                    upcast = event_of(event.subject, ce, event.headers, event.sequence,
                                      event.deliveries)
                except ValueError as e:
                    raise UpcastError(f"the upcast {event.table_ref} event {event.id} is "
                                      f"not a change event: {e}") from None
                self.upcast += 1
                event = replace(upcast, order_key=event.order_key)
        return event

    async def _check(self, event: Event, uri: str) -> None:
        assert self.registry is not None, "bind() before the first event"
        entry = await self.registry.for_uri(uri)
        self.validators.check(entry.uri, entry.json_schema, event.after,
                              f"event {event.id} after-image")
        self.validated += 1
