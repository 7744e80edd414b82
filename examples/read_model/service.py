"""The read-model service: subscribe to the quickstart's invoices, keep the projection.

Subjects: ``<prefix>.<adapter>._.invoices.>`` (quickstart: ``cdc.legacy._.invoices.>``),
through a durable pull consumer (default name ``invoices_read_model``), with a SQLite
seen-store in the same database file as the projection, so each event is applied once
and the projection write commits together with the event id.

Rebuild from scratch (``rebuild``):

1. empty the projection and forget the seen ids (one transaction);
2. ``cdc-bridge replay`` the stream to ``readmodel.<durable>.<run>.>`` (a fresh prefix,
   so the replay is never taken for a duplicate);
3. consume those subjects with a temporary durable until caught up, then delete it and
   purge the replayed copies.

Live consumption (``run``) then carries on; events the rebuild already applied are
skipped by the seen-store, and the rows' ``_seq`` guard keeps anything older out.

    python -m examples.read_model run -c examples/quickstart.yaml --db .cdc-bridge/read_model.db
    python -m examples.read_model rebuild -c examples/quickstart.yaml --db ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.js import api

from cdc_bridge.cli.replay import ReplayOptions, replay
from cdc_bridge.client import Consumer, ConsumerSettings, Event, SqliteSeenStore
from cdc_bridge.config import BridgeConfig, load_config
from cdc_bridge.relay.publisher import connect_options
from examples.read_model.projection import Projection

log = logging.getLogger("read_model")
DURABLE = "invoices_read_model"


def _connect_kwargs(config: BridgeConfig) -> dict[str, Any]:
    return {k: v for k, v in connect_options(config.nats).items()
            if k not in ("servers", "name", "pending_size")}


def live_subject(config: BridgeConfig, adapter: str) -> str:
    return f"{config.nats.subject_prefix}.{adapter}._.invoices.>"


class ReadModel:
    def __init__(self, db: Path, durable: str = DURABLE) -> None:
        self.conn = sqlite3.connect(db, timeout=30)
        self.projection = Projection(self.conn)
        self.seen = SqliteSeenStore(self.conn, durable)
        self.durable = durable

    async def handle(self, event: Event) -> None:
        self.projection.apply(event)  # committed with the seen mark

    def consumer(self, config: BridgeConfig, subject: str, durable: str,
                 stream: str) -> Consumer:
        settings = ConsumerSettings(servers=config.nats.servers(), durable=durable,
                                    filter_subject=subject, stream=stream,
                                    connect_options=_connect_kwargs(config))
        return Consumer(settings, self.handle, self.seen)

    async def run(self, config: BridgeConfig, adapter: str, stop_when_idle: bool = False
                  ) -> Consumer:
        consumer = self.consumer(config, live_subject(config, adapter), self.durable,
                                 config.nats.stream)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.add_signal_handler(sig, consumer.stop)
        await consumer.run(stop_when_idle=stop_when_idle)
        return consumer

    async def rebuild(self, config: BridgeConfig, adapter: str) -> int:
        """Rebuild from scratch through ``replay``; returns the events applied."""
        self.projection.reset()
        self.seen.forget_all()  # ids and key positions; commits the reset with them
        run = str(int(time.time() * 1000))
        target = f"readmodel.{self.durable}.{run}"
        stream = f"READMODEL_{self.durable}".upper()
        nc = await nats.connect(servers=config.nats.servers(), **_connect_kwargs(config))
        try:
            jsm = nc.jsm()
            # one stream for all of this model's rebuilds, so replay finds it
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await jsm.add_stream(api.StreamConfig(
                    name=stream, subjects=[f"readmodel.{self.durable}.>"],
                    max_age=86400.0, num_replicas=config.nats.replicas))
            result = await replay(config, ReplayOptions(
                target=target, filter_subject=live_subject(config, adapter)))
            log.info("replayed %d events to %s.>", result.published, target)
            durable = f"{self.durable}_rebuild_{run}"
            consumer = self.consumer(config, f"{target}.>", durable, result.target_stream)
            await consumer.run(stop_when_idle=True)
            await jsm.delete_consumer(result.target_stream, durable)
            await jsm.purge_stream(result.target_stream, subject=f"{target}.>")
        finally:
            await nc.close()
        return consumer.stats.handled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="read_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "rebuild"])
    parser.add_argument("-c", "--config", type=Path, required=True, help="the bridge's config")
    parser.add_argument("--db", type=Path, required=True, help="the read model's SQLite file")
    parser.add_argument("--adapter", default="legacy")
    parser.add_argument("--durable", default=DURABLE)
    parser.add_argument("--until-idle", action="store_true",
                        help="run: stop once caught up (for scripts and tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_config(args.config)
    model = ReadModel(args.db, args.durable)
    if args.command == "rebuild":
        n = asyncio.run(model.rebuild(config, args.adapter))
        print(f"rebuilt: {n} events applied, {len(model.projection.rows())} invoices")
    else:
        consumer = asyncio.run(model.run(config, args.adapter, args.until_idle))
        print(f"stopped: {consumer.stats.handled} applied, "
              f"{consumer.stats.duplicates} duplicates skipped")


if __name__ == "__main__":
    main()
