"""`hazmon serve --role api`: an API instance that reads alarm state from the events stream (any number).

- **State**: at start, the current alarms from the journal's ``alarm_state`` table, then every event of
  ``<ns>.events.*`` applied in stream order by an ordered consumer that starts ``REPLAY_S`` before the
  journal was read (an event published but not yet journaled then is applied too; replaying a suffix
  of the stream over a state that already holds part of it ends in the same state, since each event
  carries its alarm's whole new state). ``AlarmMirror`` offers what the routes read from the engine
  (``current()``, ``get()``, ``rules``, ``max_shelve_us``), and each event goes to the runtime's live hub
  in the same step as it is applied: WebSocket clients get snapshot then stream as in one process.
- **Operator actions** go to the engine shard owning the alarm's site (``hazmon.cluster.ops``): it
  applies, journals, audits and publishes them; this instance answers with the shard's result once its
  mirror holds the action's events (or after ``SEEN_WAIT_S``). No shard answering is a 503.
- **Values**: the latest value of each tag from ``<ns>.readings.*`` (``ValueFollower``), for the
  WebSocket's values and the compliance view's "data arriving".
- The sites come from ``HAZMON_SITE``/``HAZMON_SITES`` (scopes and places), and from the registry for
  the sites the hub registers from enterprise uplinks (``hazmon.cluster.registry_sites``, read every few
  seconds); no gateways, no engine, nothing written but the audit rows of refused actions (through the
  alarm recorder, as in one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig, DeliverPolicy

from hazmon.alarms import journal
from hazmon.alarms.alarm import (
    Action,
    AlarmEvent,
    AlarmSnapshot,
    AlarmState,
    InvalidTransition,
    UnknownAlarm,
)
from hazmon.alarms.compiler import CompiledRules, compile_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.cluster.bus import Bus, partition_of
from hazmon.cluster.codec import CodecError, decode_batch
from hazmon.cluster.ops import event_from_dict, snapshot_from_dict
from hazmon.cluster.registry_sites import SiteFollower
from hazmon.cluster.roles import event_msg_id, load_configuration
from hazmon.config import Settings
from hazmon.live import set_site_timezone
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.reading import ReadingBatch
from hazmon.recorder import RecordNotPossible
from hazmon.runtime import ActionResult, Actor, Runtime
from hazmon.storage.database import open_database
from hazmon.storage.registry import tag_index
from hazmon.storage.store import ReadingStore
from hazmon.supervisor import Supervisor

log = logging.getLogger("hazmon.cluster")

REPLAY_S = 60.0  # the stream is read from this long before the journal was
OPS_TIMEOUT_S = 5.0  # how long an operator action waits for the owning shard's reply
SEEN_WAIT_S = 5.0  # how long an answered action waits for its events to reach this instance's mirror
SEEN_KEEP = 20_000  # message ids remembered (for that wait)
_ACTIVE = {AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK}
_UNACKED = {AlarmState.ACTIVE_UNACK, AlarmState.RTN_UNACK}


class AlarmMirror(AlarmEngine):
    """The engine shards' alarm state as an api instance follows it from the events stream.

    It has the engine's read interface (the routes, the compliance view and the WebSocket snapshot use
    it as they use the engine) and judges nothing: ``process`` refuses, ``tick`` and device changes yield
    no events. An alarm the mirror has no state for is normal, as the compiled rules define it.
    """

    def __init__(self, compiled: CompiledRules) -> None:
        super().__init__(compiled)
        self._alarms: dict[str, AlarmSnapshot] = {}
        self.stats["mirror_events"] = 0  # applied from the stream (/metrics: hazmon_engine_mirror_events_total)
        self.stats["mirror_rejected"] = 0  # messages of the stream that are not alarm events, set aside

    def load(self, snapshots: Sequence[AlarmSnapshot]) -> None:
        for s in snapshots:
            self._alarms[s.alarm_id] = s

    def apply(self, e: AlarmEvent) -> None:
        """The state after ``e``, as the journal's ``alarm_state`` row would hold it."""
        prev = self._alarms.get(e.alarm_id)
        state = e.new_state
        activated: int | None
        if state is AlarmState.NORMAL:
            activated = None
        elif e.action == Action.ACTIVATE:
            activated = e.ts_us
        elif e.prev_state is AlarmState.NORMAL or prev is None:
            activated = None
        else:
            activated = prev.activated_us
        until = None
        if state is AlarmState.SHELVED:
            until = e.shelved_until_us if e.shelved_until_us is not None else (prev.shelved_until_us if prev else None)
        self._alarms[e.alarm_id] = AlarmSnapshot(
            alarm_id=e.alarm_id,
            tag_id=e.tag_id,
            condition=e.condition,
            priority=e.priority,
            state=state,
            active=state in _ACTIVE,
            acked=state not in _UNACKED,
            value=e.value,
            limit=e.limit,
            since_us=e.ts_us,
            activated_us=activated,
            shelved_until_us=until,
            out_of_service=state is AlarmState.OUT_OF_SERVICE,
            suppressed=state is AlarmState.SUPPRESSED,
            user=e.user,
            comment=e.comment,
        )
        self.stats["batches"] += 1  # the API's alarm list is cached until this changes
        self.stats["mirror_events"] += 1

    def get(self, alarm_id: str) -> AlarmSnapshot:
        s = self._alarms.get(alarm_id)
        return s if s is not None else super().get(alarm_id)

    def current(self) -> list[AlarmSnapshot]:
        return [s for s in self._alarms.values() if s.state is not AlarmState.NORMAL]

    def process(self, batch: ReadingBatch) -> list[AlarmEvent]:
        raise RuntimeError("an api instance judges no readings: the engine shards do")

    def tick(self, now_us: int) -> list[AlarmEvent]:
        return []

    def set_device_comm(self, device_id: str, ok: bool, now_us: int) -> list[AlarmEvent]:
        return []


