"""MQTT gateway (aiomqtt on paho-mqtt): topic filters, three JSON payload formats, QoS 1 sessions.

Payload formats (docs/gateways.md has examples)::

    single    the point key is the topic; the payload is a JSON number or boolean, or
              {"value": v, "ts": t, "quality": q} (ts and quality optional)
    batch     {"ts": t, "points": [...], "values": [...], "quality": [...]}   columnar (fastest;
              ts may also be a list) or [{"point": k, "value": v, "ts": t, "quality": q}, ...]
    envelope  {"enterprise": e, "device": d, "ts": t,
               "readings": [{"point": p, "value": v, "ts": t, "quality": q}, ...] or {p: v, ...}}
              the point key is "d/p"

Timestamps are milliseconds since the Unix epoch (UTC) as numbers, or ISO 8601 strings with a
zone; a reading without one takes the envelope's, else the time of receipt. Every reading is
checked, vectorized where the payload is columnar: unmapped point, wrong type, non-finite value
and timestamp more than ``max_future_s`` ahead go to the quarantine, the good readings of the
same message are kept. The session is persistent (``clean_start: false``, MQTT 3.1.1 clean
session off) and subscriptions are QoS 1, so the broker keeps messages while hazmon reconnects.
aiomqtt/paho errors are translated in ``_session`` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon.backoff import Backoff
from hazmon.gateways.base import ConnectionState, DeviceStats, Gateway, GatewayConfigError
from hazmon.gateways.config import MqttGateway, MqttPayloadFormat
from hazmon.gateways.quarantine import Quarantine, Reason
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch, now_us

BROKER_DEVICE = "broker"
MAX_TS_MS = 10**13  # epoch milliseconds beyond year 2286 are not timestamps

log = logging.getLogger(__name__)


class _Bad(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _ts_us(t: Any) -> int:
    """One timestamp (epoch ms number or ISO 8601 string) as Unix µs."""
    if isinstance(t, bool):
        raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {t!r} is a boolean")
    if isinstance(t, int | float):
        if not math.isfinite(t) or not 0 <= t < MAX_TS_MS:
            raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {_short(t)} is not epoch milliseconds")
        return int(t * 1000)
    if isinstance(t, str):
        try:
            dt = datetime.fromisoformat(t)
        except ValueError:
            raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {_short(t)} is not ISO 8601") from None
        if dt.tzinfo is None:
            raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {t!r} has no time zone")
        try:
            us = int(dt.timestamp() * 1_000_000)
        except (OverflowError, ValueError):
            raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {t!r} is out of range") from None
        if not 0 <= us < MAX_TS_MS * 1000:
            raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {t!r} is out of range")
        return us
    raise _Bad(Reason.BAD_TIMESTAMP, f"timestamp {_short(t)} is not a number or string")


def _short(v: Any, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters (a huge or deeply nested value stays one short line)."""
    try:
        text = repr(v)
    except (RecursionError, ValueError):  # nested too deep; an int too long for repr
        return f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ts_column(ts: Any, n: int, default_us: int) -> npt.NDArray[np.int64]:
    if ts is None:
        return np.full(n, default_us, dtype=np.int64)
    if isinstance(ts, list):
        if len(ts) != n:
            raise _Bad(Reason.MALFORMED, f"ts has {len(ts)} entries for {n} values")
        arr = _array(ts)
        if (
            arr is not None
            and arr.dtype.kind in "fi"
            and arr.ndim == 1
            and bool(np.isfinite(arr).all())
            and bool(((arr >= 0) & (arr < MAX_TS_MS)).all())
        ):
            return (arr * 1000).astype(np.int64)
        return np.fromiter((_ts_us(t) for t in ts), dtype=np.int64, count=n)
    return np.full(n, _ts_us(ts), dtype=np.int64)


def _array(items: list[Any]) -> npt.NDArray[Any] | None:
    """``np.array(items)`` (one conversion in C), or None where numpy refuses (ragged, too deep)."""
    try:
        return np.array(items)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None


