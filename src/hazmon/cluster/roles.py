"""The stages of `hazmon serve` as separate processes over NATS JetStream (`--role gateway|engine|writer`).

- **gateway**: the gateways of the configuration, their health and the API (``/healthz``,
  ``/api/v1/gateways``); every batch goes to ``<ns>.readings.<partition of its site>``
  (``Runtime.publisher``), nothing to the engine or the store;
- **engine** (shard ``i/n``): owns the partitions ``p`` with ``p % n == i``; for each, a durable
  consumer delivers the site's batches in order; the shard's engine judges them (rules compiled for the
  sites of its partitions, alarm state restored from the journal at start), publishes the events to
  ``<ns>.events.<site>`` (message ids derived from each event: a replay publishes nothing twice),
  journals them, then acknowledges the batch. Killed at any point, the restarted shard resumes at the
  first unacknowledged batch with the state the journal holds: no transition is lost, none journaled
  twice. It also takes the operator actions of api instances for its partitions (``<ns>.ops.<p>``,
  ``hazmon.cluster.ops``): applied, journaled and audited in one transaction, published, answered;
- **writer**: the writers share one consumer (each batch to one of them) and store batches by binary
  COPY; the store is idempotent per batch and per (tag, time), so a redelivered batch is stored once.

The in-process stages keep their interfaces: a batch is a ``ReadingBatch``, an event an ``AlarmEvent``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nats.errors import Error as NatsError

from hazmon import startup
from hazmon.alarms import journal
from hazmon.alarms.alarm import AlarmEvent, split_alarm_id
from hazmon.alarms.compiler import compile_rules, load_rules
from hazmon.alarms.engine import COMM_LOSS, AlarmEngine
from hazmon.backoff import Backoff, BackoffConfig
from hazmon.cluster.bus import ENGINE_ACK_WAIT_S, WRITER_ACK_WAIT_S, Bus, partition_of
from hazmon.cluster.codec import (
    CodecError,
    decode_message,
    encode_batch,
    encode_device_status,
)
from hazmon.cluster.ops import event_to_dict, serve_operation
from hazmon.config import Settings
from hazmon.errors import InvalidFile
from hazmon.plant.site import Site
from hazmon.plant.tag import site_of_ref, tag_ref
from hazmon.reading import DeviceStatus, ReadingBatch, now_us
from hazmon.regulator.gb18218 import GradingError
from hazmon.regulator.sitecheck import load_graded_site
from hazmon.storage.database import open_database
from hazmon.storage.store import ReadingStore, StoreError
from hazmon.supervisor import Supervisor

log = logging.getLogger("hazmon.cluster")
FETCH_TIMEOUT_S = 1.0
TICK_S = 1.0


def parse_shard(text: str) -> tuple[int, int]:
    i, n = (int(x) for x in text.split("/"))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: want i/n with 0 <= i < n")
    return i, n


def owned_partitions(shard: str, partitions: int) -> list[int]:
    i, n = parse_shard(shard)
    return [p for p in range(partitions) if p % n == i]


def site_files(settings: Settings) -> list[Path]:
    return ([settings.site] if settings.site is not None else []) + list(settings.sites)


def _owner(alarm_id: str, tag_id: str | None) -> str:
    return tag_id if tag_id is not None else split_alarm_id(alarm_id)[0]


def load_configuration(settings: Settings) -> startup.Configuration:
    """The site files (HAZMON_SITE and HAZMON_SITES) graded and the rule files checked against all of them;
    a StartupError names every file at fault (exit status 2), and nothing is written."""
    config = startup.Configuration()
    failures: list[str] = []
    for i, path in enumerate(site_files(settings)):
        setting = "HAZMON_SITE" if settings.site is not None and i == 0 else "HAZMON_SITES"
        try:
            site, _warnings = load_graded_site(path)
        except (InvalidFile, GradingError, OSError) as e:
            failures.append(f"{setting} ({path}): {e}")
            continue
        config.sites.append(site)
        config.site_files[site.id] = path
    if not failures:
        try:
            config.rules = load_rules(settings.rules, config.sites)
        except (InvalidFile, OSError) as e:
            failures.append(f"HAZMON_RULES: {e}")
    if failures:
        raise startup.StartupError("the configuration cannot be loaded; nothing was changed:\n" + "\n".join(failures))
    return config


def event_msg_id(e: AlarmEvent) -> str:
    """Equal for the same transition computed twice (a batch replayed after a crash)."""
    return f"{e.alarm_id}|{e.ts_us}|{e.action}|{e.new_state}|{e.user or ''}"


def event_json(e: AlarmEvent, site: str | None) -> bytes:
    return json.dumps(event_to_dict(e, site), allow_nan=False, default=str).encode()


@dataclass
class StageStats:
    batches: int = 0
    readings: int = 0
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> messages set aside

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


# ---------------------------------------------------------------- gateway


def bus_publisher(bus: Bus, site_of_key: dict[int, str], partitions: int) -> Any:
    """``Runtime.publisher`` for the gateway role: a gateway's batch goes to its site's partition."""

    backoff = Backoff(BackoffConfig(initial_s=0.2, max_s=5.0, jitter=0.2))

    async def publish(batch: ReadingBatch) -> None:
        """Retries until the bus takes the batch (its id makes a retry a no-op): meanwhile the gateway's
        own bounded buffer fills, and what it drops it counts (``dropped_readings``)."""
        if len(batch) == 0:
            return
        site = site_of_key.get(int(batch.tag[0]), "")
        subject = bus.subjects.readings(partition_of(site, partitions))
        payload = encode_batch(batch)
        while True:
            try:
                await bus.publish(subject, payload, str(batch.batch_id))
            except (NatsError, TimeoutError, OSError) as e:
                delay = backoff.next_delay()
                log.warning("gateway: the bus did not take batch %s (%s); retrying in %.1f s", batch.batch_id, e, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            return

    return publish


def device_publisher(bus: Bus, partitions: int) -> Any:
    """``Runtime.device_publisher`` for the gateway role: a device's communication state goes to its site's
    partition, beside its readings, for the engine shard that owns the site (which raises and clears its
    ``comm.LOSS`` alarm). A failure is the caller's: the clock tries again at its next tick."""

    async def publish(status: DeviceStatus) -> None:
        subject = bus.subjects.readings(partition_of(status.site, partitions))
        await bus.publish(subject, encode_device_status(status), status.msg_id())

    return publish


