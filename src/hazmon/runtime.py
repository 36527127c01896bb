"""The runtime: the one module that wires database, store, site registry, gateways, rule engine,
alarm journal and live hub together. The API talks to a Runtime and to nothing else.

Hot path, per batch from a gateway::

    gateway.batches() ──▶ engine.process(batch) ──▶ forwarder.put(batch)   (store, or disk spool)
                                    │
                                    └──▶ events ──▶ journal queue ──▶ alarm_journal / alarm_state
                                                └──▶ live hub (WebSocket clients)

A clock task ticks the engine once a second (stale data, delays, shelve expiry, re-alarm) and tells
it which devices have lost communication.

Every long-running task (each gateway's pump, the forwarder's drain, the journal writer, the clock,
maintenance) is a component of a ``Supervisor`` (hazmon.supervisor): one that ends unexpectedly is
restarted with backoff, counted, and raises ``hazmon.<component>:comm.LOSS`` until it has run again
for a while. System alarms (``hazmon.*`` and gateway devices) are placed at the sites they affect
(``system_sites``), so the operators of those sites see them.
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
from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon import metrics, startup
from hazmon.alarms import journal
from hazmon.alarms.alarm import AlarmEvent, AlarmSnapshot, action_detail
from hazmon.alarms.compiler import compile_rules
from hazmon.alarms.engine import OPERATOR_ACTIONS, AlarmEngine
from hazmon.alarms.pending import AlarmSpool, Pending
from hazmon.auth import AuthThrottle, TokenCache
from hazmon.config import Settings
from hazmon.gateways import Gateway, open_gateway
from hazmon.gateways.config import ModbusGateway, MqttGateway, OpcUaGateway
from hazmon.live import AlarmListView, LiveHub, set_site_timezone
from hazmon.plant.directory import Directory, build_directory
from hazmon.plant.site import Site
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.reading import DeviceStatus, ReadingBatch, now_us
from hazmon.recorder import JOURNAL_OWNER, QUEUED, AlarmRecorder, RecordNotPossible, legacy_refs
from hazmon.regulator.uplink import UPLINK_OWNER, Uplink
from hazmon.storage.database import Database, open_database
from hazmon.storage.forwarder import Forwarder
from hazmon.storage.maintenance import Maintenance
from hazmon.storage.store import ReadingStore
from hazmon.supervisor import Component, Supervisor

log = logging.getLogger(__name__)

TICK_S = 1.0
ALARM_SPOOL_FILE = "alarm-journal.pending.jsonl"  # the recorder's write-ahead log; dead letters beside it
OPERATE_WAIT_S = 2.0  # how long an operator action waits for the journal before answering "queued"
# Readings lost to a full disk spool raise `hazmon.storage:comm.LOSS`, held this long after the last loss.
STORAGE_OWNER = "hazmon.storage"
DATA_LOSS_HOLD_US = 60_000_000
GatewayConfig = OpcUaGateway | ModbusGateway | MqttGateway
SYSTEM_PREFIX = "hazmon."  # owners of system alarms: hazmon.<component>


def component_owner(component: str) -> str:
    """The engine's name for a supervised component: its alarm is `hazmon.<component>:comm.LOSS`."""
    return f"{SYSTEM_PREFIX}{component}"


def gateway_component(gateway_id: str) -> str:
    return f"gateway.{gateway_id}"


class GatewayEnded(Exception):
    """A gateway's batch stream ended while the runtime still runs."""


