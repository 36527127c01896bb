"""The gateway interface and the parts every protocol shares.

A gateway is a small protocol, in the manner of an httpx transport::

    async with open_gateway(config, tag_index, data_dir=data_dir) as gw:   # start / stop
        async for batch in gw.batches():                                    # columnar readings
            ...
        gw.health()    # GatewayHealth snapshot, per device
        gw.devices()   # device id -> tag keys it carries

Errors a gateway can raise (no asyncua / pymodbus / paho type ever escapes)::

    GatewayError
     └── GatewayConfigError   the configuration cannot work (unknown tag, unresolvable node ...)

Connection failures are not raised: they are counted in health, turn the device's tags to
``Quality.BAD_COMM`` once, and the gateway reconnects by itself with capped exponential backoff.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

import numpy as np
import numpy.typing as npt

from hazmon.gateways.quarantine import Quarantine
from hazmon.reading import Quality, ReadingBatch, now_us

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """A gateway failed in a way reconnecting cannot cure."""


class GatewayConfigError(GatewayError):
    """The gateway configuration cannot work against this tag index or server."""


class ConnectionState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting before the next reconnect attempt
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    id: str
    state: ConnectionState
    connected: bool
    stale: bool  # no sign of life (data, keep-alive, poll answer) for the gateway's stale_after_s
    last_data_us: int | None  # Unix µs of the last reading delivered
    readings_total: int
    readings_per_s: float
    errors: dict[str, int]  # kind -> count
    reconnects: int
    last_error: str | None
    last_seen_us: int | None = None  # Unix µs of the last sign of life (data, keep-alive, poll answer)


@dataclass(frozen=True, slots=True)
class GatewayHealth:
    id: str
    protocol: str
    state: ConnectionState  # the worst device state
    devices: dict[str, DeviceHealth]
    quarantined: dict[str, int]  # reason -> count
    dropped_readings: int  # readings lost because nobody consumed batches() (bounded buffer)

    @property
    def connected(self) -> bool:
        return all(d.connected for d in self.devices.values())

    @property
    def reconnects(self) -> int:
        return sum(d.reconnects for d in self.devices.values())


class DeviceStats:
    """Mutable per-device counters behind DeviceHealth. Rates are over the last ~5 s."""

    RATE_WINDOW_S = 5.0

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.state = ConnectionState.STARTING
        self.last_data_us: int | None = None
        self.last_seen_us: int | None = None
        self.readings_total = 0
        self.errors: dict[str, int] = {}
        self.reconnects = 0
        self.last_error: str | None = None
        self._connected_once = False
        self._window: deque[tuple[float, int]] = deque()

    def alive(self) -> None:
        """The device answered (a keep-alive, a poll whose values did not change): not stale."""
        self.last_seen_us = now_us()

    def data(self, n: int) -> None:
        self.readings_total += n
        self.last_data_us = self.last_seen_us = now_us()
        now = time.monotonic()
        self._window.append((now, self.readings_total))
        while len(self._window) > 2 and now - self._window[0][0] > self.RATE_WINDOW_S:
            self._window.popleft()

    def error(self, kind: str, message: str | None = None) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if message is not None:
            self.last_error = message

    def connected(self) -> None:
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self.state = ConnectionState.CONNECTED

    def rate(self) -> float:
        if not self._window:
            return 0.0
        now = time.monotonic()
        t0, n0 = self._window[0]
        if now - self._window[-1][0] > self.RATE_WINDOW_S:
            return 0.0
        span = max(now - t0, 1.0)
        return (self.readings_total - n0) / span

    def snapshot(self, stale_after_s: float) -> DeviceHealth:
        stale = self.last_seen_us is None or (now_us() - self.last_seen_us) > stale_after_s * 1e6
        return DeviceHealth(
            id=self.id,
            state=self.state,
            connected=self.state is ConnectionState.CONNECTED,
            stale=stale,
            last_data_us=self.last_data_us,
            readings_total=self.readings_total,
            readings_per_s=self.rate(),
            errors=dict(self.errors),
            reconnects=self.reconnects,
            last_error=self.last_error,
            last_seen_us=self.last_seen_us,
        )


_STATE_RANK = [
    ConnectionState.CONNECTED,
    ConnectionState.STARTING,
    ConnectionState.CONNECTING,
    ConnectionState.BACKOFF,
    ConnectionState.STOPPED,
]


class BatchBuffer:
    """The hand-over between protocol tasks and ``batches()``: non-blocking put, merged get.

    Producers never wait (an OPC UA publish callback cannot). Pending batches are merged into one
    per get, up to ``max_rows``. If nobody consumes, the buffer keeps at most ``limit_rows``
    readings and drops the oldest, counting them in ``dropped``.
    """

    def __init__(self, *, max_rows: int = 100_000, limit_rows: int = 5_000_000) -> None:
        self._items: deque[ReadingBatch] = deque()
        self._rows = 0
        self._event = asyncio.Event()
        self._closed = False
        self.max_rows = max_rows
        self.limit_rows = limit_rows
        self.dropped = 0

    def put(self, batch: ReadingBatch) -> None:
        if len(batch) == 0 or self._closed:
            return
        self._items.append(batch)
        self._rows += len(batch)
        while self._rows > self.limit_rows and len(self._items) > 1:
            old = self._items.popleft()
            self._rows -= len(old)
            self.dropped += len(old)
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    async def get(self) -> ReadingBatch | None:
        """The next merged batch; None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()
        parts = [self._items.popleft()]
        rows = len(parts[0])
        while self._items and rows + len(self._items[0]) <= self.max_rows:
            b = self._items.popleft()
            parts.append(b)
            rows += len(b)
        self._rows -= rows
        return parts[0] if len(parts) == 1 else ReadingBatch.concat(parts)