async def _decoded(msg: Any, stats: StageStats, stage: str) -> ReadingBatch | DeviceStatus | None:
    """The batch (or device status) a message carries; None for a malformed one, which is counted, logged
    and terminated (never redelivered: it would fail the same way)."""
    try:
        return decode_message(msg.data)
    except CodecError as e:
        stats.reject("undecodable")
        log.error("%s: message %s set aside: %s", stage, msg.metadata.sequence.stream, e)
        await msg.term()
        return None


# ---------------------------------------------------------------- writer


async def run_writer(settings: Settings, bus: Bus, stop: asyncio.Event, stats: StageStats | None = None) -> None:
    stats = stats or StageStats()
    async with open_database(settings) as db:
        store = ReadingStore(db.pool, db.caps)
        s = bus.subjects

        async def consume() -> None:
            sub = await bus.pull(
                s.readings("*"), "writers", s.readings_stream, ordered=False, ack_wait_s=WRITER_ACK_WAIT_S
            )
            log.info("writer: consuming %s", s.readings("*"))
            while True:
                try:
                    msgs = await sub.fetch(64, timeout=FETCH_TIMEOUT_S)
                except TimeoutError:
                    continue
                for msg in msgs:
                    batch = await _decoded(msg, stats, "writer")
                    if not isinstance(batch, ReadingBatch):  # malformed (set aside), or a device status
                        if batch is not None:
                            await msg.ack()  # the engine shards' business, not the store's
                        continue
                    try:
                        await store.write(batch)
                    except StoreError as e:  # an outage: redelivered, stored once
                        log.warning("writer: store unavailable, batch %s left for redelivery: %s", batch.batch_id, e)
                        await msg.nak(delay=1.0)
                        continue
                    await msg.ack()
                    stats.batches += 1
                    stats.readings += len(batch)

        sup = Supervisor()  # a failed loop is logged, counted and restarted with backoff
        sup.start("writer", consume, essential=True)
        try:
            await stop.wait()
        finally:
            await sup.stop()


# ---------------------------------------------------------------- engine shard