def _number(v: Any) -> float | None:
    """A JSON number or boolean as float; None for anything else (a string, null, a list, an int beyond float)."""
    if isinstance(v, bool | float):
        return float(v)
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            return None
    return None


class PayloadDecoder:
    """Payload bytes -> reading batch, bad readings to the quarantine. No I/O: testable alone."""

    def __init__(self, config: MqttGateway, tag_index: TagIndex, quarantine: Quarantine) -> None:
        self.max_future_us = int(config.max_future_s * 1_000_000)
        self.max_payload_bytes = config.max_payload_bytes
        self.quarantine = quarantine
        self.keys: dict[str, int] = {point: tag_index.key(tag) for point, tag in config.points.items()}
        # per tag key: the source time of the last reading delivered, to drop a QoS 1 redelivery
        self._last_ts = np.full(max(self.keys.values(), default=-1) + 1, np.iinfo(np.int64).min, np.int64)
        self.repeated = 0
        # what became of each message: at least one reading kept / wholly rejected (with a reason in
        # the quarantine) / only repeats of readings already delivered. They always add up to the
        # messages decoded: no payload vanishes without a trace.
        self.outcomes: dict[str, int] = {"stored": 0, "quarantined": 0, "repeated": 0}

    def decode(self, topic: str, fmt: MqttPayloadFormat, payload: bytes) -> ReadingBatch | None:
        """The readings of one message, or None; never raises (whatever the payload)."""
        before = (self.quarantine.total, self.repeated)
        try:
            batch = self._decode(topic, fmt, payload)
        except Exception as e:  # an input the decoder did not foresee: the message is rejected, not the gateway
            log.exception("gateway %s: decoder failed on a message from %s", self.quarantine.gateway_id, topic)
            self.quarantine.reject(Reason.UNDECODABLE, topic, f"decoder failed: {type(e).__name__}: {e}", payload)
            batch = None
        if batch is not None and len(batch):
            self.outcomes["stored"] += 1
        elif self.quarantine.total != before[0]:
            self.outcomes["quarantined"] += 1
        elif self.repeated != before[1]:
            self.outcomes["repeated"] += 1
        else:  # cannot happen by construction; if it ever does, it is counted, not silent
            self.quarantine.reject(Reason.UNDECODABLE, topic, "message gave no reading and no reason", payload)
            self.outcomes["quarantined"] += 1
            batch = None
        return batch

    def _decode(self, topic: str, fmt: MqttPayloadFormat, payload: bytes) -> ReadingBatch | None:
        received = now_us()
        if len(payload) > self.max_payload_bytes:
            self.quarantine.reject(
                Reason.TOO_LARGE, topic, f"{len(payload)} bytes, more than {self.max_payload_bytes}", payload
            )
            return None
        try:
            doc = json.loads(payload)
        except RecursionError:
            self.quarantine.reject(Reason.TOO_DEEP, topic, "JSON nested too deep", payload)
            return None
        except (ValueError, UnicodeDecodeError) as e:
            self.quarantine.reject(Reason.MALFORMED, topic, f"not JSON: {e}", payload)
            return None
        try:
            if fmt is MqttPayloadFormat.SINGLE:
                points, values, ts, quality = self._single(topic, doc, received)
            elif fmt is MqttPayloadFormat.BATCH:
                points, values, ts, quality = self._batch(doc, received)
            else:
                points, values, ts, quality = self._envelope(doc, received)
            return self._check(topic, payload, points, values, ts, quality, received)
        except _Bad as e:
            self.quarantine.reject(e.reason, topic, e.detail, payload)
            return None
        except RecursionError:
            self.quarantine.reject(Reason.TOO_DEEP, topic, "JSON nested too deep", payload)
            return None

    # -- the three formats, each giving columns: point keys, raw values, ts (µs), quality

    def _single(self, topic: str, doc: Any, received: int) -> tuple[list[Any], list[Any], Any, Any]:
        if isinstance(doc, dict):
            if "value" not in doc:
                raise _Bad(Reason.MALFORMED, "object without 'value'")
            ts = _ts_column(doc.get("ts"), 1, received)
            return [topic], [doc["value"]], ts, [doc.get("quality", 0)]
        return [topic], [doc], np.full(1, received, np.int64), None

    def _rows(self, rows: Any, received: int, prefix: str = "") -> tuple[list[Any], list[Any], Any, Any]:
        if isinstance(rows, dict):  # {point: value}
            return [prefix + str(p) for p in rows], list(rows.values()), np.full(len(rows), received, np.int64), None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise _Bad(Reason.MALFORMED, "readings must be a list of objects")
        try:
            points = [prefix + str(r["point"]) for r in rows]
            values = [r["value"] for r in rows]
        except KeyError as e:
            raise _Bad(Reason.MALFORMED, f"a reading has no {e}") from None
        if any("ts" in r for r in rows):
            ts = np.array([_ts_us(r["ts"]) if "ts" in r else received for r in rows], dtype=np.int64)
        else:
            ts = np.full(len(rows), received, np.int64)
        quality = [r.get("quality", 0) for r in rows] if any("quality" in r for r in rows) else None
        return points, values, ts, quality

    def _batch(self, doc: Any, received: int) -> tuple[list[Any], list[Any], Any, Any]:
        if isinstance(doc, list):
            return self._rows(doc, received)
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("points"), list)
            or not isinstance(doc.get("values"), list)
        ):
            raise _Bad(Reason.MALFORMED, "a batch is a list of readings or {points: [...], values: [...]}")
        points, values = doc["points"], doc["values"]
        if len(points) != len(values):
            raise _Bad(Reason.MALFORMED, f"{len(points)} points but {len(values)} values")
        quality = doc.get("quality")
        if quality is not None and (not isinstance(quality, list) or len(quality) != len(values)):
            raise _Bad(Reason.MALFORMED, "quality must be a list as long as values")
        return points, values, _ts_column(doc.get("ts"), len(values), received), quality

    def _envelope(self, doc: Any, received: int) -> tuple[list[Any], list[Any], Any, Any]:
        if not isinstance(doc, dict) or not isinstance(doc.get("device"), str) or "readings" not in doc:
            raise _Bad(Reason.MALFORMED, "an envelope is {enterprise, device, ts, readings}")
        default = _ts_us(doc["ts"]) if doc.get("ts") is not None else received
        return self._rows(doc["readings"], default, prefix=doc["device"] + "/")

    # -- checks, vectorized

    def _check(
        self,
        topic: str,
        payload: bytes,
        points: list[Any],
        values: list[Any],
        ts: npt.NDArray[np.int64],
        quality: Any,
        received: int,
    ) -> ReadingBatch | None:
        n = len(values)
        if n == 0:
            self.quarantine.reject(Reason.EMPTY, topic, "no readings in the message", payload)
            return None
        keys = np.fromiter(
            (self.keys.get(p, -1) if isinstance(p, str) else -1 for p in points), dtype=np.int64, count=n
        )
        ok = keys >= 0
        if not ok.all():
            missing = [_short(points[i], 40) for i in np.flatnonzero(~ok)[:5]]
            self.quarantine.reject(Reason.UNMAPPED, topic, f"unmapped point(s) {missing}", payload, int((~ok).sum()))
        arr = _array(values)
        if arr is not None and arr.dtype.kind in "fiub" and arr.ndim == 1:  # the common case, in C
            vals = arr.astype(np.float64)
        else:  # mixed or wrong types: find them one by one
            numbers = [_number(v) for v in values]
            typed = np.fromiter((x is not None for x in numbers), dtype=bool, count=n)
            vals = np.fromiter((np.nan if x is None else x for x in numbers), dtype=np.float64, count=n)
            wrong = ok & ~typed
            if wrong.any():
                sample = [_short(values[i], 40) for i in np.flatnonzero(wrong)[:5]]
                self.quarantine.reject(
                    Reason.WRONG_TYPE, topic, f"values not numbers: {sample}", payload, int(wrong.sum())
                )
            ok &= typed
        finite = np.isfinite(vals)
        nonfinite = ok & ~finite
        if nonfinite.any():
            self.quarantine.reject(Reason.NON_FINITE, topic, "NaN or infinite value", payload, int(nonfinite.sum()))
            ok &= finite
        future = ok & (ts > received + self.max_future_us)
        if future.any():
            self.quarantine.reject(
                Reason.FUTURE_TIMESTAMP,
                topic,
                f"timestamp more than {self.max_future_us // 1_000_000} s ahead",
                payload,
                int(future.sum()),
            )
            ok &= ~future
        q: Any = 0
        if quality is not None:
            qa = _array(quality)
            if qa is None or qa.dtype.kind not in "iu" or qa.ndim != 1 or ((qa < 0) | (qa > 255)).any():
                self.quarantine.reject(Reason.WRONG_TYPE, topic, "quality must be integers 0..255", payload, n)
                return None
            q = qa.astype(np.uint8)[ok] if not ok.all() else qa.astype(np.uint8)
        # a reading with the source time of the last one of its tag is a repeat (QoS 1 delivers a
        # message again when its acknowledgement was lost): dropped, counted in ``repeated``
        stamped = ts != received
        if stamped.any():
            repeat = ok & stamped & (ts == self._last_ts[np.where(ok, keys, 0)])
            if repeat.any():
                self.repeated += int(repeat.sum())
                ok &= ~repeat
                if quality is not None:
                    q = np.asarray(quality).astype(np.uint8)[ok]
        if not ok.any():
            return None
        if not ok.all():
            keys, ts, vals = keys[ok], ts[ok], vals[ok]
        np.maximum.at(self._last_ts, keys, np.where(ts != received, ts, self._last_ts[keys]))
        return ReadingBatch.from_columns(keys, ts, vals, q)


