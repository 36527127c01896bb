"""The uplink to the provincial hazardous-chemical risk monitoring and early-warning platform
(危险化学品安全生产风险监测预警系统): base data and real-time sensing data, JSON over HTTPS POST,
SM4-CBC encrypted and HMAC-SM3 signed with what the authority issued (docs/uplink.md).

What is sent, and when::

    base       enterprise, site, installations (GB 18218 grade), equipment, tags   at start, and when the site changes
    realtime   the newest value of every uplinked tag                               every ``interval_s`` (10 s)
    alarm      alarm raise / clear (or reset) of uplinked tags and the site's devices at once
    heartbeat  link status and backlog (not queued: it says "now")                  every ``heartbeat_s``

Uplinked tags: those named in ``uplink.tags``, or else every tag of a major hazard installation.

Every message but the heartbeat goes through the disk queue (``uplink_queue``), in order, and leaves
it only when the platform answered ``code 0``. Failures are retried with backoff; a message the
platform refuses as malformed (HTTP 400/413/422) is set aside in ``rejected.jsonl`` and counted, so
one bad message cannot stop the link. When the oldest unsent message is older than
``backlog_alarm_s`` the runtime raises the alarm ``hazmon.uplink:comm.LOSS``.

The runtime wires it (``Runtime.uplink``): it calls ``on_events`` with every batch of alarm events and
runs ``run`` as a long-running task. This module knows the plant model and the alarm vocabulary,
nothing of the store or the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from hazmon.alarms.alarm import Action, AlarmEvent, split_alarm_id
from hazmon.backoff import Backoff, BackoffConfig
from hazmon.config import UplinkSettings
from hazmon.plant.site import Site
from hazmon.plant.tag import TagIndex, local_id, site_of_ref, tag_ref
from hazmon.regulator.sm4 import parse_hex_key
from hazmon.regulator.uplink_payload import (
    Credentials,
    alarm_event,
    base_data,
    installation_grades,
    message,
    realtime_data,
    seal,
)
from hazmon.regulator.uplink_queue import Record, UplinkQueue

log = logging.getLogger(__name__)

UPLINK_OWNER = "hazmon.uplink"  # its alarm: hazmon.uplink:comm.LOSS
RETRY = BackoffConfig(initial_s=1.0, max_s=30.0, jitter=0.1)
_PERMANENT = {400, 413, 422}  # the platform refuses this message as such: retrying cannot help
_SENT_ACTIONS = {Action.ACTIVATE.value, Action.CLEAR.value, Action.RESET.value}  # raise and clear

LatestValues = Callable[[npt.NDArray[np.int32]], list[dict[str, Any]]]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class UplinkStats:
    enqueued: Counter[str] = field(default_factory=Counter)  # by message type, this process
    sent: int = 0  # acknowledged by the platform, this process
    rejected: Counter[str] = field(default_factory=Counter)  # refused for good, by reason
    post_failures: Counter[str] = field(default_factory=Counter)  # retried, by reason
    heartbeats: int = 0
    heartbeat_failures: int = 0
    last_ok_us: int | None = None
    last_error: str | None = None
    up: bool = False  # the last POST succeeded


@dataclass(frozen=True, slots=True)
class _Feed:
    """What is uplinked of one site."""

    site: Site
    tag_ids: tuple[str, ...]
    keys: npt.NDArray[np.int32]
    place: dict[str, str]  # tag id -> installation id
    equipment: dict[str, str]  # tag id -> equipment id
    base_hash: str

    @property
    def enterprise_code(self) -> str:
        return self.site.enterprise.uscc


def credentials(settings: UplinkSettings) -> Credentials:
    if not (settings.app_id and settings.app_secret and settings.sm4_key and settings.sm4_iv):
        raise ValueError("uplink: app_id, app_secret, sm4_key and sm4_iv are required")
    return Credentials(
        settings.app_id,
        settings.app_secret.get_secret_value().encode(),
        parse_hex_key(settings.sm4_key.get_secret_value(), "uplink.sm4_key"),
        parse_hex_key(settings.sm4_iv.get_secret_value(), "uplink.sm4_iv"),
    )


class Uplink:
    def __init__(
        self,
        settings: UplinkSettings,
        data_dir: Path,
        *,
        sites: Callable[[], Sequence[Site]],
        tags: Callable[[], TagIndex],
        latest: LatestValues,
        site_of: Callable[[str], str | None],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if settings.endpoint is None:
            raise ValueError("uplink: no endpoint configured")
        self.settings = settings
        self.endpoint = settings.endpoint.strip()
        self.creds = credentials(settings)
        self.queue = UplinkQueue(data_dir / "uplink", max_bytes=int(settings.queue_max_mb * 1024 * 1024))
        self.stats = UplinkStats()
        self._sites = sites
        self._tags = tags
        self._latest = latest
        self._site_of = site_of
        self._transport = transport
        self._alarms: list[AlarmEvent] = []
        self._alarm_wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._feeds: dict[str, _Feed] = {}
        self._sites_seen: tuple[int, ...] = ()
        self._warned_unknown = False

    # ------------------------------------------------------------------ from the runtime (hot path)

    def on_events(self, events: Sequence[AlarmEvent]) -> None:
        """Alarm events of a batch: raise and clear are queued at once (by the producer task)."""
        added = False
        for e in events:
            if e.action in _SENT_ACTIONS:
                self._alarms.append(e)
                added = True
        if added:
            self._alarm_wake.set()

    def backlog_overdue(self, now: int | None = None) -> bool:
        """Whether the oldest unsent message has waited longer than ``backlog_alarm_s``."""
        age = self.queue.oldest_age_s(now_us() if now is None else now)
        return age is not None and age > self.settings.backlog_alarm_s

    # ------------------------------------------------------------------ the long-running task

    async def run(self) -> None:
        try:
            async with (
                httpx.AsyncClient(
                    timeout=self.settings.timeout_s, transport=self._transport, verify=self._tls()
                ) as client,
                asyncio.TaskGroup() as tg,
            ):
                tg.create_task(self._producer(), name="uplink producer")
                tg.create_task(self._sender(client), name="uplink sender")
        finally:
            self._flush_alarms()  # on disk before stopping: a restart loses no alarm transition

    def _tls(self) -> ssl.SSLContext:
        """Verify the platform's certificate: against ``ca_file`` when given, the system's CAs otherwise."""
        ca = self.settings.ca_file
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)

    async def _producer(self) -> None:
        self._refresh(force_base=True)
        interval = self.settings.interval_s
        next_rt = time.monotonic() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._alarm_wake.wait(), max(0.0, next_rt - time.monotonic()))
            self._alarm_wake.clear()
            self._flush_alarms()
            now = time.monotonic()
            if now >= next_rt:
                self._refresh()
                self._enqueue_realtime()
                next_rt += interval
                if next_rt < now:  # fell behind (a long pause): keep the period from now on
                    next_rt = now + interval

    async def _sender(self, client: httpx.AsyncClient) -> None:
        backoff = Backoff(RETRY)
        next_heartbeat = time.monotonic()
        while True:
            if time.monotonic() >= next_heartbeat:
                await self._heartbeat(client)
                next_heartbeat = time.monotonic() + self.settings.heartbeat_s
            rec = self.queue.peek()
            if rec is None:
                self._send_wake.clear()
                if self.queue.peek() is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._send_wake.wait(), max(0.0, next_heartbeat - time.monotonic()))
                continue
            outcome = await self._post(client, self._message(rec))
            if outcome is None:
                self.queue.ack(rec.seq)
                self.stats.sent += 1
                backoff.reset()
            elif outcome.startswith("rejected:"):
                reason = outcome.removeprefix("rejected:")
                self.stats.rejected[reason[:80]] += 1
                log.error("uplink: the platform refused message %s for good: %s", rec.seq, reason)
                self.queue.reject(rec, reason)
            else:
                delay = backoff.next_delay()
                if backoff.failures == 1 or backoff.failures % 20 == 0:
                    log.warning("uplink: %s (backlog %d, retrying in %.1f s)", outcome, self.queue.backlog, delay)
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ producing

    def _refresh(self, *, force_base: bool = False) -> None:
        """Recompute what is uplinked when the sites changed; queue base data for a changed site."""
        sites = list(self._sites())
        seen = (*tuple(id(s) for s in sites), len(self._tags()))
        if seen == self._sites_seen and not force_base:
            return
        self._sites_seen = seen
        feeds = {s.id: self._feed(s) for s in sites}
        self._warn_unknown(sites)
        items = []
        created = now_us()
        for site_id, feed in feeds.items():
            old = self._feeds.get(site_id)
            if force_base or old is None or old.base_hash != feed.base_hash:
                items.append(("base", feed.enterprise_code, base_data(feed.site, feed.tag_ids), created))
        self._feeds = feeds
        self._put(items)

    def _feed(self, site: Site) -> _Feed:
        eq_inst = {e.id: e.installation for e in site.equipment}
        if self.settings.tags is not None:
            wanted = set(self.settings.tags)
            ids = [t.id for t in site.tags if t.id in wanted]
        else:
            grades = installation_grades(site)
            # an installation that cannot be graded is sent: better too much than a blind spot
            major = {i for i, g in grades.items() if g["major_hazard"] is not False}
            ids = [t.id for t in site.tags if eq_inst.get(t.equipment) in major]
        tags = self._tags()
        known = [t for t in ids if tag_ref(site.id, t) in tags]
        keys = np.array([tags.key(tag_ref(site.id, t)) for t in known], dtype=np.int32)
        equipment = {t.id: t.equipment for t in site.tags if t.id in set(known)}
        data = base_data(site, known)
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
        return _Feed(site, tuple(known), keys, {t: eq_inst.get(e, "") for t, e in equipment.items()}, equipment, digest)

    def _warn_unknown(self, sites: list[Site]) -> None:
        if self.settings.tags is None or self._warned_unknown:
            return
        known = {t.id for s in sites for t in s.tags}
        unknown = sorted(set(self.settings.tags) - known)
        if unknown:
            self._warned_unknown = True
            log.warning("uplink.tags names %d tags no site has (not sent): %s", len(unknown), ", ".join(unknown[:20]))

    def _enqueue_realtime(self) -> None:
        created = now_us()
        items = []
        for feed in self._feeds.values():
            if not feed.keys.size:
                continue
            values = self._latest(feed.keys)
            if values:
                data = realtime_data(feed.site.id, created, values, feed.place)
                items.append(("realtime", feed.enterprise_code, data, created))
        self._put(items)

    def _flush_alarms(self) -> None:
        if not self._alarms:
            return
        events, self._alarms = self._alarms, []
        by_site: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            owner = e.tag_id
            if owner is None:
                try:
                    owner = split_alarm_id(e.alarm_id)[0]
                except KeyError:
                    continue
            site_id = self._site_of(owner) or site_of_ref(owner)
            feed = self._feeds.get(site_id) if site_id is not None else None
            if feed is None:
                continue
            tag = local_id(e.tag_id) if e.tag_id is not None else None  # the platform knows the site's tag codes
            if tag is not None and tag not in feed.place:
                continue  # a tag that is not uplinked
            inst = feed.place.get(tag) if tag is not None else None
            equip = feed.equipment.get(tag) if tag is not None else None
            by_site.setdefault(feed.site.id, []).append(alarm_event(e, inst, equip))
        created = now_us()
        items = [
            ("alarm", self._feeds[s].enterprise_code, {"site_code": s, "events": evs}, created)
            for s, evs in by_site.items()
        ]
        try:
            self._put(items)
        except OSError:
            self._alarms[:0] = events  # kept for the next try (the task is restarted and alarms it)
            raise

    def _put(self, items: list[tuple[str, str, Any, int]]) -> None:
        if not items:
            return
        # the message id is the queue's; the message gets it when sent (see _message)
        self.queue.put([(kind, {"enterprise_code": c, "data": data}, created) for kind, c, data, created in items])
        for kind, *_ in items:
            self.stats.enqueued[kind] += 1
        self._send_wake.set()

    def _message(self, rec: Record) -> dict[str, Any]:
        return message(
            self.queue.message_id(rec.seq),
            rec.seq,
            rec.kind,
            rec.msg["enterprise_code"],
            rec.created_us,
            rec.msg["data"],
        )

    # ------------------------------------------------------------------ sending

    async def _post(self, client: httpx.AsyncClient, msg: dict[str, Any]) -> str | None:
        """POST one message; None when the platform has it, else why not (``rejected:…`` when for good)."""
        # SM4 is pure Python (~4 µs a byte): in a thread, so that the event loop (the hot path) keeps running
        envelope = await asyncio.to_thread(seal, self.creds, msg)
        try:
            r = await client.post(self.endpoint, json=envelope)
        except httpx.HTTPError as e:
            return self._failed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        try:
            body = r.json()
        except ValueError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        detail = body.get("msg") if isinstance(body, dict) else None
        if r.status_code == 200 and code == 0:
            self.stats.up = True
            self.stats.last_ok_us = now_us()
            return None
        reason = f"HTTP {r.status_code}" + (f" code {code}" if code is not None else "")
        reason += f": {detail}" if detail else ""
        if r.status_code in _PERMANENT:
            self.stats.up = True  # the platform is there; it did not like this message
            return f"rejected:{reason}"
        return self._failed(reason)

    def _failed(self, reason: str) -> str:
        self.stats.up = False
        self.stats.last_error = reason
        self.stats.post_failures[reason.split(":")[0][:60]] += 1
        return reason

    async def _heartbeat(self, client: httpx.AsyncClient) -> None:
        created = now_us()
        codes = sorted({f.enterprise_code for f in self._feeds.values()}) or ["-"]
        age = self.queue.oldest_age_s(created)
        for code in codes:
            msg = message(
                f"{self.queue.stream}-hb-{created}",
                0,
                "heartbeat",
                code,
                created,
                {
                    "sites": sorted(f.site.id for f in self._feeds.values() if f.enterprise_code == code),
                    "backlog": self.queue.backlog,
                    "backlog_oldest_s": None if age is None else round(age, 1),
                },
            )
            if await self._post(client, msg) is None:
                self.stats.heartbeats += 1
            else:
                self.stats.heartbeat_failures += 1
