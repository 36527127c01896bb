"""The runtime: the one module that wires database, store, site registry, gateways, rule engine,
alarm journal and live hub together. The API talks to a Runtime and to nothing else.

Hot path, per batch from a gateway::

    gateway.batches() ──▶ engine.process(batch) ──▶ forwarder.put(batch)   (store, or disk spool)
                                    │
                                    └──▶ events ──▶ journal queue ──▶ alarm_journal / alarm_state
                                                └──▶ live hub (WebSocket clients)

A clock task ticks the engine once a second (stale data, delays, shelve expiry, re-alarm) and tells
it which devices have lost communication.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon import metrics, startup
from hazmon.alarms import journal
from hazmon.alarms.alarm import AlarmEvent
from hazmon.alarms.compiler import compile_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.alarms.pending import AlarmSpool
from hazmon.config import Settings
from hazmon.gateways import Gateway, open_gateway
from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway
from hazmon.live import AlarmListView, LiveHub, set_site_timezone
from hazmon.plant.directory import Directory, build_directory
from hazmon.plant.site import Site
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch, now_us
from hazmon.storage.database import Database, open_database
from hazmon.storage.forwarder import Forwarder
from hazmon.storage.maintenance import Maintenance
from hazmon.storage.store import ReadingStore, StoreError, guarded

log = logging.getLogger(__name__)

TICK_S = 1.0
JOURNAL_RETRY_S = 1.0
JOURNAL_ACQUIRE_TIMEOUT_S = 5.0
ALARM_SPOOL_FILE = "alarm-journal.pending.jsonl"
# Readings lost to a full disk spool raise `hazmon.storage:comm.LOSS`, held this long after the last loss.
STORAGE_OWNER = "hazmon.storage"
DATA_LOSS_HOLD_US = 60_000_000


def device_alarm_owner(gateway_id: str, device_id: str) -> str:
    """The engine's name for a gateway's device: its communication alarm is `<owner>:comm.LOSS`."""
    return f"{gateway_id}.{device_id}"


@dataclass
class PipelineStats:
    batches: int = 0
    readings: int = 0
    events: int = 0
    last_batch_size: int = 0
    engine_seconds_total: float = 0.0
    last_engine_ms: float = 0.0
    journal_failures: int = 0


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ReadingStore
    sites: list[Site] = field(default_factory=list)
    tags: TagIndex = field(default_factory=lambda: TagIndex([]))
    engine: AlarmEngine | None = None
    hub: LiveHub = field(default_factory=LiveHub)
    forwarder: Forwarder | None = None
    gateways: list[Gateway] = field(default_factory=list)
    stats: PipelineStats = field(default_factory=PipelineStats)
    site_of: dict[str, str] = field(default_factory=dict)  # tag or device id -> site id
    _journal_queue: asyncio.Queue[list[AlarmEvent]] = field(default_factory=asyncio.Queue)
    _device_ok: dict[str, bool] = field(default_factory=dict)
    _dropped_seen: int = 0
    # gateways that report changes only (OPC UA subscriptions): gateway id -> its tag keys
    _by_exception: dict[str, npt.NDArray[np.int32]] = field(default_factory=dict)
    _last_drop_us: int | None = None
    _journal_busy: bool = False
    alarm_spool: AlarmSpool = field(default_factory=lambda: AlarmSpool(Path(".hazmon") / ALARM_SPOOL_FILE))
    # the current alarms as the API lists them, serialised once per change (built by the alarm routes)
    alarm_view: AlarmListView | None = None
    _directory: tuple[object, object, object, tuple[int, int, int], Directory] | None = None

    def directory(self) -> Directory:
        """Where every tag and device is (site, installation, equipment), rebuilt when the sites change."""
        size = (len(self.sites), len(self.site_of), len(self.tags))
        hit = self._directory
        if hit and hit[0] is self.site_of and hit[1] is self.sites and hit[2] is self.tags and hit[3] == size:
            return hit[4]
        d = build_directory(self.sites, self.site_of, self.tags)
        self._directory = (self.site_of, self.sites, self.tags, size, d)
        return d

    def by_exception(self) -> list[tuple[str, npt.NDArray[np.int32], bool]]:
        """The devices that report by exception (OPC UA subscriptions send changes only): each one's
        alarm owner, its tag keys, and whether it is healthy now. A tag on a healthy subscription is
        reporting although it sends nothing while its value does not change (regulator compliance)."""
        out = []
        for gw in self.gateways:
            if gw.id not in self._by_exception:
                continue
            health = gw.health().devices
            for device, keys in gw.devices().items():
                h = health.get(device)
                out.append((device_alarm_owner(gw.id, device), keys, h is not None and h.connected and not h.stale))
        return out

    # ------------------------------------------------------------------ hot path

    async def ingest(self, batch: ReadingBatch) -> None:
        """One batch from a gateway: alarms first, then storage, then live values."""
        events: list[AlarmEvent] = []
        if self.engine is not None:
            t = time.perf_counter()
            events = self.engine.process(batch)
            elapsed = time.perf_counter() - t
            self.stats.engine_seconds_total += elapsed
            self.stats.last_engine_ms = elapsed * 1000
            metrics.ENGINE_SECONDS.observe(elapsed)
        self.stats.batches += 1
        self.stats.readings += len(batch)
        self.stats.last_batch_size = len(batch)
        metrics.BATCH_SIZE.observe(len(batch))
        if events:
            self._record(events)
        self.hub.publish_values(batch, self.tags)
        if self.forwarder is not None:
            await self.forwarder.put(batch)
        else:
            await self.store.write(batch)

    def _record(self, events: list[AlarmEvent]) -> None:
        self.stats.events += len(events)
        self._journal_queue.put_nowait(events)
        self.hub.publish_events(events, self.site_of.get)

    # ------------------------------------------------------------------ operator actions

    async def operate(
        self,
        action: str,
        alarm_id: str,
        user: str,
        *,
        comment: str | None = None,
        duration_s: float | None = None,
    ) -> list[AlarmEvent]:
        """Run an operator action on the engine; its events are journaled and published.

        ``action``: acknowledge, reset, shelve, unshelve, remove_from_service, return_to_service,
        comment. Raises hazmon.alarms.alarm.UnknownAlarm / InvalidTransition from the engine.
        """
        if self.engine is None:
            raise RuntimeError("no rule engine is configured")
        engine = self.engine
        now = now_us()
        ops: dict[str, Callable[[], list[AlarmEvent]]] = {
            "acknowledge": lambda: engine.acknowledge(alarm_id, user, comment, now),
            "reset": lambda: engine.reset(alarm_id, user, comment, now),
            "shelve": lambda: engine.shelve(alarm_id, user, comment or "", duration_s or 0.0, now),
            "unshelve": lambda: engine.unshelve(alarm_id, user, comment, now),
            "remove_from_service": lambda: engine.remove_from_service(alarm_id, user, comment, now),
            "return_to_service": lambda: engine.return_to_service(alarm_id, user, comment, now),
            "comment": lambda: engine.comment(alarm_id, user, comment or "", now),
        }
        if action not in ops:
            raise ValueError(f"unknown alarm action {action!r}")
        events = ops[action]()  # engine calls are synchronous: atomic with respect to ingest
        if events:
            self._record(events)
            await self.flush_journal()
        return events

    async def flush_journal(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued alarm event is in the journal (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        while not self._journal_queue.empty() or self._journal_busy:
            if time.monotonic() > deadline:
                raise TimeoutError("alarm journal did not catch up")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ background tasks

    async def _journal_writer(self) -> None:
        """Writes queued events in order; on a database outage keeps them and retries."""
        while True:
            events = await self._journal_queue.get()
            self._journal_busy = True
            spooled = 0  # how many of `events` are already in the disk spool
            try:
                while True:
                    while not self._journal_queue.empty():
                        events.extend(self._journal_queue.get_nowait())
                    try:
                        await guarded(functools.partial(self._append_journal, events), "alarm journal")
                        break
                    except (StoreError, journal.JournalError) as e:
                        self.stats.journal_failures += 1
                        # on disk before the next try: a crash during the outage loses no alarm
                        self.alarm_spool.append(events[spooled:])
                        spooled = len(events)
                        log.warning("alarm journal write failed (%d events kept on disk, retrying): %s", len(events), e)
                        await asyncio.sleep(JOURNAL_RETRY_S)
                if spooled:
                    self.alarm_spool.clear()
            finally:
                self._journal_busy = False

    async def _append_journal(self, events: list[AlarmEvent]) -> None:
        async with self.db.pool.acquire(timeout=JOURNAL_ACQUIRE_TIMEOUT_S) as conn:
            await journal.append_events(conn, events, self.site_of.get)

    async def _clock(self) -> None:
        """Ticks the engine and reports device communication changes to it."""
        while True:
            await asyncio.sleep(TICK_S)
            if self.engine is None:
                continue
            now = now_us()
            events: list[AlarmEvent] = []
            for gw in self.gateways:
                alive = True
                for device, health in gw.health().devices.items():
                    ok = health.connected and not health.stale
                    alive &= ok
                    events += self._device_state(device_alarm_owner(gw.id, device), ok, now)
                keys = self._by_exception.get(gw.id)
                if keys is not None and alive:
                    # a subscription sends only changes: a live server's quiet tags are not stale
                    self.engine.refresh_stale(keys, now)
            if self.forwarder is not None:
                dropped = self.forwarder.stats().dropped_readings
                if dropped > self._dropped_seen:
                    log.error("disk spool full: %d readings lost so far", dropped)
                    self._last_drop_us = now
                self._dropped_seen = dropped
                losing = self._last_drop_us is not None and now - self._last_drop_us < DATA_LOSS_HOLD_US
                events += self._device_state(STORAGE_OWNER, not losing, now)
            events += self.engine.tick(now)
            if events:
                self._record(events)

    def _device_state(self, owner: str, ok: bool, now: int) -> list[AlarmEvent]:
        """Tell the engine when a device's communication state changes (one alarm per device)."""
        if self.engine is None or self._device_ok.get(owner, True) == ok:
            return []
        self._device_ok[owner] = ok
        log.log(logging.INFO if ok else logging.WARNING, "%s: %s", owner, "restored" if ok else "lost")
        return self.engine.set_device_comm(owner, ok, now)

    async def _pump(self, gw: Gateway) -> None:
        async for batch in gw.batches():
            await self.ingest(batch)


