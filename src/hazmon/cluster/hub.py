"""`hazmon serve --role hub`: the regulator's receiver of enterprise uplinks, feeding the same streams as
the gateways, so that a regulator's hazmon holds every connected enterprise's data (docs/scaling.md).

The receiver (``hazmon.hub.receiver``: HMAC-SM3, SM4-CBC, duplicates by ``msg_id``) hands each message to
``BusSink``, which keeps it in the JSON-lines file of ``hazmon hub receive`` and, first, feeds it on:

- ``base`` → the enterprise's site upserted into the registry (``storage.registry``), so its tags get
  permanent keys, with a ``site.load`` audit row in the same transaction when it changed; a site
  registered for another enterprise is refused (422);
- ``realtime`` → one reading batch (``hazmon.cluster.codec``) on ``<ns>.readings.<partition of the site>``,
  its batch id derived from the enterprise and the message id: a message sent again (the sender delivers
  at least once) is the same batch, dropped by the stream's duplicate window and, later, by the store's
  ledger — the writers store each reading once;
- ``alarm`` → one event per raise/clear on ``<ns>.events.<site>`` with a message id derived from the event.

A message is kept in the file only once it was fed: a failure of the database or the bus is a 503 and the
sender retries; a message whose content cannot be fed (a site that does not validate, a site of another
enterprise) is refused (400/422) and counted, and the sender sets it aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import uvicorn
from nats.errors import Error as NatsError

from hazmon.cluster.bus import Bus, partition_of
from hazmon.cluster.codec import encode_batch
from hazmon.config import ConfigError, Settings
from hazmon.errors import InvalidFile
from hazmon.hub.base import site_from_base
from hazmon.hub.credentials import load_credentials
from hazmon.hub.receiver import create_receiver
from hazmon.hub.sink import JsonlSink, SinkRefused, SinkUnavailable
from hazmon.plant.tag import local_id, tag_ref
from hazmon.reading import ReadingBatch
from hazmon.regulator.gb18218 import GradingError
from hazmon.startup import audit_site_load, fingerprint
from hazmon.storage.database import open_database
from hazmon.storage.registry import upsert_site

log = logging.getLogger("hazmon.cluster.hub")

# batch ids of uplinked readings: uuid5(HUB_NAMESPACE, "<USCC>/<msg_id>")
HUB_NAMESPACE = uuid.UUID("5d1c6a8e-0f0b-4c39-9a43-7b6f3e2d1c10")
_QUALITY = {"good": 0, "uncertain": 64, "bad": 128}
_STATE = {"raise": "active_unack", "clear": "normal"}


def batch_id_of(enterprise_code: str, msg_id: str) -> uuid.UUID:
    return uuid.uuid5(HUB_NAMESPACE, f"{enterprise_code}/{msg_id}")


def iso_to_us(values: list[Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """ISO 8601 UTC times (``…Z``) to Unix microseconds, all at once."""
    text = np.array(values, dtype=np.str_)
    return np.strings.rstrip(text, "Z").astype("datetime64[us]").astype(np.int64)


@dataclass(frozen=True, slots=True)
class _SiteKeys:
    uscc: str
    keys: dict[str, int]  # tag id -> key


class BusSink:
    """The hub's sink in the hub role: feeds the registry and the bus, then keeps the message in ``keep``."""

    def __init__(self, bus: Bus, pool: asyncpg.Pool, partitions: int, keep: JsonlSink) -> None:
        self.bus = bus
        self.pool = pool
        self.partitions = partitions
        self.keep = keep
        self._sites: dict[str, _SiteKeys] = {}
        self.fed: Counter[str] = Counter()  # sites, batches, readings, events
        self.rejected: Counter[str] = Counter()  # reason -> messages (or readings, for unknown tags)

    # ------------------------------------------------------------------ the Sink protocol

    async def accept(self, msg: dict[str, Any]) -> bool:
        if self.keep.is_duplicate(msg):
            return False
        kind = msg.get("type")
        code = str(msg.get("enterprise_code"))
        try:
            if kind == "base":
                await self._base(msg, code)
            elif kind == "realtime":
                await self._realtime(msg, code)
            elif kind == "alarm":
                await self._alarms(msg, code)
        except asyncpg.DataError as e:  # a value the database cannot hold (a NUL character, out of range)
            self.rejected["a value the database cannot hold"] += 1
            raise SinkRefused(422, f"a value the database cannot hold: {e}") from None
        except SinkRefused as e:
            self.rejected[e.reason.split(":")[0][:60]] += 1
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, NatsError, TimeoutError) as e:
            raise SinkUnavailable(f"{type(e).__name__}: {e}") from None
        return self.keep.accept(msg)

    def stats(self) -> dict[str, Any]:
        return {**self.keep.stats(), "fed": dict(self.fed), "rejected_content": dict(self.rejected)}

    # ------------------------------------------------------------------ base data

    async def _base(self, msg: dict[str, Any], code: str) -> None:
        try:
            site = site_from_base(msg.get("data"), code, f"base message {msg.get('msg_id')}")
        except InvalidFile as e:
            raise SinkRefused(422, f"base data do not make a valid site: {e}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchval(
                "SELECT e.uscc FROM sites s JOIN enterprises e ON e.id = s.enterprise_id WHERE s.id = $1", site.id
            )
            if owner is not None and owner != code:
                raise SinkRefused(422, f"another enterprise's site: {site.id!r} is registered for {owner}")
            other = await conn.fetchval("SELECT uscc FROM enterprises WHERE id = $1", site.enterprise.id)
            if other is not None and other != code:
                raise SinkRefused(
                    422, f"another enterprise's id: {site.enterprise.id!r} is registered with USCC {other}"
                )
            try:
                summary = await upsert_site(conn, site)
            except GradingError as e:
                raise SinkRefused(422, f"site cannot be registered: {site.id!r}: {e}") from None
            # recorded in the same transaction, once per change (base data are sent at every start)
            await audit_site_load(
                conn, site, fingerprint(site), summary,
                actor=f"hazmon hub (enterprise {code})", source={"uplink": str(msg.get("msg_id"))},
            )  # fmt: skip
        self._sites.pop(site.id, None)
        self.fed["sites"] += 1
        log.info("hub: site %s of enterprise %s registered: %s", site.id, code, summary)

    async def _site(self, site_id: str, code: str) -> _SiteKeys:
        hit = self._sites.get(site_id)
        if hit is None:
            async with self.pool.acquire() as conn:
                uscc = await conn.fetchval(
                    "SELECT e.uscc FROM sites s JOIN enterprises e ON e.id = s.enterprise_id WHERE s.id = $1", site_id
                )
                if uscc is None:
                    raise SinkRefused(
                        422, f"no base data: site {site_id!r} is not registered here; send base data first"
                    )
                rows = await conn.fetch("SELECT id, key FROM tags WHERE site_id = $1 AND active", site_id)
            hit = _SiteKeys(uscc, {r["id"]: r["key"] for r in rows})
            self._sites[site_id] = hit
        if hit.uscc != code:
            raise SinkRefused(422, f"another enterprise's site: {site_id!r} belongs to another enterprise")
        return hit

    # ------------------------------------------------------------------ real-time values

    async def _realtime(self, msg: dict[str, Any], code: str) -> None:
        try:
            data = msg["data"]
            site_id = str(data["site_code"])
            values = data["values"]
            if not isinstance(values, list):
                raise TypeError("values is not a list")
        except (KeyError, TypeError) as e:
            raise SinkRefused(400, f"realtime: missing or malformed field: {e}") from None
        site = await self._site(site_id, code)
        if not values:
            return
        try:
            # columns straight from the message's lists; no per-reading objects after this point
            key = np.array([site.keys.get(v["tag_code"], -1) for v in values], dtype=np.int64)
            ts = iso_to_us([v["ts"] for v in values])
            value = np.array([v["value"] for v in values], dtype=np.float64)
            quality = np.array(
                [v["quality_code"] if "quality_code" in v else _QUALITY[v["quality"]] for v in values], dtype=np.int64
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SinkRefused(400, f"realtime: a value is malformed: {e}") from None
        if ((quality < 0) | (quality > 255)).any():
            raise SinkRefused(400, "realtime: quality_code out of 0..255")
        known = key >= 0
        unknown = int((~known).sum())
        if unknown:
            self.rejected["unknown tag"] += unknown  # readings of tags the base data did not name
        if not known.any():
            return
        batch = ReadingBatch(
            key[known].astype(np.int32),
            ts[known],
            value[known],
            quality[known].astype(np.uint8),
            batch_id_of(code, str(msg["msg_id"])),
        )
        subject = self.bus.subjects.readings(partition_of(site_id, self.partitions))
        await self.bus.publish(subject, encode_batch(batch), str(batch.batch_id))
        self.fed["batches"] += 1
        self.fed["readings"] += len(batch)

    # ------------------------------------------------------------------ alarms

    async def _alarms(self, msg: dict[str, Any], code: str) -> None:
        try:
            data = msg["data"]
            site_id = str(data["site_code"])
            events = [e for e in data["events"] if isinstance(e, dict)]
            ts = iso_to_us([e["ts"] for e in events]) if events else np.zeros(0, np.int64)
            # the enterprise names its alarms within the site; here they are named across sites
            alarm_ids = [tag_ref(site_id, local_id(str(e["alarm_id"]))) for e in events]
            payloads = [
                (
                    f"{alarm_id}|{int(t)}|{e.get('action') or e['kind']}|{e.get('user') or ''}",
                    json.dumps(
                        {
                            "alarm_id": alarm_id,
                            "tag": e.get("tag_code"),
                            "site": site_id,
                            "enterprise": code,
                            "condition": e.get("condition"),
                            "priority": e["priority"],
                            "action": e.get("action") or ("activate" if e["kind"] == "raise" else "clear"),
                            "prev_state": None,
                            "state": _STATE.get(e["kind"], e["kind"]),
                            "value": e.get("value"),
                            "limit": e.get("limit"),
                            "ts_us": int(t),
                            "user": e.get("user"),
                            "comment": None,
                            "source": "uplink",
                        },
                        allow_nan=False,
                    ).encode(),
                )
                for e, t, alarm_id in zip(events, ts, alarm_ids, strict=True)
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise SinkRefused(400, f"alarm: missing or malformed field: {e}") from None
        await self._site(site_id, code)
        subject = self.bus.subjects.events(site_id)
        for msg_id, payload in payloads:
            await self.bus.publish(subject, payload, msg_id)
        self.fed["events"] += len(payloads)


# ---------------------------------------------------------------- process entry


class _Server(uvicorn.Server):
    """Signals are the process's (``run_role``): the receiver stops when ``stop`` is set."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def run_hub(settings: Settings, bus: Bus, stop: asyncio.Event) -> None:
    hub = settings.hub
    if hub.credentials is None:
        raise ConfigError("invalid configuration:\n  HAZMON_HUB__CREDENTIALS: the hub role needs a credentials file")
    creds = load_credentials(hub.credentials)
    out = hub.out if hub.out is not None else settings.data_dir / "hub" / "received.jsonl"
    async with open_database(settings) as db:
        keep = JsonlSink(out)
        try:
            sink = BusSink(bus, db.pool, settings.partitions, keep)
            app = create_receiver(creds.by_app, sink, creds.enterprises)
            config = uvicorn.Config(
                app,
                host=hub.host,
                port=hub.port,
                log_config=None,
                ssl_certfile=str(hub.tls_cert) if hub.tls_cert else None,
                ssl_keyfile=str(hub.tls_key) if hub.tls_key else None,
            )
            server = _Server(config)
            task = asyncio.create_task(server.serve(), name="hub receiver")
            log.info("hub: receiving uplinks on %s:%d for %d app ids", hub.host, hub.port, len(creds.by_app))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopper.cancel()
            await task
        finally:
            keep.close()