def device_alarm_owner(site: str, gateway_id: str, device_id: str) -> str:
    """The engine's name for a gateway's device, in its site: its communication alarm is
    ``<site>/<gateway>.<device>:comm.LOSS``."""
    return tag_ref(site, f"{gateway_id}.{device_id}")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who runs an operator action, as the journal and the audit trail record it."""

    name: str
    token_id: str | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class ActionResult:
    """An operator action that was applied: its events, the alarm before and after, and where it is
    recorded — ``journaled`` (journal and audit trail), ``queued`` (on disk, journaled and audited
    when the database is back) or ``dead-letter`` (the database refused it; an alarm is raised)."""

    events: list[AlarmEvent]
    before: AlarmSnapshot
    after: AlarmSnapshot
    record: str


@dataclass
class PipelineStats:
    batches: int = 0
    readings: int = 0
    events: int = 0
    last_batch_size: int = 0
    engine_seconds_total: float = 0.0
    last_engine_ms: float = 0.0
    journal_failures: int = 0
    ingest_failures: int = 0  # batches the hot path raised on (a bug): the pump is restarted
    ingest_failed_readings: int = 0  # their readings, which may not have been stored


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
    site_of: dict[str, str] = field(default_factory=dict)  # tag or device reference (site/id) -> site id
    _device_ok: dict[str, bool] = field(default_factory=dict)
    _device_published: dict[str, bool] = field(default_factory=dict)  # gateway role: what the shards were told
    _dropped_seen: int = 0
    # gateways that report changes only (OPC UA subscriptions): gateway id -> its tag keys
    _by_exception: dict[str, npt.NDArray[np.int32]] = field(default_factory=dict)
    _last_drop_us: int | None = None
    # every alarm event and operator action goes to the journal through it (see hazmon.recorder)
    recorder: AlarmRecorder = field(init=False)
    # API tokens checked recently (served through a database outage) and failed logins per address
    token_cache: TokenCache = field(default_factory=TokenCache)
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    # the long-running tasks, restarted when they end (see hazmon.supervisor)
    supervisor: Supervisor = field(default_factory=Supervisor)
    # system alarm owner (hazmon.<component>) -> the sites it affects
    system_sites: dict[str, frozenset[str]] = field(default_factory=dict)
    gateway_configs: dict[str, GatewayConfig] = field(default_factory=dict)  # gateway id -> its configuration
    # opens a gateway, like open_gateway(config, tags, data_dir=...): at start, and again after a crash
    gateway_factory: Callable[..., Gateway] = open_gateway
    _spool_errors_seen: int = 0
    _ended_gateways: set[str] = field(default_factory=set)  # ids whose batch stream ended: opened anew
    data_loss_hold_us: int = DATA_LOSS_HOLD_US  # hazmon.storage stays raised this long after the last loss
    # the current alarms as the API lists them, serialised once per change (built by the alarm routes)
    alarm_view: AlarmListView | None = None
    # set by `hazmon serve --role gateway`: batches go to the message bus instead of engine and store
    publisher: Callable[[ReadingBatch], Awaitable[None]] | None = None
    # and so do the devices' communication states, for the engine shard of their site (each one when
    # first seen and at every change; a report-by-exception device's at every tick while it is up)
    device_publisher: Callable[[DeviceStatus], Awaitable[None]] | None = None
    # set by `hazmon serve --role api`: operator actions go to the engine shard owning the alarm's site,
    # called as ``act`` is (and raising as it does); ``engine`` is then a mirror of the shards' alarms
    remote_act: Callable[..., Awaitable[ActionResult]] | None = None
    # the uplink to the provincial risk-monitoring platform, when configured (hazmon.regulator.uplink)
    uplink: Uplink | None = None
    _directory: tuple[object, object, object, tuple[int, int, int], Directory] | None = None

    def __post_init__(self) -> None:
        self.recorder = AlarmRecorder(
            self.db,
            AlarmSpool(self.settings.data_dir / ALARM_SPOOL_FILE),
            lambda owner: self.site_of.get(owner),
            on_alarm=self._journal_alarm,
            on_failure=self._journal_failed,
        )

    @property
    def alarm_spool(self) -> AlarmSpool:
        return self.recorder.spool

    def directory(self) -> Directory:
        """Where every tag and device is (site, installation, equipment), rebuilt when the sites change."""
        size = (len(self.sites), len(self.site_of), len(self.tags) + 1_000_000 * len(self.system_sites))
        hit = self._directory
        if hit and hit[0] is self.site_of and hit[1] is self.sites and hit[2] is self.tags and hit[3] == size:
            return hit[4]
        d = build_directory(self.sites, self.site_of, self.tags, self.system_sites)
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
                out.append(
                    (
                        device_alarm_owner(self.gateway_configs[gw.id].site, gw.id, device),
                        keys,
                        h is not None and h.connected and not h.stale,
                    )
                )
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
        if self.publisher is not None:  # `hazmon serve --role gateway`: engine shards and writers take it
            await self.publisher(batch)
        elif self.forwarder is not None:
            await self.forwarder.put(batch)
        else:
            await self.store.write(batch)

    def _record(self, events: list[AlarmEvent]) -> None:
        """Events of the engine: on disk (the recorder's write-ahead log) before anyone sees them."""
        self.stats.events += len(events)
        self.recorder.submit(Pending(events))
        self.hub.publish_events(events, self.directory().place_of)
        if self.uplink is not None:
            self.uplink.on_events(events)  # raise/clear: queued for the platform at once

    def _journal_alarm(self, ok: bool) -> None:
        """The recorder dead-lettered events (``ok=False``), or the hold after the last one passed."""
        if self.engine is not None:
            self._record(self._device_state(JOURNAL_OWNER, ok, now_us()))

    def _journal_failed(self) -> None:
        self.stats.journal_failures += 1

    # ------------------------------------------------------------------ operator actions

    async def act(
        self,
        action: str,
        alarm_id: str,
        actor: Actor,
        *,
        comment: str | None = None,
        duration_s: float | None = None,
        site: str | None = None,
    ) -> ActionResult:
        """Run an operator action: applied on the engine **and** recorded — journaled with its
        audit-trail entry in one transaction, or, while the database is away, on disk to be
        journaled and audited when it is back — or not applied at all.

        ``action``: acknowledge, reset, shelve, unshelve, remove_from_service, return_to_service,
        comment. Raises hazmon.alarms.alarm.UnknownAlarm / InvalidTransition from the engine (nothing
        applied), ValueError for an unknown action, RecordNotPossible when neither the database nor
        the disk can record it (nothing applied).
        """
        if self.remote_act is not None:  # `hazmon serve --role api`: the owning engine shard applies it
            return await self.remote_act(action, alarm_id, actor, comment=comment, duration_s=duration_s, site=site)
        if self.engine is None:
            raise RuntimeError("no rule engine is configured")
        engine = self.engine
        if action not in OPERATOR_ACTIONS:
            raise ValueError(f"unknown alarm action {action!r}")
        before = engine.get(alarm_id)
        if not self.recorder.writable():
            raise RecordNotPossible(
                "the alarm journal's database is unavailable and its disk spool cannot be written: "
                "the action was not applied"
            )
        # From here to submit() nothing awaits: the engine call, its record on disk and its publication
        # are one step with respect to ingest and to other actions.
        events = engine.operate(action, alarm_id, actor.name, comment, duration_s, now_us())
        after = engine.get(alarm_id)
        detail = action_detail(before, after, comment, duration_s)
        entry: dict[str, Any] = {
            "actor": actor.name,
            "token_id": actor.token_id,
            "role": actor.role,
            "action": f"alarm.{action}",
            "target": alarm_id,
            "site_id": site,
            "detail": detail,
        }
        item = Pending(events, entry)
        self.stats.events += len(events)
        self.recorder.submit(item)
        self.hub.publish_events(events, self.directory().place_of)
        if self.uplink is not None:
            self.uplink.on_events(events)  # a reset clears a latched alarm: the platform hears of it
        record = await self.recorder.wait(item, 0.0 if self.recorder.down else OPERATE_WAIT_S)
        if record == QUEUED:
            log.warning(
                "%s of %s by %s: applied, kept on disk until the journal takes it", action, alarm_id, actor.name
            )
        return ActionResult(events, before, after, record)

    async def audit(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        site: str | None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Append an audit-trail entry through the recorder (on disk first, so a database outage
        delays it and loses nothing); returns its record like ``act``."""
        entry: dict[str, Any] = {
            "actor": actor.name,
            "token_id": actor.token_id,
            "role": actor.role,
            "action": action,
            "target": target,
            "site_id": site,
            "detail": detail or {},
        }
        item = Pending([], entry)
        self.recorder.submit(item)
        return await self.recorder.wait(item, 0.0 if self.recorder.down else OPERATE_WAIT_S)

    async def operate(
        self,
        action: str,
        alarm_id: str,
        user: str,
        *,
        comment: str | None = None,
        duration_s: float | None = None,
    ) -> list[AlarmEvent]:
        """``act`` for a user without a token (the CLI, tests): returns the events."""
        result = await self.act(action, alarm_id, Actor(user), comment=comment, duration_s=duration_s)
        return result.events

    async def flush_journal(self, timeout_s: float = 10.0) -> None:
        """Wait until every alarm event and action is settled in the journal (TimeoutError after ``timeout_s``)."""
        await self.recorder.flush(timeout_s)

    # ------------------------------------------------------------------ background tasks

    async def _clock(self) -> None:
        """Ticks the engine and reports device communication changes to it."""
        while True:
            await asyncio.sleep(TICK_S)
            if self.engine is None:
                if self.device_publisher is not None:
                    await self._publish_devices(self.device_publisher, now_us())
                continue
            now = now_us()
            events: list[AlarmEvent] = []
            for gw in self.gateways:
                alive = True
                for device, health in gw.health().devices.items():
                    ok = health.connected and not health.stale
                    alive &= ok
                    events += self._device_state(
                        device_alarm_owner(self.gateway_configs[gw.id].site, gw.id, device), ok, now
                    )
                keys = self._by_exception.get(gw.id)
                if keys is not None and alive:
                    # a subscription sends only changes: a live server's quiet tags are not stale
                    self.engine.refresh_stale(keys, now)
            if self.forwarder is not None:
                fs = self.forwarder.stats()
                dropped = fs.dropped_readings
                if dropped > self._dropped_seen:
                    reasons = ", ".join(f"{k} {v}" for k, v in fs.dropped_by_reason.items() if v)
                    log.error("readings did not reach the database: %d so far (%s)", dropped, reasons)
                    self._last_drop_us = now
                if fs.spool_errors > self._spool_errors_seen:  # the spool's disk fails: durability is gone
                    log.error("disk spool errors: %d so far (%s)", fs.spool_errors, fs.last_error)
                    self._last_drop_us = now
                self._dropped_seen = dropped
                self._spool_errors_seen = fs.spool_errors
                losing = self._last_drop_us is not None and now - self._last_drop_us < self.data_loss_hold_us
                events += self._device_state(STORAGE_OWNER, not losing, now)
            if self.uplink is not None:  # the platform has not had our data for too long
                events += self._device_state(UPLINK_OWNER, not self.uplink.backlog_overdue(now), now)
            events += self.engine.tick(now)
            if events:
                self._record(events)

    async def _publish_devices(self, publish: Callable[[DeviceStatus], Awaitable[None]], now: int) -> None:
        """The gateway role's devices to the engine shards: a state not yet published (the first one seen,
        a change, one the bus did not take) goes now; a live report-by-exception device's every tick."""
        for gw in self.gateways:
            site = self.gateway_configs[gw.id].site
            keys_of = gw.devices()
            refresh = gw.id in self._by_exception
            for device, health in gw.health().devices.items():
                ok = health.connected and not health.stale
                owner = device_alarm_owner(site, gw.id, device)
                if self._device_published.get(owner) == ok and not (ok and refresh):
                    continue
                keys = keys_of.get(device, np.zeros(0, np.int32))
                status = DeviceStatus(site, owner, tuple(int(k) for k in keys), ok, now, refresh)
                try:
                    await publish(status)
                except Exception as e:  # the bus is away: the next tick tries again
                    log.warning("%s: communication state not published (%s); retrying", owner, e)
                    continue
                if self._device_published.get(owner) != ok:
                    log.log(logging.INFO if ok else logging.WARNING, "%s: %s", owner, "up" if ok else "lost")
                self._device_published[owner] = ok

    def _device_state(self, owner: str, ok: bool, now: int) -> list[AlarmEvent]:
        """Tell the engine when a device's communication state changes (one alarm per device)."""
        if self.engine is None or self._device_ok.get(owner, True) == ok:
            return []
        self._device_ok[owner] = ok
        log.log(logging.INFO if ok else logging.WARNING, "%s: %s", owner, "restored" if ok else "lost")
        return self.engine.set_device_comm(owner, ok, now)

    # ------------------------------------------------------------------ supervision

    async def _pump(self, index: int) -> None:
        """A gateway's batches into the hot path. Its stream ending (a crash inside the gateway) is a
        failure: the supervisor calls this again, which opens the gateway anew. A failure of the hot
        path itself (ingest raised) is one too, but the gateway keeps running and is pumped again."""
        gw = self.gateways[index]
        if gw.id in self._ended_gateways and gw.id in self.gateway_configs:
            await gw.stop()
            config = self.gateway_configs[gw.id]
            gw = self.gateway_factory(config, self.tags.scoped(config.site), data_dir=self.settings.data_dir)
            await gw.start()
            self.gateways[index] = gw
            self._ended_gateways.discard(gw.id)
            log.warning("gateway %s opened again", gw.id)
        async for batch in gw.batches():
            try:
                await self.ingest(batch)
            except Exception:
                self.stats.ingest_failures += 1
                self.stats.ingest_failed_readings += len(batch)
                raise
        self._ended_gateways.add(gw.id)
        errors = [d.last_error for d in gw.health().devices.values() if d.last_error]
        raise GatewayEnded(f"gateway {gw.id} stopped delivering readings" + (f": {errors[0]}" if errors else ""))

    def _component_changed(self, c: Component) -> None:
        """A supervised task failed (``c.ok`` False) or runs again: its system alarm follows."""
        if self.engine is not None:
            self._record(self._device_state(component_owner(c.name), c.ok, now_us()))

    def system_alarm_active(self, owner: str) -> bool:
        """Whether the runtime holds ``owner``'s system alarm raised (``hazmon.storage``, a component...)."""
        return not self._device_ok.get(owner, True)

    def served_sites(self) -> frozenset[str]:
        """The sites this runtime serves: its site files' and its gateways'."""
        return frozenset(s.id for s in self.sites) | frozenset(c.site for c in self.gateway_configs.values())

    def place_system_alarm(self, owner: str, sites: frozenset[str]) -> None:
        """A system alarm affects ``sites``: their operators see it (one site: it is that site's)."""
        self.system_sites[owner] = sites
        if len(sites) == 1:
            self.site_of[owner] = next(iter(sites))
        if self.engine is not None:
            self.engine.register_device(owner, [])


@asynccontextmanager
async def run_runtime(
    settings: Settings,
    *,
    gateway_configs: Sequence[GatewayConfig] | None = None,
    supervisor: Supervisor | None = None,
    gateway_factory: Callable[..., Gateway] = open_gateway,
) -> AsyncIterator[Runtime]:
    """Start everything the settings describe; stop it all, in reverse order, on exit.

    ``gateway_configs`` replaces the gateway files named in the settings (the demo passes the
    configurations its simulator actually serves). ``supervisor`` sets the restart policy of the
    long-running tasks; ``gateway_factory`` opens a gateway as ``open_gateway(config, tags,
    data_dir=...)`` does (the default), at start and again after a gateway crashed.
    """
    # Site, rules and gateway files validated as a whole before anything starts, then written in one
    # transaction (hazmon.startup): a start that fails leaves the database as it was.
    loaded = startup.validate(
        settings.site, settings.rules, settings.gateways, gateway_configs=gateway_configs, more_sites=settings.sites
    )
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
            runtime.site_of.update({tag_ref(site.id, t.id): site.id for t in site.tags})
            set_site_timezone(site.id, site.site.timezone)  # alarm times in the site's local time
        if loaded.rules is not None:
            runtime.engine = AlarmEngine(compile_rules(loaded.rules, runtime.sites, runtime.tags))
        if supervisor is not None:
            runtime.supervisor = supervisor
        runtime.supervisor.on_change = runtime._component_changed
        runtime.gateway_factory = gateway_factory
        for config in gateway_configs:
            runtime.gateway_configs[config.id] = config
            gw = gateway_factory(config, runtime.tags.scoped(config.site), data_dir=settings.data_dir)
            await stack.enter_async_context(gw)
            runtime.gateways.append(gw)
            if isinstance(config, OpcUaGateway) and config.mode == "subscribe":
                runtime._by_exception[config.id] = np.concatenate([*gw.devices().values(), np.zeros(0, np.int32)])
            for device, keys in gw.devices().items():
                owner = device_alarm_owner(config.site, config.id, device)
                runtime.site_of[owner] = config.site
                if runtime.engine is not None:
                    runtime.engine.register_device(owner, keys)
        # alarm events and actions of a previous run that never reached the journal; never fatal
        await runtime.recorder.replay(ref_of=legacy_refs(runtime.site_of))
        # System alarms: storage, journal and the supervised components affect every site served; a
        # gateway's, the sites of its tags.
        served = runtime.served_sites()
        components = ["clock", "journal-writer", "forwarder", "maintenance"]
        for owner in (STORAGE_OWNER, JOURNAL_OWNER, *(component_owner(c) for c in components)):
            runtime.place_system_alarm(owner, served)
        for gw in runtime.gateways:
            keys = np.concatenate([*gw.devices().values(), np.zeros(0, np.int32)])
            tag_sites = {runtime.site_of.get(runtime.tags.id(int(k)), "") for k in np.unique(keys)}
            gw_sites = frozenset(s for s in tag_sites if s) | {runtime.gateway_configs[gw.id].site}
            runtime.place_system_alarm(component_owner(gateway_component(gw.id)), gw_sites)
        if settings.uplink.endpoint is not None:
            runtime.uplink = Uplink(
                settings.uplink,
                settings.data_dir,
                sites=lambda: runtime.sites,
                tags=lambda: runtime.tags,
                latest=lambda keys: runtime.hub.latest_values(keys, runtime.tags),
                site_of=runtime.site_of.get,
            )
            for owner in (UPLINK_OWNER, component_owner("uplink-task")):
                runtime.place_system_alarm(owner, served)
        if runtime.engine is not None:
            async with db.pool.acquire() as conn:
                restored = runtime.engine.restore(await journal.load_current(conn))
            log.info("rule engine: %d tags, %d alarms restored from the journal", runtime.engine.n_tags, restored)
            for owner in runtime.system_sites:  # a system alarm standing from before clears when all is well
                if runtime.engine.get(f"{owner}:comm.LOSS").active:
                    runtime._device_ok[owner] = False
        runtime.forwarder = Forwarder(metrics.TimedWriter(runtime.store), settings.data_dir / "spool")
        stack.callback(runtime.forwarder.close)
        maintenance = Maintenance(db, retention_days=settings.retention_days, interval_s=settings.rollup_interval_s)
        sup = runtime.supervisor
        # sinks, stopped once the journal has caught up
        sup.start("forwarder", runtime.forwarder.run, essential=True, group="sinks")
        sup.start("journal-writer", runtime.recorder.run, essential=True, group="sinks")
        sup.start("maintenance", maintenance.run, group="sinks")
        if runtime.uplink is not None:
            sup.start("uplink-task", runtime.uplink.run, group="sinks")
        # sources, stopped first: no new data
        sup.start("clock", runtime._clock, essential=True, group="sources")
        for i, gw in enumerate(runtime.gateways):
            sup.start(gateway_component(gw.id), functools.partial(runtime._pump, i), essential=True, group="sources")
        try:
            yield runtime
        finally:
            await sup.stop("sources")
            for gw in runtime.gateways:  # those opened again after a crash (the first ones: the exit stack)
                await gw.stop()
            with contextlib.suppress(TimeoutError):
                await runtime.flush_journal(timeout_s=5.0)
            if runtime.forwarder.stats().store_available:
                await runtime.forwarder.flush(runtime.forwarder.close_timeout_s)
            await sup.stop()
            runtime.recorder.keep_leftovers()  # what the journal did not take is on disk for the next start
