"""Modbus gateway: TCP (one shared connection per endpoint) and RTU over serial; coalesced block reads,
vectorized decoding.

Per device, the tags of each poll group and table are sorted by address and coalesced into reads
of at most ``max_registers_per_read`` registers (2,000 bits for coils and discrete inputs), a new
read starting where the next tag lies more than ``max_gap`` unused registers further on. A block
is decoded with numpy, never value by value: the registers are gathered into an (n, width) array
of 16-bit words, bytes swapped within each word for ``byte_order: little``, words reversed for
``word_order: little`` (per tag, defaulting to the device's), then viewed as the big-endian type,
a bit extracted for ``bit:`` tags, and scaled linearly.

Devices (unit ids) behind one endpoint — a TCP host:port, or a serial line — share **one**
connection: Modbus TCP-to-RTU gateways and many PLCs accept only a handful. Each device polls in
its own task over the shared link; requests go one at a time, or ``pipeline`` at once matched by
transaction id (TCP). A unit that does not answer within its ``timeout_s`` (after ``retries``) gets
one ``BAD_COMM`` reading and its own backoff; the others go on. Only when no unit of the endpoint
answers, or the connection itself fails, is the connection closed and reopened with backoff.
An exception response from the device (illegal address...) is counted and the block's tags get one
``BAD_CONFIG`` reading; polling continues. A failure part-way through a poll cycle keeps the
readings already decoded in that cycle (counted as ``errors.partial_cycle``).

Modbus TCP is spoken by ``_TcpLink`` (MBAP framing on asyncio streams: pymodbus' client allows one
request at a time and closes the connection after a few timeouts, which would let one dead unit
take the others down); RTU by pymodbus' serial client in ``_RtuLink``. Their errors become
``_LinkLost`` / ``_UnitSilent`` / ``_DeviceRefused`` there and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hazmon.backoff import Backoff
from hazmon.gateways.base import ConnectionState, DeviceStats, Gateway, GatewayConfigError
from hazmon.gateways.config import ModbusDevice, ModbusGateway, ModbusTable, ModbusTag, ModbusType
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
    bits: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.float64]:
    """Decode the values starting at ``offsets`` of a register block, all at once.

    ``registers`` are 16-bit register values as the protocol delivers them (each register
    big-endian on the wire). ``bits``: the bit of each register to take (0/1). Returns float64
    raw values (before scaling).
    """
    regs = np.asarray(registers, dtype=np.uint16)
    if type_ is ModbusType.BOOL:
        out: npt.NDArray[np.float64] = (regs[offsets] != 0).astype(np.float64)
        return out
    if bits is not None:  # one bit of each 16-bit register (packed status words)
        word = regs[offsets]
        if byte_order == "little":
            word = word.byteswap()
        flags: npt.NDArray[np.float64] = ((word >> bits.astype(np.uint16)) & 1).astype(np.float64)
        return flags
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
    byte_order: str = "big"
    word_order: str = "big"
    bits: npt.NDArray[np.int64] | None = None


@dataclass
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: ModbusTable
    start: int
    count: int
    decodes: list[_Decode] = field(default_factory=list)
    keys: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    failing: bool = False

    def decode(self, registers: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
        """Values in engineering units and their quality (BAD_SENSOR where the raw value is a failure code)."""
        parts = []
        qualities = []
        for d in self.decodes:
            raw = decode_registers(registers, d.offsets, d.type, d.byte_order, d.word_order, d.bits)
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
    by: dict[tuple[str, ModbusTable], list[ModbusTag]] = {}
    for t in device.tags:
        by.setdefault((t.group, t.table), []).append(t)
    plan: dict[str, list[Block]] = {}
    for (group, table), tags in by.items():
        bits = table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)
        limit = MAX_BITS_PER_READ if bits else device.max_registers_per_read
        tags.sort(key=lambda t: t.address)
        runs: list[list[ModbusTag]] = []
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
            kinds: dict[tuple[ModbusType, str, str, bool], list[ModbusTag]] = {}
            for t in run:
                kinds.setdefault((t.type, *t.orders(device), t.bit is not None), []).append(t)
            for (type_, byte_order, word_order, packed), ts in kinds.items():
                scales = np.array([t.linear() for t in ts], dtype=np.float64).reshape(-1, 2)
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
                        byte_order,
                        word_order,
                        np.array([t.bit for t in ts], dtype=np.int64) if packed else None,
                    )
                )
            block.keys = np.concatenate([d.keys for d in block.decodes])
            plan.setdefault(group, []).append(block)
    return plan


class _LinkLost(Exception):
    """The connection (or serial line) failed, or no unit behind it answers: reopen it."""


class _UnitSilent(Exception):
    """One unit did not answer in time (after its retries); the link may be fine."""


class _DeviceRefused(Exception):
    """The device answered with a Modbus exception response."""


_FUNCTION = {ModbusTable.COIL: 1, ModbusTable.DISCRETE_INPUT: 2, ModbusTable.HOLDING: 3, ModbusTable.INPUT: 4}


def _registers_of(table: ModbusTable, count: int, data: bytes) -> npt.NDArray[np.uint16]:
    """The payload of a read response as register values (or 0/1 bits)."""
    if table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT):
        if len(data) < (count + 7) // 8:
            raise _UnitSilent(f"short response: {len(data)} bytes for {count} bits")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count]
        return bits.astype(np.uint16)
    if len(data) < 2 * count:
        raise _UnitSilent(f"short response: {len(data) // 2} of {count} registers")
    return np.frombuffer(data, ">u2", count).astype(np.uint16)


class _TcpLink:
    """One Modbus TCP connection shared by the units behind it; up to ``pipeline`` requests in flight.

    Responses are matched to requests by MBAP transaction id, so a response that arrives after its
    request timed out is recognised and dropped (``late``) instead of being taken for the next one.
    """

    def __init__(self, host: str, port: int, pipeline: int) -> None:
        self.host, self.port = host, port
        self._slots = asyncio.Semaphore(pipeline)
        self._tids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._rx: asyncio.Task[None] | None = None
        self._lost: str | None = None
        self.late = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self, timeout: float) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except (TimeoutError, OSError) as e:
            raise _LinkLost(f"cannot connect to {self.name}: {e or type(e).__name__}") from e
        self._rx = asyncio.create_task(self._receive(), name=f"modbus-rx-{self.name}")

    async def _receive(self) -> None:
        assert self._reader is not None
        try:
            while True:
                header = await self._reader.readexactly(7)
                tid, proto, length, unit = struct.unpack(">HHHB", header)
                if proto != 0 or not 2 <= length <= 254:
                    raise _LinkLost(f"not a Modbus TCP response (protocol {proto}, length {length})")
                pdu = await self._reader.readexactly(length - 1)
                fut = self._pending.pop(tid, None)
                if fut is None or fut.done():
                    self.late += 1  # its request timed out already
                    continue
                fut.set_result((unit, pdu))
        except (asyncio.IncompleteReadError, OSError) as e:
            self._fail(f"connection to {self.name} lost: {e or type(e).__name__}")
        except _LinkLost as e:
            self._fail(str(e))
        except Exception as e:  # a bug reading a response: the link fails (reads error now, it is reopened)
            self._fail(f"receiver of {self.name} failed: {type(e).__name__}: {e}")
            raise

    def _fail(self, why: str) -> None:
        self._lost = why
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_LinkLost(why))
        self._pending.clear()

    async def read(self, unit: int, table: ModbusTable, start: int, count: int, timeout: float) -> Any:
        if self._lost is not None or self._writer is None:
            raise _LinkLost(self._lost or "not connected")
        fc = _FUNCTION[table]
        async with self._slots:
            tid = next(self._tids) & 0xFFFF
            fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
            self._pending[tid] = fut
            try:
                self._writer.write(struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, start, count))
                try:
                    r_unit, pdu = await asyncio.wait_for(fut, timeout)
                except TimeoutError:
                    raise _UnitSilent(f"unit {unit}: no response in {timeout:g} s") from None
            finally:
                self._pending.pop(tid, None)
        if pdu[0] == fc | 0x80:
            raise _DeviceRefused(f"exception code {pdu[1] if len(pdu) > 1 else '?'}")
        if pdu[0] != fc or r_unit != unit or len(pdu) < 2:
            raise _UnitSilent(f"unit {unit}: mismatched response (function {pdu[0]}, unit {r_unit})")
        return _registers_of(table, count, pdu[2 : 2 + pdu[1]])

    async def close(self) -> None:
        if self._rx is not None:
            self._rx.cancel()
            # asyncio.wait: the receiver's own end (cancelled, or failed: already reported by _fail) is
            # not raised here, but a cancellation of the task closing the link is (a gateway being
            # stopped while it reopens a link must stop, not poll on)
            await asyncio.wait([self._rx])
            if not self._rx.cancelled():
                self._rx.exception()  # retrieved: it was handled by _fail
        self._fail("closed")
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


class _RtuLink:
    """A serial line (RS-485) with pymodbus' RTU client; one request at a time, as the bus demands."""

    def __init__(self, dev: ModbusDevice, timeout: float) -> None:
        assert dev.serial is not None
        self.serial = dev.serial
        self.timeout = timeout
        self.late = 0
        self._client: Any = None

    @property
    def name(self) -> str:
        return self.serial.port

    async def open(self, timeout: float) -> None:
        from pymodbus.client import AsyncModbusSerialClient

        s = self.serial
        self._client = AsyncModbusSerialClient(
            s.port,
            baudrate=s.baudrate,
            parity=s.parity,
            stopbits=s.stopbits,
            bytesize=s.bytesize,
            timeout=self.timeout,
            retries=0,
            reconnect_delay=0,
        )
        try:
            ok = await asyncio.wait_for(self._client.connect(), timeout)
        except (TimeoutError, OSError) as e:
            raise _LinkLost(f"cannot open {s.port}: {e or type(e).__name__}") from e
        if not ok:
            raise _LinkLost(f"cannot open {s.port}")

    async def read(self, unit: int, table: ModbusTable, start: int, count: int, timeout: float) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        c = self._client
        if c is None or not c.connected:
            raise _LinkLost(f"{self.serial.port} closed")
        call = {
            ModbusTable.HOLDING: c.read_holding_registers,
            ModbusTable.INPUT: c.read_input_registers,
            ModbusTable.COIL: c.read_coils,
            ModbusTable.DISCRETE_INPUT: c.read_discrete_inputs,
        }[table]
        try:
            rr = await asyncio.wait_for(call(start, count=count, device_id=unit), timeout + 0.5)
        except ConnectionException as e:
            raise _LinkLost(f"{self.serial.port}: {e}") from e
        except (TimeoutError, ModbusIOException) as e:
            raise _UnitSilent(f"unit {unit}: no response ({e or type(e).__name__})") from e
        except ModbusException as e:
            raise _UnitSilent(f"unit {unit}: protocol error: {e}") from e
        except OSError as e:
            raise _LinkLost(f"{self.serial.port}: {e}") from e
        if rr.isError():
            raise _DeviceRefused(f"exception code {getattr(rr, 'exception_code', '?')}")
        if table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT):
            return np.asarray(rr.bits[:count], dtype=np.uint16)
        if len(rr.registers) < count:
            raise _UnitSilent(f"short response: {len(rr.registers)} of {count} registers")
        return rr.registers

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class _Session:
    """The units of one endpoint during one connection: which fail, and whether any answers."""

    devices: frozenset[str]
    failing: set[str] = field(default_factory=set)


