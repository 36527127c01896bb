"""The live hub: alarm transitions and latest values pushed to WebSocket clients.

Publishing (``publish_events``, ``publish_values``) is synchronous, never awaits and never blocks:
it is called from the runtime's hot path right after the engine. What a client receives:

1. on subscribing, a **snapshot** of the current alarms it follows (taken in the same step as the
   registration, so no transition falls between the snapshot and the stream), and the latest value
   of each tag it follows;
2. then **events**: every alarm transition it follows, in order. Events are queued per client up to
   ``max_events``; a client that falls further behind is **dropped** (its connection is closed with
   a reason; on reconnecting it gets a fresh snapshot), because a transition silently skipped would
   show an operator a wrong alarm state;
3. and **values**, coalesced: the hub keeps the latest value of every tag in arrays, with the
   publish sequence number at which it last changed; a client is sent the tags it follows that
   changed since its last send. A slow client therefore skips intermediate values (it always gets
   the newest) and costs no memory per value.

Values are kept columnar (numpy) so that ``publish_values`` costs a few vector operations per
batch whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from hazmon.alarms.alarm import Action, AlarmEvent, AlarmSnapshot, AlarmState, split_alarm_id
from hazmon.plant.directory import Place
from hazmon.plant.tag import TagIndex, local_id, split_ref
from hazmon.reading import ReadingBatch

# tag or device id -> its site id, or its Place (a system alarm's Place lists the sites it affects)
SiteOf = Callable[[str], "str | Place | None"]


def _where(found: str | Place | None) -> tuple[str | None, frozenset[str]]:
    """(the site, further sites affected) of what a SiteOf returned."""
    if isinstance(found, Place):
        return found.site, found.affects
    return found, frozenset()


def _with_sites(d: dict[str, Any], site: str | None, affects: frozenset[str]) -> dict[str, Any]:
    if affects:  # a system alarm: every site it affects
        d["sites"] = sorted(affects | {site} if site is not None else affects)
    return d


MAX_EVENTS = 10_000
_NO_TS = np.iinfo(np.int64).min


class SlowClient(Exception):
    """The client fell more than ``max_events`` alarm events behind and is dropped."""


def _num(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


_ISO_CACHE: dict[tuple[int, str | None], str] = {}
encode_json = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per call
_ZONES: dict[str, tzinfo] = {}  # site id -> its time zone (the site file's ``timezone:``)


def set_site_timezone(site_id: str, zone: str) -> None:
    """Times of this site's alarms are written in its local time, ISO 8601 with the UTC offset."""
    try:
        _ZONES[site_id] = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        _ZONES.pop(site_id, None)
    _ISO_CACHE.clear()


def site_timezone(site_id: str | None) -> tzinfo:
    return _ZONES.get(site_id, UTC) if site_id is not None else UTC


def _iso(ts_us: int, site: str | None = None) -> str:
    """ISO 8601 in the site's local time with its offset (``2026-11-30T18:42:07.125+08:00``), UTC with
    ``Z`` for a site without a known zone; memoised, since alarm times repeat from one listing to the next."""
    key = (ts_us, site)
    text = _ISO_CACHE.get(key)
    if text is None:
        if len(_ISO_CACHE) > 100_000:
            _ISO_CACHE.clear()
        t = datetime.fromtimestamp(ts_us / 1e6, site_timezone(site)).isoformat()
        text = _ISO_CACHE[key] = t.replace("+00:00", "Z")
    return text


def iso_local(ts_us: int | None, site: str | None) -> str | None:
    """``_iso`` for optional times (None stays None)."""
    return _iso(ts_us, site) if ts_us else None


def owner_of(alarm_id: str, tag_id: str | None) -> str:
    if tag_id is not None:
        return tag_id
    try:
        return split_alarm_id(alarm_id)[0]
    except KeyError:
        return alarm_id


def event_dict(e: AlarmEvent, site: str | None, activated_us: int | None = None) -> dict[str, Any]:
    """An alarm transition as JSON; ``activated_us``: when the alarm became active (kept through
    acknowledge, comment, shelve), None when it is not active or not known."""
    return {
        "alarm_id": e.alarm_id,
        "tag": local_id(e.tag_id) if e.tag_id is not None else None,
        "site": site,
        "condition": e.condition,
        "priority": str(e.priority),
        "prev_state": str(e.prev_state),
        "state": str(e.new_state),
        "action": str(e.action),
        "value": _num(e.value),
        "limit": _num(e.limit),
        "ts_us": e.ts_us,
        "time": _iso(e.ts_us, site),
        "activated_us": activated_us,
        "activated_at": iso_local(activated_us, site),
        "shelved_until_us": e.shelved_until_us,
        "shelved_until": iso_local(e.shelved_until_us, site),
        "user": e.user,
        "comment": e.comment,
    }