async def _supervised(name: str, coro: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; a crash is logged loudly and the loop restarted after a pause."""
    while True:
        try:
            await coro()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s crashed; restarting in 1 s", name)
            await asyncio.sleep(1.0)


GatewayConfig = OpcUaGateway | ModbusGateway | MqttGateway


@asynccontextmanager
async def run_runtime(
    settings: Settings, *, gateway_configs: Sequence[GatewayConfig] | None = None
) -> AsyncIterator[Runtime]:
    """Start everything the settings describe; stop it all, in reverse order, on exit.

    ``gateway_configs`` replaces the gateway files named in the settings (the demo passes the
    configurations its simulator actually serves).
    """
    # Site, rules and gateway files validated as a whole before anything starts, then written in one
    # transaction (hazmon.startup): a start that fails leaves the database as it was.
    loaded = startup.validate(settings.site, settings.rules, settings.gateways, gateway_configs=gateway_configs)
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database(settings))
        runtime = Runtime(settings, db, ReadingStore(db.pool, db.caps))
        for w in loaded.warnings:
            log.warning("site %s", w)
        async with db.pool.acquire() as conn:
            runtime.tags = await startup.write(conn, loaded)
        runtime.sites.extend(loaded.sites)
        gateway_configs = loaded.gateways
        for site in runtime.sites:
            runtime.site_of.update({t.id: site.id for t in site.tags})
            set_site_timezone(site.id, site.site.timezone)  # alarm times in the site's local time
        if loaded.rules is not None:
            runtime.engine = AlarmEngine(compile_rules(loaded.rules, runtime.sites, runtime.tags))
        sources: list[asyncio.Task[Any]] = []  # stopped first: no new data
        sinks: list[asyncio.Task[Any]] = []  # stopped once the journal has caught up
        for config in gateway_configs:
            gw = open_gateway(config, runtime.tags, data_dir=settings.data_dir)
            await stack.enter_async_context(gw)
            runtime.gateways.append(gw)
            if isinstance(config, OpcUaGateway) and config.mode == "subscribe":
                runtime._by_exception[config.id] = np.concatenate([*gw.devices().values(), np.zeros(0, np.int32)])
            for device, keys in gw.devices().items():
                owner = device_alarm_owner(config.id, device)
                runtime.site_of[owner] = config.site
                if runtime.engine is not None:
                    runtime.engine.register_device(owner, keys)
        runtime.alarm_spool = AlarmSpool(settings.data_dir / ALARM_SPOOL_FILE)
        pending = runtime.alarm_spool.load()
        if pending:  # alarm events of a previous run that never reached the journal
            async with db.pool.acquire() as conn:
                await journal.append_events(conn, pending, runtime.site_of.get)
            runtime.alarm_spool.clear()
            log.warning("%d alarm events left on disk by the previous run are now in the journal", len(pending))
        if runtime.engine is not None:
            runtime.engine.register_device(STORAGE_OWNER, [])
            async with db.pool.acquire() as conn:
                restored = runtime.engine.restore(await journal.load_current(conn))
            log.info("rule engine: %d tags, %d alarms restored from the journal", runtime.engine.n_tags, restored)
        runtime.forwarder = Forwarder(metrics.TimedWriter(runtime.store), settings.data_dir / "spool")
        await stack.enter_async_context(runtime.forwarder)
        maintenance = Maintenance(db, retention_days=settings.retention_days, interval_s=settings.rollup_interval_s)
        sinks.append(asyncio.create_task(_supervised("maintenance", maintenance.run), name="maintenance"))
        sinks.append(asyncio.create_task(_supervised("journal", runtime._journal_writer), name="journal"))
        sources.append(asyncio.create_task(_supervised("clock", runtime._clock), name="clock"))
        for gw in runtime.gateways:
            sources.append(asyncio.create_task(_supervised(f"gateway {gw.id}", functools.partial(runtime._pump, gw))))
        try:
            yield runtime
        finally:
            await _cancel(sources)
            with contextlib.suppress(TimeoutError):
                await runtime.flush_journal(timeout_s=5.0)
            await _cancel(sinks)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