class ModbusGatewayImpl(Gateway):
    protocol = "modbus"

    def __init__(self, config: ModbusGateway, tag_index: TagIndex, quarantine: Quarantine) -> None:
        super().__init__(config.id, config.stale_after_s, quarantine)
        self.config = config
        missing = [t.tag for d in config.devices for t in d.tags if t.tag not in tag_index]
        if missing:
            raise GatewayConfigError(f"gateway {config.id}: tags not in the tag index: {', '.join(missing[:10])}")
        self._plans = {d.id: plan_blocks(d, tag_index) for d in config.devices}
        self.endpoints: dict[str, list[ModbusDevice]] = {}
        for d in config.devices:
            self._devices[d.id] = DeviceStats(d.id)
            self._device_keys[d.id] = tag_index.keys_of(t.tag for t in d.tags)
            self.endpoints.setdefault(d.endpoint(), []).append(d)
        self.connections_opened = 0  # connections (or serial opens) made, over all endpoints
        self.late_responses = 0

    def blocks(self, device_id: str) -> dict[str, list[Block]]:
        return self._plans[device_id]

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, devices in self.endpoints.items():
                tg.create_task(self._endpoint_loop(devices), name=f"modbus-{self.id}-{name}")

    def _link(self, devices: list[ModbusDevice]) -> _TcpLink | _RtuLink:
        first = devices[0]
        if first.transport == "rtu":
            return _RtuLink(first, max(d.timeout_s for d in devices))
        return _TcpLink(first.host, first.port, min(d.pipeline for d in devices))

    async def _endpoint_loop(self, devices: list[ModbusDevice]) -> None:
        backoff = Backoff(self.config.backoff)
        reported: set[str] = set()  # devices whose loss has been logged and marked BAD_COMM
        while True:
            for d in devices:
                if self._devices[d.id].state is not ConnectionState.CONNECTED:
                    self._devices[d.id].state = ConnectionState.CONNECTING
            link = self._link(devices)
            session = _Session(frozenset(d.id for d in devices))
            try:
                await link.open(max(d.timeout_s for d in devices))
                self.connections_opened += 1
                async with asyncio.TaskGroup() as tg:
                    for d in devices:
                        tg.create_task(self._device_loop(link, d, session, reported, backoff))
            except* _LinkLost as group:
                why = str(group.exceptions[0])
                for d in devices:
                    stats = self._devices[d.id]
                    stats.error("connection", why)
                    self._lost(d, stats, why, reported)
            finally:
                self.late_responses += link.late
                await link.close()
            await backoff.wait()

    def _lost(self, dev: ModbusDevice, stats: DeviceStats, why: str, reported: set[str]) -> None:
        if dev.id not in reported:
            self._log.warning("device %s: communication lost: %s", dev.id, why)
            self.emit_comm_loss(dev.id)
            reported.add(dev.id)
        stats.state = ConnectionState.BACKOFF

    async def _device_loop(
        self, link: _TcpLink | _RtuLink, dev: ModbusDevice, session: _Session, reported: set[str], link_backoff: Backoff
    ) -> None:
        stats = self._devices[dev.id]
        backoff = Backoff(self.config.backoff)

        def answered() -> None:
            # connected means: the unit answers (a TCP connect to a gateway whose unit is silent is not)
            session.failing.discard(dev.id)
            stats.connected()
            backoff.reset()
            link_backoff.reset()
            if dev.id in reported:
                self._log.info("device %s: answering again on %s", dev.id, link.name)
                reported.discard(dev.id)

        while True:
            try:
                await self._poll(link, dev, stats, answered)
            except _UnitSilent as e:
                stats.error("connection", str(e))
                session.failing.add(dev.id)
                if session.failing >= session.devices:
                    raise _LinkLost(f"no unit on {link.name} answers ({e})") from e
                self._lost(dev, stats, str(e), reported)
                await backoff.wait()

    async def _poll(
        self, link: _TcpLink | _RtuLink, dev: ModbusDevice, stats: DeviceStats, answered: Callable[[], None]
    ) -> None:
        plan = self._plans[dev.id]
        first = True
        periods = {g: self.config.poll_groups[g] / 1000.0 for g in plan}
        now = time.monotonic()
        due = dict.fromkeys(plan, now)
        while True:
            now = time.monotonic()
            parts: list[ReadingBatch] = []
            try:
                for group, t_due in due.items():
                    if t_due > now:
                        continue
                    for block in plan[group]:
                        refused: _DeviceRefused | None = None
                        try:
                            registers = await self._read_block(link, dev, block, stats)
                        except _DeviceRefused as e:
                            refused = e
                        stats.alive()  # every answered request is a sign of life (a cycle may wait on others)
                        if refused is not None:
                            self._refused(dev, stats, block, refused, parts)
                            continue
                        block.failing = False
                        values, quality = block.decode(registers)
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
            except (_UnitSilent, _LinkLost):
                if parts:  # what was decoded before the failure is real data: kept, and the loss counted
                    stats.error("partial_cycle")
                    self.emit(stats, ReadingBatch.concat(parts) if len(parts) > 1 else parts[0])
                raise
            if first:
                # a whole cycle answered (exception responses are answers too): the unit is connected;
                # a unit that answers some blocks and not others stays lost, with its own backoff
                answered()
                first = False
            if parts:
                self.emit(stats, ReadingBatch.concat(parts) if len(parts) > 1 else parts[0])
            await asyncio.sleep(max(0.0, min(due.values()) - time.monotonic()))

    def _refused(
        self, dev: ModbusDevice, stats: DeviceStats, block: Block, refused: _DeviceRefused, parts: list[ReadingBatch]
    ) -> None:
        stats.error("exception_response", f"{block.table} {block.start}+{block.count}: {refused}")
        if block.failing:
            return
        block.failing = True
        self._log.warning("device %s: %s %d+%d refused: %s", dev.id, block.table, block.start, block.count, refused)
        n = len(block.keys)
        parts.append(ReadingBatch.from_columns(block.keys, now_us(), np.full(n, np.nan), int(Quality.BAD_CONFIG)))

    async def _read_block(self, link: _TcpLink | _RtuLink, dev: ModbusDevice, block: Block, stats: DeviceStats) -> Any:
        """One read, retried ``dev.retries`` times when an answering unit does not answer. A unit already
        lost is probed once: on a shared line every attempt holds the others up for ``timeout_s``."""
        retries = dev.retries if stats.state is ConnectionState.CONNECTED else 0
        for attempt in range(retries + 1):
            try:
                return await link.read(dev.unit, block.table, block.start, block.count, dev.timeout_s)
            except _UnitSilent:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")