class Gateway(abc.ABC):
    """Base of every gateway: lifecycle, the batch stream, health and the device map.

    Subclasses implement ``_run()`` (the protocol tasks; it runs until cancelled) and fill
    ``self._devices`` (device id -> DeviceStats) and ``self._device_keys`` before start.
    """

    protocol = "?"

    def __init__(self, gateway_id: str, stale_after_s: float, quarantine: Quarantine) -> None:
        self.id = gateway_id
        self.stale_after_s = stale_after_s
        self.quarantine = quarantine
        self.buffer = BatchBuffer()
        self._devices: dict[str, DeviceStats] = {}
        self._device_keys: dict[str, npt.NDArray[np.int32]] = {}
        self._task: asyncio.Task[None] | None = None
        self._log = logging.getLogger(f"hazmon.gateways.{self.protocol}.{gateway_id}")

    # -- lifecycle

    async def start(self) -> None:
        if self._task is not None:
            raise GatewayError(f"gateway {self.id} already started")
        self._task = asyncio.create_task(self._guarded_run(), name=f"gateway-{self.id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        for d in self._devices.values():
            d.state = ConnectionState.STOPPED
        self.quarantine.close()
        self.buffer.close()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _guarded_run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # A bug, not a connection problem (those are handled inside _run): logged with its
            # traceback, shown in health (state stopped, errors.crash), and batches() ends.
            self._log.exception("gateway %s crashed", self.id)
            for d in self._devices.values():
                d.state = ConnectionState.STOPPED
                d.error("crash", f"gateway crashed: {e!r}")
            self.buffer.close()

    @abc.abstractmethod
    async def _run(self) -> None:
        """The protocol's tasks; runs until cancelled."""

    # -- the interface

    async def batches(self) -> AsyncIterator[ReadingBatch]:
        """Reading batches as they arrive, until the gateway stops."""
        while True:
            batch = await self.buffer.get()
            if batch is None:
                return
            yield batch

    def health(self) -> GatewayHealth:
        devices = {k: d.snapshot(self.stale_after_s) for k, d in self._devices.items()}
        worst = max((d.state for d in devices.values()), key=_STATE_RANK.index, default=ConnectionState.STOPPED)
        return GatewayHealth(
            id=self.id,
            protocol=self.protocol,
            state=worst,
            devices=devices,
            quarantined=self.quarantine.counts(),
            dropped_readings=self.buffer.dropped,
        )

    def devices(self) -> dict[str, npt.NDArray[np.int32]]:
        return dict(self._device_keys)

    # -- helpers for subclasses

    def emit(self, device: DeviceStats, batch: ReadingBatch) -> None:
        if len(batch):
            device.data(len(batch))
            self.buffer.put(batch)

    def emit_comm_loss(self, device_id: str, quality: Quality = Quality.BAD_COMM) -> None:
        """Mark every tag of a device bad (value NaN) once, when its connection is lost."""
        keys = self._device_keys.get(device_id)
        if keys is None or len(keys) == 0:
            return
        self.buffer.put(ReadingBatch.from_columns(keys, now_us(), np.full(len(keys), np.nan), int(quality)))