async def run_engine_shard(settings: Settings, bus: Bus, stop: asyncio.Event, stats: StageStats | None = None) -> None:
    stats = stats or StageStats()
    owned = owned_partitions(settings.shard, settings.partitions)
    config = load_configuration(settings)  # every file checked before anything is written
    sites = config.sites
    mine = [s for s in sites if partition_of(s.id, settings.partitions) in owned]
    assert config.rules is not None
    async with open_database(settings) as db:
        async with db.pool.acquire() as conn:
            # this shard's sites, written with their audit rows in one transaction (as `hazmon serve`)
            mine_config = startup.Configuration(sites=mine, site_files={s.id: config.site_files[s.id] for s in mine})
            tags = await startup.write(conn, mine_config, actor=f"hazmon serve --role engine {settings.shard}")
        site_of = {tag_ref(s.id, t.id): s.id for s in mine for t in s.tags}
        # rule files are checked against every site, compiled for this shard's: a tag of another shard
        # never goes stale here for want of readings it never gets
        engine = AlarmEngine(compile_rules(config.rules, mine, tags))
        mine_ids = {s.id for s in mine}
        async with db.pool.acquire() as conn:
            current = [a for a in await journal.load_current(conn) if site_of_ref(a.alarm_id) in mine_ids]
        for a in current:  # a device lost before the restart: known again (its tags come with its next status)
            owner = _owner(a.alarm_id, a.tag_id)
            if a.condition == COMM_LOSS and owner not in site_of:
                engine.register_device(owner, [])
        restored = engine.restore(current)
        log.info(
            "engine shard %s: partitions %s, sites %s, %d alarms restored",
            settings.shard,
            owned,
            [s.id for s in mine],
            restored,
        )
        lock = asyncio.Lock()  # one batch (or tick) at a time through the engine and the journal

        def device_changed(status: DeviceStatus) -> list[AlarmEvent]:
            """A gateway process saw a device's communication change (``device_publisher``): its
            ``comm.LOSS`` alarm follows, and its tags are suppressed while it is lost, as in one process."""
            if site_of_ref(status.owner) != status.site or status.site not in mine_ids:
                stats.reject("device status of another shard's site")
                return []
            engine.register_device(status.owner, [k for k in status.keys if 0 <= k < engine.n_tags])
            if status.ok and status.refresh:  # a live subscription: its quiet tags are not stale
                engine.refresh_stale(np.asarray(status.keys, np.int32), status.ts_us)
            return engine.set_device_comm(status.owner, status.ok, status.ts_us)

        async def publish(events: list[AlarmEvent]) -> None:
            for e in events:
                site = site_of.get(_owner(e.alarm_id, e.tag_id)) or site_of_ref(e.alarm_id)
                await bus.publish(bus.subjects.events(site or "_system"), event_json(e, site), event_msg_id(e))

        async def record(events: list[AlarmEvent]) -> None:
            await publish(events)
            async with db.pool.acquire() as conn:
                await journal.append_events(conn, events, site_of.get)
            stats.events += len(events)

        async def consume(partition: int) -> None:
            s = bus.subjects
            sub = await bus.pull(
                s.readings(partition), f"engine-{partition}", s.readings_stream, ordered=True,
                ack_wait_s=ENGINE_ACK_WAIT_S,
            )  # fmt: skip
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
                except TimeoutError:
                    continue
                for msg in msgs:
                    batch = await _decoded(msg, stats, f"engine partition {partition}")
                    if batch is None:
                        continue
                    if isinstance(batch, DeviceStatus):
                        async with lock:
                            events = device_changed(batch)
                            if events:
                                await record(events)
                        await msg.ack()
                        continue
                    async with lock:
                        events = engine.process(batch)
                        if events:
                            await record(events)
                    await msg.ack()
                    stats.batches += 1
                    stats.readings += len(batch)

        async def clock() -> None:
            while True:
                await asyncio.sleep(TICK_S)
                async with lock:
                    events = engine.tick(now_us())
                    if events:
                        await record(events)

        # every loop supervised: one that fails is logged, counted and restarted with backoff; its
        # unacknowledged batch is delivered again (nothing judged twice: the journal holds its effect)
        sup = Supervisor()
        for p in owned:
            sup.start(f"engine-{p}", functools.partial(consume, p), essential=True)
        if settings.engine_clock:
            sup.start("engine-clock", clock, essential=True)

        async def operate(msg: Any) -> None:
            """An operator action from an api instance (``hazmon.cluster.ops``): applied, journaled and
            audited here, or refused; the reply says which."""
            try:
                reply = await serve_operation(msg.data, engine, lock, db.pool, site_of, publish)
            except Exception as e:  # e.g. the bus refused the events after they were journaled
                log.exception("engine shard: operator action failed")
                reply = {"error": "unavailable", "detail": f"engine shard: {e}"}
            await msg.respond(json.dumps(reply, allow_nan=False, default=str).encode())

        # a queue group: should two processes run the same shard by mistake, an action is applied once
        ops_subs = [await bus.nc.subscribe(bus.subjects.ops(p), queue=f"engine-{p}", cb=operate) for p in owned]
        try:
            await stop.wait()
        finally:
            for sub in ops_subs:
                await sub.unsubscribe()
            await sup.stop()


# ---------------------------------------------------------------- process entry


async def run_role(role: str, settings: Settings) -> None:
    """`hazmon serve --role engine|writer|hub` until SIGINT/SIGTERM (the gateway role is in commands.serve)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(settings.nats_url, settings.nats_namespace)
    started = time.monotonic()
    try:
        if role == "writer":
            await run_writer(settings, bus, stop)
        elif role == "engine":
            await run_engine_shard(settings, bus, stop)
        elif role == "hub":
            from hazmon.cluster.hub import run_hub

            await run_hub(settings, bus, stop)
        else:
            raise ValueError(f"role {role!r} has no process of its own here")
    finally:
        await bus.close()
        log.info("%s stopped after %.0f s", role, time.monotonic() - started)


def sites_by_key(sites: Iterable[Site], tags: Any) -> dict[int, str]:
    return {tags.key(tag_ref(s.id, t.id)): s.id for s in sites for t in s.tags}
