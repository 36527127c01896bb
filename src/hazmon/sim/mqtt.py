"""MQTT publisher: the gas detection system's IoT gateways, publishing JSON batches with QoS 1.

The point keys of an ``MqttGateway`` config name ``<device>/<point>``; the first topic filter of the
config gives the topic, its ``+`` (or ``#``) replaced by the device. Per format:

- ``envelope``: one message per device and step on ``<filter with + = device>``::

      {"enterprise": "ecs", "device": "gds-hi01", "ts": 1780000000000, "seq": 42,
       "readings": [{"point": "ch01", "value": 0.4, "quality": 0}, ...]}

- ``batch``: one message per step on ``<filter with + = gateway id>``, a list of
  ``{"point": "<device>/<point>", "ts", "value", "quality"}``;
- ``single``: one message per point on the topic named by its key, ``{"ts", "value", "quality"}``.

``ts`` is milliseconds since the Unix epoch (UTC), ``seq`` the model's step count, ``quality``
hazmon's code (0 good, 64 uncertain, >= 128 bad). A device under ``comm_loss`` publishes nothing;
``restart`` disconnects from the broker and reconnects when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any

import aiomqtt
import numpy as np
import numpy.typing as npt

from hazmon.gateways.config import MqttGateway, MqttPayloadFormat

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]


class SimMqttError(Exception):
    """The simulator could not reach or publish to the MQTT broker."""


def topic_for(filter_: str, name: str) -> str:
    """The topic a device publishes on: the filter with its wildcards replaced by ``name``."""
    return filter_.replace("+", name).replace("#", name)


class MqttEndpoint:
    """Publishes the points of one MQTT gateway config to a broker."""

    protocol = "mqtt"

    def __init__(self, enterprise: str, config: MqttGateway, index: dict[str, int], host: str, port: int) -> None:
        self.enterprise = enterprise
        self.config = config
        self.host = host
        self.port = port
        self.format = config.topics[0].format
        self.filter = config.topics[0].filter
        devices: dict[str, list[tuple[str, str]]] = {}
        for key, tag in config.points.items():
            device, _, point = key.partition("/")
            devices.setdefault(device, []).append((point or key, tag))
        self.devices = {
            d: (
                [p for p, _ in pts],
                np.array([index[t] for _, t in pts], dtype=np.int64),
            )
            for d, pts in devices.items()
        }
        self.silent: set[str] = set()
        self.published = 0
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._failed_at: float | None = None
        self.enabled = False

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}/{self.filter}"

    @property
    def running(self) -> bool:
        return self._client is not None

    def topic_of(self, device: str) -> str:
        return topic_for(self.filter, device)

    async def start(self) -> None:
        """Connects to the broker; raises ``SimMqttError`` if it cannot."""
        self.enabled = True
        if self._client is not None:
            return
        stack = contextlib.AsyncExitStack()
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"{self.config.broker.client_id}-sim",
            keepalive=self.config.broker.keepalive_s,
            timeout=5.0,
        )
        try:
            await stack.enter_async_context(client)
        except aiomqtt.MqttError as e:
            await stack.aclose()
            raise SimMqttError(f"cannot connect to the MQTT broker at {self.host}:{self.port}: {e}") from None
        self._client, self._stack = client, stack
        log.info("MQTT publisher connected to %s:%d (%d devices)", self.host, self.port, len(self.devices))

    async def stop(self) -> None:
        self.enabled = False
        await self._disconnect()

    async def _disconnect(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            try:
                await stack.aclose()
            except aiomqtt.MqttError as e:
                log.warning("MQTT publisher: disconnect failed: %s", e)

    def silence(self, devices: set[str]) -> None:
        self.silent = set(devices)

    def _messages(self, values: F64, quality: U8, ts_us: int, seq: int) -> list[tuple[str, bytes]]:
        ts_ms = ts_us // 1000
        out: list[tuple[str, bytes]] = []
        batch: list[dict[str, Any]] = []
        for device, (points, idx) in self.devices.items():
            if device in self.silent:
                continue
            vals = [_json_number(v) for v in values[idx].tolist()]
            quals = quality[idx].tolist()
            if self.format is MqttPayloadFormat.ENVELOPE:
                doc = {
                    "enterprise": self.enterprise,
                    "device": device,
                    "ts": ts_ms,
                    "seq": seq,
                    "readings": [
                        {"point": p, "value": v, "quality": q} for p, v, q in zip(points, vals, quals, strict=True)
                    ],
                }
                out.append((self.topic_of(device), json.dumps(doc, separators=(",", ":")).encode()))
            elif self.format is MqttPayloadFormat.BATCH:
                batch.extend(
                    {"point": f"{device}/{p}", "ts": ts_ms, "value": v, "quality": q}
                    for p, v, q in zip(points, vals, quals, strict=True)
                )
            else:
                for p, v, q in zip(points, vals, quals, strict=True):
                    doc = {"ts": ts_ms, "value": v, "quality": q}
                    out.append((f"{device}/{p}", json.dumps(doc, separators=(",", ":")).encode()))
        if batch:
            out.append((self.topic_of(self.config.id), json.dumps(batch, separators=(",", ":")).encode()))
        return out

    async def publish(self, values: F64, quality: U8, ts_us: int, seq: int) -> None:
        if not self.enabled:
            return
        client = self._client
        if client is None:
            now = asyncio.get_running_loop().time()
            if self._failed_at is None or now - self._failed_at >= 2.0:
                self._failed_at = now
                await self._reconnect()
            return
        messages = self._messages(values, quality, ts_us, seq)
        try:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=self.config.qos)
        except aiomqtt.MqttError as e:
            # the broker went away: log on the transition, drop the connection, reconnect later
            if self._failed_at is None:
                log.warning("MQTT publisher: publish failed: %s", e)
            self._failed_at = asyncio.get_running_loop().time()
            await self._disconnect()
            return
        if self._failed_at is not None:
            log.info("MQTT publisher: publishing again")
            self._failed_at = None
        self.published += len(messages)

    async def _reconnect(self) -> None:
        try:
            await self.start()
            log.info("MQTT publisher: reconnected to %s:%d", self.host, self.port)
        except SimMqttError as e:
            log.debug("MQTT publisher: still no broker: %s", e)


def _json_number(v: float) -> float | None:
    return v if math.isfinite(v) else None