@dataclass
class MirrorStats:
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> messages set aside
    last_seq: int = 0  # the last stream sequence applied


class EventFollower:
    """Feeds the mirror and the live hub from ``<ns>.events.*``, in stream order."""

    def __init__(self, runtime: Runtime, mirror: AlarmMirror, bus: Bus) -> None:
        self.runtime = runtime
        self.mirror = mirror
        self.bus = bus
        self.stats = MirrorStats()
        self.caught_up = asyncio.Event()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._changed = asyncio.Event()
        self._start_time: datetime | None = None

    async def load(self) -> int:
        """The journal's current alarms; the stream is then followed from ``REPLAY_S`` before."""
        self._start_time = datetime.now(UTC) - timedelta(seconds=REPLAY_S)
        async with self.runtime.db.pool.acquire() as conn:
            current = await journal.load_current(conn)
        self.mirror.load(current)
        return len(current)

    def feed(self, data: bytes, msg_id: str | None, seq: int) -> None:
        """Apply one message; one that is not an alarm event is counted and set aside, never fatal."""
        self.stats.last_seq = seq
        try:
            e = event_from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            reason = "not an alarm event"
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
            self.mirror.stats["mirror_rejected"] += 1
            log.error("api: events message %d set aside: %s: %s", seq, reason, err)
            return
        # applied and published in one synchronous step: a WebSocket snapshot is before or after it
        self.mirror.apply(e)
        self.runtime.hub.publish_events([e], self.runtime.directory().place_of)
        self.stats.events += 1
        if msg_id is not None:
            self._seen[msg_id] = None
            if len(self._seen) > SEEN_KEEP:
                self._seen.popitem(last=False)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_seen(self, msg_ids: Sequence[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not all(m in self._seen for m in msg_ids):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def run(self) -> None:
        """An ordered consumer from where the last one stopped (a restart of this loop resumes)."""
        if self.stats.last_seq:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.stats.last_seq + 1
            )
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._start_time)
        s = self.bus.subjects
        sub = await self.bus.js.subscribe(s.events("*"), stream=s.events_stream, ordered_consumer=True, config=config)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except TimeoutError:
                    self.caught_up.set()  # nothing more to replay
                    continue
                meta = msg.metadata
                self.feed(msg.data, (msg.headers or {}).get("Nats-Msg-Id"), int(meta.sequence.stream))
                if meta.num_pending == 0:
                    self.caught_up.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class ValueFollower:
    """The latest values (WebSocket values, the compliance view's "data arriving") from
    ``<ns>.readings.*``: an api instance sees the readings the gateways publish, as one process sees its
    gateways' batches. Read from ``REPLAY_S`` back at start; the hub keeps the newest value per tag, so a
    replay never sets a value back."""

    def __init__(self, runtime: Runtime, mirror: AlarmMirror, bus: Bus) -> None:
        self.runtime = runtime
        self.mirror = mirror
        self.bus = bus

    async def run(self) -> None:
        start = datetime.now(UTC) - timedelta(seconds=REPLAY_S)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
        s = self.bus.subjects
        sub = await self.bus.js.subscribe(
            s.readings("*"), stream=s.readings_stream, ordered_consumer=True, config=config
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except TimeoutError:
                    continue
                try:
                    batch = decode_batch(msg.data)
                except CodecError as e:  # the writers and shards set it aside too
                    self.mirror.stats["mirror_rejected"] += 1
                    log.error("api: readings message %s set aside: %s", msg.metadata.sequence.stream, e)
                    continue
                self.runtime.hub.publish_values(batch, self.runtime.tags)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class ShardClient:
    """``Runtime.act`` for an api instance: the action goes to the shard owning the alarm's site."""

    def __init__(self, bus: Bus, partitions: int, follower: EventFollower) -> None:
        self.bus = bus
        self.partitions = partitions
        self.follower = follower

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
        if site is None:
            raise RecordNotPossible(f"alarm {alarm_id!r} belongs to no site: no engine shard takes actions on it")
        request = {
            "action": action,
            "alarm_id": alarm_id,
            "actor": {"name": actor.name, "token_id": actor.token_id, "role": actor.role},
            "comment": comment,
            "duration_s": duration_s,
            "site": site,
        }
        subject = self.bus.subjects.ops(partition_of(site, self.partitions))
        try:
            msg = await self.bus.nc.request(subject, json.dumps(request).encode(), timeout=OPS_TIMEOUT_S)
        except NoRespondersError:
            raise RecordNotPossible(f"no engine shard serves site {site!r}: the action was not applied") from None
        except (NatsError, TimeoutError, OSError) as e:
            raise RecordNotPossible(
                f"the engine shard of site {site!r} did not answer within {OPS_TIMEOUT_S:g} s ({type(e).__name__}): "
                "look at the alarm's journal before trying again"
            ) from None
        reply = json.loads(msg.data)
        error = reply.get("error")
        if error is not None:
            detail = str(reply.get("detail", error))
            if error == "unknown":
                raise UnknownAlarm(alarm_id)
            if error == "invalid":
                raise InvalidTransition(detail)
            if error == "value":
                raise ValueError(detail)
            raise RecordNotPossible(detail)
        events = [event_from_dict(d) for d in reply["events"]]
        # answered once this instance shows it (a GET right after the POST sees the action)
        await self.follower.wait_seen([event_msg_id(e) for e in events], SEEN_WAIT_S)
        return ActionResult(
            events, snapshot_from_dict(reply["before"]), snapshot_from_dict(reply["after"]), str(reply["record"])
        )


@contextlib.asynccontextmanager
async def api_runtime(settings: Settings, bus: Bus) -> AsyncIterator[Runtime]:
    """A Runtime for the API routes whose alarm state mirrors the engine shards'."""
    config = load_configuration(settings)  # every site and rule file checked: StartupError (exit 2)
    assert config.rules is not None
    sites = config.sites
    # the mirror never judges readings: its rules are compiled over the sites' own tag ids
    local = TagIndex.from_sites(sites)
    mirror = AlarmMirror(compile_rules(config.rules, sites, local))
    async with open_database(settings) as db:
        runtime = Runtime(settings, db, ReadingStore(db.pool, db.caps))
        async with db.pool.acquire() as conn:
            runtime.tags = await tag_index(conn)  # the tags as the shards registered them (values, series)
        runtime.sites.extend(sites)
        for site in sites:
            runtime.site_of.update({tag_ref(site.id, t.id): site.id for t in site.tags})
            set_site_timezone(site.id, site.site.timezone)
        runtime.engine = mirror
        # the sites the hub registers from enterprise uplinks, served beside the files' own
        registered = SiteFollower(runtime, frozenset(s.id for s in sites))
        await registered.refresh()
        follower = EventFollower(runtime, mirror, bus)
        runtime.remote_act = ShardClient(bus, settings.partitions, follower).act
        await runtime.recorder.replay()  # refused actions' audit rows of a previous run
        loaded = await follower.load()
        sup = Supervisor()
        sup.start("journal-writer", runtime.recorder.run, essential=True)
        sup.start("events-follower", follower.run, essential=True)
        sup.start("values-follower", ValueFollower(runtime, mirror, bus).run)
        sup.start("sites-follower", registered.run)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.caught_up.wait(), 30.0)
        log.info(
            "api: sites %s, %d alarms from the journal, %d events replayed from the stream",
            [s.id for s in sites],
            loaded,
            follower.stats.events,
        )
        runtime.supervisor = sup
        try:
            yield runtime
        finally:
            with contextlib.suppress(TimeoutError):
                await runtime.flush_journal(timeout_s=5.0)
            await sup.stop()
            runtime.recorder.keep_leftovers()