def snapshot_dict(s: AlarmSnapshot, site: str | None) -> dict[str, Any]:
    activated = s.activated_us
    return {
        "alarm_id": s.alarm_id,
        "tag": local_id(s.tag_id) if s.tag_id is not None else None,
        "site": site,
        "condition": s.condition,
        "priority": s.priority.value,
        "state": s.state.value,
        "active": s.active,
        "acked": s.acked,
        "value": _num(s.value),
        "limit": _num(s.limit),
        # ``since`` is the last change of state (an acknowledge, a shelve, a comment); ``activated_at``
        # is when the condition last became active and survives every operator action.
        "since_us": s.since_us,
        "since": iso_local(s.since_us, site),
        "activated_us": activated,
        "activated_at": iso_local(activated, site),
        "shelved_until_us": s.shelved_until_us,
        "shelved_until": iso_local(s.shelved_until_us, site),
        "out_of_service": s.out_of_service,
        "suppressed": s.suppressed,
        "user": s.user,
        "comment": s.comment,
    }


@dataclass(frozen=True, slots=True)
class Follow:
    """What a client follows. ``sites`` None means every site (admin tokens only)."""

    sites: frozenset[str] | None
    tags: frozenset[str] = frozenset()
    alarms_only: bool = False

    def wants(self, site: str | None, owner: str, affects: frozenset[str] = frozenset()) -> bool:
        """``affects``: further sites a system alarm affects; following any of them is enough."""
        if owner in self.tags:
            return True
        if self.sites is None:
            return True
        return (site is not None and site in self.sites) or not affects.isdisjoint(self.sites)


class Subscription:
    """One client's queue. Drained by its sender with ``await next_messages()``."""

    def __init__(
        self,
        hub: LiveHub,
        follow: Follow,
        value_keys: npt.NDArray[np.int32],
        tags: TagIndex,
        max_events: int,
    ) -> None:
        self.hub = hub
        self.follow = follow
        self.value_keys = value_keys
        self.tags = tags
        self.max_events = max_events
        self.events: deque[str] = deque()  # pre-serialised event objects
        self.overflowed = False
        self.closed = False
        self.sent_version = 0
        self.wake = asyncio.Event()
        self.events_sent = 0
        self.values_sent = 0

    def _push(self, item: str) -> None:
        if self.overflowed:
            return
        if len(self.events) >= self.max_events:
            self.overflowed = True
            self.events.clear()
            self.wake.set()
            return
        self.events.append(item)
        self.wake.set()

    def pending(self) -> int:
        return len(self.events)

    def _changed_values(self) -> list[str]:
        if self.value_keys.size == 0:
            return []
        hub = self.hub
        keys = self.value_keys[self.value_keys < hub._version.size]
        changed = keys[hub._version[keys] > self.sent_version]
        self.sent_version = hub._seq
        if changed.size == 0:
            return []
        ts = hub._ts[changed]
        val = hub._value[changed]
        q = hub._quality[changed]
        out = []
        for k, t, v, qq in zip(changed.tolist(), ts.tolist(), val.tolist(), q.tolist(), strict=True):
            try:
                site, tag_id = split_ref(self.tags.id(k))
            except KeyError:
                continue
            out.append(
                encode_json(
                    {"site": site, "tag": tag_id, "ts_us": t, "value": v if math.isfinite(v) else None, "quality": qq}
                )
            )
        return out

    def messages(self) -> list[str]:
        """What is ready to send, as JSON texts (events first, then values); may be empty."""
        if self.overflowed:
            raise SlowClient(f"client fell more than {self.max_events} alarm events behind")
        msgs: list[str] = []
        if self.events:
            items = list(self.events)
            self.events.clear()
            self.events_sent += len(items)
            msgs.append('{"type":"events","events":[' + ",".join(items) + "]}")
        values = self._changed_values()
        if values:
            self.values_sent += len(values)
            msgs.append('{"type":"values","values":[' + ",".join(values) + "]}")
        return msgs

    async def next_messages(self) -> list[str]:
        """Wait until something is ready; returns it (raises SlowClient when dropped)."""
        while True:
            self.wake.clear()
            msgs = self.messages()
            if msgs:
                return msgs
            await self.wake.wait()

    def close(self) -> None:
        self.hub.unsubscribe(self)


@dataclass
class HubStats:
    clients: int = 0
    events_published: int = 0
    values_published: int = 0
    clients_dropped: int = 0


