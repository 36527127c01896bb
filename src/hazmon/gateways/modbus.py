"""Modbus TCP gateway (pymodbus): coalesced block reads, vectorized decoding, one task per device.

Per device, the tags of each poll group and table are sorted by address and coalesced into reads
of at most ``max_registers_per_read`` registers (2,000 bits for coils and discrete inputs), a new
read starting where the next tag lies more than ``max_gap`` unused registers further on. A block
is decoded with numpy, never value by value: the registers are gathered into an (n, width) array
of 16-bit words, bytes swapped within each word for ``byte_order: little``, words reversed for
``word_order: little``, then viewed as the big-endian type and scaled linearly.

Each device runs in its own task with its own connection, so a dead or slow device never delays
another. Connection failures and timeouts (after the device's ``retries``) close the connection;
the device's tags get one ``BAD_COMM`` reading and the task reconnects with capped exponential
backoff. An exception response from the device (illegal address...) is counted and the block's
tags get one ``BAD_CONFIG`` reading; polling continues. pymodbus errors are translated in
``_read_block`` only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon.backoff import Backoff
from hazmon.gateways.base import ConnectionState, DeviceStats, Gateway, GatewayConfigError
from hazmon.gateways.config import ModbusDevice, ModbusGateway, ModbusTable, ModbusType
from hazmon.gateways.quarantine import Quarantine
from hazmon.plant.tag import TagIndex
from hazmon.reading import Quality, ReadingBatch, now_us

log = logging.getLogger(__name__)

MAX_BITS_PER_READ = 2000

_BE_DTYPE: dict[ModbusType, np.dtype[Any]] = {
    ModbusType.INT16: np.dtype(">i2"),
    ModbusType.UINT16: np.dtype(">u2"),
    ModbusType.INT32: np.dtype(">i4"),
    ModbusType.UINT32: np.dtype(">u4"),
    ModbusType.FLOAT32: np.dtype(">f4"),
    ModbusType.FLOAT64: np.dtype(">f8"),
}
_WIDTH = {t: d.itemsize // 2 for t, d in _BE_DTYPE.items()}


def decode_registers(
    registers: npt.ArrayLike,
    offsets: npt.NDArray[np.intp],
    type_: ModbusType,
    byte_order: str = "big",
    word_order: str = "big",
) -> npt.NDArray[np.float64]:
    """Decode the values starting at ``offsets`` of a register block, all at once.

    ``registers`` are 16-bit register values as the protocol delivers them (each register
    big-endian on the wire). Returns float64 raw values (before scaling).
    """
    regs = np.asarray(registers, dtype=np.uint16)
    if type_ is ModbusType.BOOL:
        out: npt.NDArray[np.float64] = (regs[offsets] != 0).astype(np.float64)
        return out
    width = _WIDTH[type_]
    words = regs[offsets[:, None] + np.arange(width)]  # (n, width)
    if byte_order == "little":
        words = words.byteswap()
    if word_order == "little":
        words = words[:, ::-1]
    be = np.ascontiguousarray(words, dtype=">u2")
    values: npt.NDArray[np.float64] = be.view(_BE_DTYPE[type_]).reshape(len(offsets)).astype(np.float64)
    return values


def encode_registers(
    values: npt.ArrayLike, type_: ModbusType, byte_order: str = "big", word_order: str = "big"
) -> npt.NDArray[np.uint16]:
    """The inverse of ``decode_registers`` for consecutive values (for simulators and tests)."""
    if type_ is ModbusType.BOOL:
        bits: npt.NDArray[np.uint16] = (np.asarray(values) != 0).astype(np.uint16)
        return bits
    width = _WIDTH[type_]
    raw = np.asarray(values).astype(_BE_DTYPE[type_])
    words = raw.view(">u2").reshape(-1, width).astype(np.uint16)
    if word_order == "little":
        words = words[:, ::-1]
    if byte_order == "little":
        words = words.byteswap()
    out: npt.NDArray[np.uint16] = np.ascontiguousarray(words).reshape(-1)
    return out


@dataclass
class _Decode:
    type: ModbusType
    offsets: npt.NDArray[np.intp]
    keys: npt.NDArray[np.int32]
    gain: npt.NDArray[np.float64]
    offset: npt.NDArray[np.float64]
    scaled: bool
    bad_raw: npt.NDArray[np.float64] | None = None  # (n, k) raw failure codes per tag, NaN-padded


@dataclass
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: ModbusTable
    start: int
    count: int
    decodes: list[_Decode] = field(default_factory=list)
    keys: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    failing: bool = False

    def decode(
        self, registers: npt.ArrayLike, byte_order: str, word_order: str
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
        """Values in engineering units and their quality (BAD_SENSOR where the raw value is a failure code)."""
        parts = []
        qualities = []
        for d in self.decodes:
            raw = decode_registers(registers, d.offsets, d.type, byte_order, word_order)
            quality = np.zeros(len(raw), np.uint8)
            if d.bad_raw is not None:
                failed = np.any(raw[:, None] == d.bad_raw, axis=1)
                quality[failed] = Quality.BAD_SENSOR
            value = raw * d.gain + d.offset if d.scaled else raw
            if d.bad_raw is not None:
                value[quality != 0] = np.nan
            parts.append(value)
            qualities.append(quality)
        if len(parts) == 1:
            return parts[0], qualities[0]
        return np.concatenate(parts), np.concatenate(qualities)


def plan_blocks(device: ModbusDevice, tag_index: TagIndex) -> dict[str, list[Block]]:
    """Poll group -> coalesced block reads for one device."""
    by: dict[tuple[str, ModbusTable], list[Any]] = {}
    for t in device.tags:
        by.setdefault((t.group, t.table), []).append(t)
    plan: dict[str, list[Block]] = {}
    for (group, table), tags in by.items():
        bits = table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)
        limit = MAX_BITS_PER_READ if bits else device.max_registers_per_read
        tags.sort(key=lambda t: t.address)
        runs: list[list[Any]] = []
        start = end = -1
        for t in tags:
            t_end = t.address + t.width
            if runs and t.address - end <= device.max_gap and max(end, t_end) - start <= limit:
                runs[-1].append(t)
                end = max(end, t_end)
            else:
                runs.append([t])
                start, end = t.address, t_end
        for run in runs:
            start = run[0].address
            count = max(t.address + t.width for t in run) - start
            block = Block(table, start, count)
            by_type: dict[ModbusType, list[Any]] = {}
            for t in run:
                by_type.setdefault(t.type, []).append(t)
            for type_, ts in by_type.items():
                scales = np.array([t.scale() for t in ts], dtype=np.float64).reshape(-1, 2)
                width = max(len(t.bad_raw) for t in ts)
                bad_raw = None
                if width:
                    bad_raw = np.full((len(ts), width), np.nan)
                    for i, t in enumerate(ts):
                        bad_raw[i, : len(t.bad_raw)] = t.bad_raw
                block.decodes.append(
                    _Decode(
                        type_,
                        np.array([t.address - start for t in ts], dtype=np.intp),
                        tag_index.keys_of(t.tag for t in ts),
                        scales[:, 0].copy(),
                        scales[:, 1].copy(),
                        bool(np.any(scales[:, 0] != 1.0) or np.any(scales[:, 1] != 0.0)),
                        bad_raw,
                    )
                )
            block.keys = np.concatenate([d.keys for d in block.decodes])
            plan.setdefault(group, []).append(block)
    return plan


class _CommFailure(Exception):
    """The device cannot be reached or did not answer: reconnect."""


class _DeviceRefused(Exception):
    """The device answered with a Modbus exception response."""


class ModbusGatewayImpl(Gateway):
    protocol = "modbus"

    def __init__(self, config: ModbusGateway, tag_index: TagIndex, quarantine: Quarantine) -> None:
        super().__init__(config.id, config.stale_after_s, quarantine)
        self.config = config
        missing = [t.tag for d in config.devices for t in d.tags if t.tag not in tag_index]
        if missing:
            raise GatewayConfigError(f"gateway {config.id}: tags not in the tag index: {', '.join(missing[:10])}")
        self._plans = {d.id: plan_blocks(d, tag_index) for d in config.devices}
        for d in config.devices:
            self._devices[d.id] = DeviceStats(d.id)
            self._device_keys[d.id] = tag_index.keys_of(t.tag for t in d.tags)

    def blocks(self, device_id: str) -> dict[str, list[Block]]:
        return self._plans[device_id]

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for d in self.config.devices:
                tg.create_task(self._device_loop(d), name=f"modbus-{self.id}-{d.id}")

    async def _device_loop(self, dev: ModbusDevice) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        stats = self._devices[dev.id]
        backoff = Backoff(self.config.backoff)
        reported = False  # the loss has been logged and the tags marked BAD_COMM
        while True:
            if stats.state is not ConnectionState.CONNECTED:
                stats.state = ConnectionState.CONNECTING
            client = AsyncModbusTcpClient(
                dev.host, port=dev.port, timeout=dev.timeout_s, retries=dev.retries, reconnect_delay=0
            )
            try:
                try:
                    ok = await client.connect()
                except (TimeoutError, OSError) as e:
                    raise _CommFailure(f"connect: {e}") from e
                if not ok:
                    raise _CommFailure(f"cannot connect to {dev.host}:{dev.port}")

                def answered() -> None:
                    # connected means: the device answers (a TCP connect to a gateway or proxy
                    # whose device is silent is not a connection)
                    nonlocal reported
                    stats.connected()
                    backoff.reset()
                    if reported:
                        self._log.info("device %s: answering again at %s:%d", dev.id, dev.host, dev.port)
                    reported = False

                await self._poll(client, dev, stats, answered)
            except _CommFailure as e:
                stats.error("connection", str(e))
                if not reported:
                    self._log.warning("device %s: communication lost: %s", dev.id, e)
                    self.emit_comm_loss(dev.id)
                    reported = True
                stats.state = ConnectionState.BACKOFF
            finally:
                client.close()
            await backoff.wait()

    async def _poll(self, client: Any, dev: ModbusDevice, stats: DeviceStats, answered: Callable[[], None]) -> None:
        plan = self._plans[dev.id]
        first = True
        periods = {g: self.config.poll_groups[g] / 1000.0 for g in plan}
        now = time.monotonic()
        due = dict.fromkeys(plan, now)
        while True:
            now = time.monotonic()
            parts: list[ReadingBatch] = []
            for group, t_due in due.items():
                if t_due > now:
                    continue
                for block in plan[group]:
                    refused: _DeviceRefused | None = None
                    try:
                        registers = await self._read_block(client, dev, block)
                    except _DeviceRefused as e:
                        refused = e
                    if first:
                        answered()  # an exception response is an answer too
                        first = False
                    if refused is not None:
                        stats.alive()  # it answers, with an exception
                        stats.error("exception_response", f"{block.table} {block.start}+{block.count}: {refused}")
                        if not block.failing:
                            block.failing = True
                            self._log.warning(
                                "device %s: %s %d+%d refused: %s",
                                dev.id,
                                block.table,
                                block.start,
                                block.count,
                                refused,
                            )
                            n = len(block.keys)
                            parts.append(
                                ReadingBatch.from_columns(
                                    block.keys, now_us(), np.full(n, np.nan), int(Quality.BAD_CONFIG)
                                )
                            )
                        continue
                    block.failing = False
                    values, quality = block.decode(registers, dev.byte_order, dev.word_order)
                    parts.append(ReadingBatch.from_columns(block.keys, now_us(), values, quality))
                nxt = t_due + periods[group]
                late = time.monotonic() - nxt
                if late >= 0:
                    # late: the next poll starts at once, on the same grid; a whole period or more
                    # behind, the missed slots are skipped (no burst of catch-up reads)
                    stats.error("overrun")
                    if late >= periods[group]:
                        nxt = time.monotonic()
                due[group] = nxt
            if parts:
                self.emit(stats, ReadingBatch.concat(parts) if len(parts) > 1 else parts[0])
            await asyncio.sleep(max(0.0, min(due.values()) - time.monotonic()))

    async def _read_block(self, client: Any, dev: ModbusDevice, block: Block) -> Any:
        """One read; the only place pymodbus errors are seen."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        try:
            if block.table is ModbusTable.HOLDING:
                rr = await client.read_holding_registers(block.start, count=block.count, device_id=dev.unit)
            elif block.table is ModbusTable.INPUT:
                rr = await client.read_input_registers(block.start, count=block.count, device_id=dev.unit)
            elif block.table is ModbusTable.COIL:
                rr = await client.read_coils(block.start, count=block.count, device_id=dev.unit)
            else:
                rr = await client.read_discrete_inputs(block.start, count=block.count, device_id=dev.unit)
        except (TimeoutError, ConnectionException, ModbusIOException, OSError) as e:
            raise _CommFailure(str(e) or type(e).__name__) from e
        except ModbusException as e:
            raise _CommFailure(f"protocol error: {e}") from e
        if rr.isError():
            raise _DeviceRefused(f"exception code {getattr(rr, 'exception_code', '?')}")
        if block.table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT):
            return np.asarray(rr.bits[: block.count], dtype=np.uint16)
        if len(rr.registers) < block.count:
            raise _CommFailure(f"short response: {len(rr.registers)} of {block.count} registers")
        return rr.registers