class MqttGatewayImpl(Gateway):
    protocol = "mqtt"

    def __init__(self, config: MqttGateway, tag_index: TagIndex, quarantine: Quarantine) -> None:
        super().__init__(config.id, config.stale_after_s, quarantine)
        self.config = config
        missing = [t for t in config.points.values() if t not in tag_index]
        if missing:
            raise GatewayConfigError(f"gateway {config.id}: tags not in the tag index: {', '.join(missing[:10])}")
        self.decoder = PayloadDecoder(config, tag_index, quarantine)
        # Field devices (the envelope's `device`) own the points keyed "<device>/<point>"; the broker
        # device owns the rest. `_device_of[tag key]` indexes `_field` (-1: the broker's).
        self._devices[BROKER_DEVICE] = DeviceStats(BROKER_DEVICE)
        self._field = [DeviceStats(d) for d in config.devices]
        for d in self._field:
            self._devices[d.id] = d
        size = max(self.decoder.keys.values(), default=-1) + 1
        self._device_of = np.full(size, -1, dtype=np.int64)
        broker_keys: set[int] = set()
        field_keys: list[set[int]] = [set() for _ in self._field]
        for point, key in self.decoder.keys.items():
            owner = next((i for i, d in enumerate(config.devices) if point.startswith(f"{d}/")), -1)
            self._device_of[key] = owner
            (field_keys[owner] if owner >= 0 else broker_keys).add(key)
        self._device_keys[BROKER_DEVICE] = np.array(sorted(broker_keys), dtype=np.int32)
        for d, keys in zip(self._field, field_keys, strict=True):
            self._device_keys[d.id] = np.array(sorted(keys), dtype=np.int32)
        self.messages = 0
        self._reported_down = False

    async def _run(self) -> None:
        stats = self._devices[BROKER_DEVICE]
        backoff = Backoff(self.config.backoff)
        b = self.config.broker
        while True:
            stats.state = ConnectionState.CONNECTING
            try:
                await self._session(stats, backoff)
            except _SessionLost as e:
                stats.error("connection", str(e))
                if stats.state is ConnectionState.CONNECTED or not self._reported_down:
                    self._log.warning("broker %s:%d: no connection: %s", b.host, b.port, e)
                    for device in self._devices:
                        self.emit_comm_loss(device)
                    self._reported_down = True
            stats.state = ConnectionState.BACKOFF
            for d in self._field:
                d.state = ConnectionState.BACKOFF
            await backoff.wait()

    async def _session(self, stats: DeviceStats, backoff: Backoff) -> None:
        import aiomqtt

        b = self.config.broker
        password = None
        if b.password_env:
            import os

            password = os.environ.get(b.password_env)
        tls = None
        if b.tls:
            import ssl

            tls = ssl.create_default_context()
        client = aiomqtt.Client(
            b.host,
            b.port,
            identifier=b.client_id,
            username=b.username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=self.config.clean_start,
            keepalive=b.keepalive_s,
            tls_context=tls,
            timeout=10,
        )
        try:
            async with client:
                for topic in self.config.topics:
                    await client.subscribe(topic.filter, qos=self.config.qos)
                stats.connected()
                for d in self._field:
                    d.connected()
                backoff.reset()
                self._reported_down = False
                if stats.reconnects:
                    self._log.info("broker %s:%d: reconnected", b.host, b.port)
                filters = [(aiomqtt.Wildcard(t.filter), t.format) for t in self.config.topics]
                # connected (MQTT keep-alive watches the link): the broker is alive even when quiet
                heartbeat = asyncio.create_task(self._heartbeat(stats))
                try:
                    async for message in client.messages:
                        self._on_message(stats, message.topic, filters, message.payload)
                finally:
                    heartbeat.cancel()
        except aiomqtt.MqttError as e:
            raise _SessionLost(str(e) or type(e).__name__) from e
        except OSError as e:
            raise _SessionLost(str(e)) from e
        raise _SessionLost("the broker closed the session")

    @staticmethod
    async def _heartbeat(stats: DeviceStats) -> None:
        while True:
            stats.alive()
            await asyncio.sleep(1.0)

    def _on_message(self, stats: DeviceStats, topic: Any, filters: list[Any], payload: Any) -> None:
        """One message: decoded, or quarantined with a reason. No payload ends the session or the gateway."""
        self.messages += 1
        try:
            self._deliver(stats, topic, filters, payload)
        except Exception as e:  # a bug, but one message must not stop monitoring: counted, logged, kept
            self._log.exception("message on %s could not be handled", getattr(topic, "value", topic))
            self.quarantine.reject(Reason.UNDECODABLE, str(getattr(topic, "value", topic)), f"{e!r}", None)

    def _deliver(self, stats: DeviceStats, topic: Any, filters: list[Any], payload: Any) -> None:
        fmt = next((f for w, f in filters if topic.matches(w)), None)
        if fmt is None:  # a retained or queued message for a filter no longer configured
            self.quarantine.reject(Reason.UNMAPPED, topic.value, "topic matches no configured filter", None)
            return
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode()
        before = self.decoder.repeated
        batch = self.decoder.decode(topic.value, fmt, bytes(payload))
        if self.decoder.repeated != before:
            stats.errors["repeated"] = stats.errors.get("repeated", 0) + self.decoder.repeated - before
        stats.alive()  # any message shows the broker is there
        if batch is None or len(batch) == 0:
            return
        if not self._field:
            self.emit(stats, batch)
            return
        owners = np.bincount(self._device_of[batch.tag] + 1, minlength=len(self._field) + 1)
        if owners[0]:
            stats.data(int(owners[0]))
        for d, n in zip(self._field, owners[1:].tolist(), strict=True):
            if n:
                d.data(n)
        self.buffer.put(batch)


class _SessionLost(Exception):
    pass