class LiveHub:
    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._subs: set[Subscription] = set()
        self._seq = 0
        self._ts = np.full(0, _NO_TS, dtype=np.int64)
        self._value = np.zeros(0, dtype=np.float64)
        self._quality = np.zeros(0, dtype=np.uint8)
        self._version = np.zeros(0, dtype=np.int64)
        # alarm id -> activation time, for the events: refreshed from the engine's snapshot at each
        # subscription, then followed event by event (an activation sets it, a return to normal ends it)
        self._activated: dict[str, int] = {}
        self.stats = HubStats()

    # ------------------------------------------------------------------ subscribers

    def subscribe(
        self,
        follow: Follow,
        snapshot: Iterable[AlarmSnapshot],
        site_of: SiteOf,
        value_keys: npt.ArrayLike = (),
        tags: TagIndex | None = None,
    ) -> tuple[Subscription, list[dict[str, Any]]]:
        """Register a client and return it with its snapshot (alarms it follows, not normal).

        Call it with ``snapshot=engine.current()`` evaluated in the same synchronous step, so the
        snapshot and the event stream neither overlap nor leave a gap.
        """
        keys = np.unique(np.asarray(value_keys, dtype=np.int32)) if not follow.alarms_only else np.zeros(0, np.int32)
        sub = Subscription(self, follow, keys, tags or TagIndex([]), self.max_events)
        sub.sent_version = self._seq  # the snapshot carries the values up to now
        alarms = []
        for s in snapshot:
            if s.state is AlarmState.NORMAL or s.activated_us is None:
                self._activated.pop(s.alarm_id, None)
            else:
                self._activated[s.alarm_id] = s.activated_us
            if s.state is AlarmState.NORMAL:
                continue
            owner = owner_of(s.alarm_id, s.tag_id)
            site, affects = _where(site_of(owner))
            if follow.wants(site, owner, affects):
                alarms.append(_with_sites(snapshot_dict(s, site), site, affects))
        self._subs.add(sub)
        self.stats.clients = len(self._subs)
        return sub, alarms

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            if sub.overflowed:
                self.stats.clients_dropped += 1
        sub.closed = True
        self.stats.clients = len(self._subs)

    @property
    def clients(self) -> int:
        return len(self._subs)

    def last_reading_us(self, keys: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Time of the newest reading the hub has seen for each of ``keys``; -1 where none."""
        k = np.asarray(keys, dtype=np.int64)
        out = np.full(len(k), -1, dtype=np.int64)
        inside = (k >= 0) & (k < self._ts.size)
        ts = self._ts[k[inside]]
        out[inside] = np.where(ts == _NO_TS, -1, ts)
        return out

    def latest_values(self, keys: npt.ArrayLike, tags: TagIndex) -> list[dict[str, Any]]:
        """The newest value the hub has seen for each of ``keys`` (tags never seen are left out)."""
        k = np.asarray(keys, dtype=np.int64)
        k = k[(k >= 0) & (k < self._ts.size)]
        k = k[self._ts[k] != _NO_TS]
        out = []
        for key, t, v, q in zip(
            k.tolist(), self._ts[k].tolist(), self._value[k].tolist(), self._quality[k].tolist(), strict=True
        ):
            try:
                site, tag_id = split_ref(tags.id(key))
            except KeyError:
                continue
            out.append(
                {"site": site, "tag": tag_id, "ts_us": t, "value": v if math.isfinite(v) else None, "quality": q}
            )
        return out

    # ------------------------------------------------------------------ publishing (never blocks)

    def publish_events(self, events: list[AlarmEvent], site_of: SiteOf) -> None:
        if not events:
            return
        self.stats.events_published += len(events)
        if not self._subs:
            return
        activated = self._activated
        for e in events:
            if e.new_state is AlarmState.NORMAL:
                activated.pop(e.alarm_id, None)
            elif e.action == Action.ACTIVATE:
                activated[e.alarm_id] = e.ts_us
            elif e.prev_state is AlarmState.NORMAL:
                activated.pop(e.alarm_id, None)  # out of service, shelved ... from normal: not active
            owner = owner_of(e.alarm_id, e.tag_id)
            site, affects = _where(site_of(owner))
            text: str | None = None
            for sub in self._subs:
                if sub.follow.wants(site, owner, affects):
                    if text is None:
                        text = encode_json(_with_sites(event_dict(e, site, activated.get(e.alarm_id)), site, affects))
                    sub._push(text)

    def _grow(self, size: int) -> None:
        if size <= self._ts.size:
            return
        n = max(size, 2 * self._ts.size, 1024)
        old = self._ts.size
        for name, fill in (("_ts", _NO_TS), ("_value", 0.0), ("_quality", 0), ("_version", 0)):
            arr = getattr(self, name)
            new = np.full(n, fill, dtype=arr.dtype)
            new[:old] = arr
            setattr(self, name, new)

    def publish_values(self, batch: ReadingBatch, tags: TagIndex | None = None) -> None:
        """Record the batch's newest value per tag and wake the clients that follow values."""
        if len(batch) == 0:
            return
        tag = batch.tag
        self._grow(int(tag.max()) + 1)
        self.stats.values_published += len(batch)
        self._seq += 1
        # Newest reading per tag, without sorting: max timestamp per tag, then the readings that
        # carry it (if two share it, the later in the batch wins, as numpy assigns in order).
        ts = self._ts
        np.maximum.at(ts, tag, batch.ts)
        newest = batch.ts == ts[tag]
        k = tag[newest]
        self._value[k] = batch.value[newest]
        self._quality[k] = batch.quality[newest]
        self._version[k] = self._seq
        for sub in self._subs:
            if sub.value_keys.size:
                sub.wake.set()


@dataclass(frozen=True, slots=True)
class AlarmListView:
    """The current alarms, located and serialised once, in list order; valid while ``key`` holds.

    ``items`` are (snapshot, place, JSON text); the runtime keeps the newest view, the alarm routes
    build it (see ``hazmon.api.routes.alarms.current_view``)."""

    engine: object  # held, so that a view is never taken for another engine's
    key: tuple[int, ...]
    items: list[tuple[AlarmSnapshot, Place, str]]
