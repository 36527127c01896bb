"""Modbus PLCs: one pymodbus server per (host, port) or RTU serial line, one process image per unit id.

Each device of a ``ModbusGateway`` config is a PLC answering on its unit id. Its process image is
four numpy arrays (holding and input registers as uint16, coils and discrete inputs as bool)
sized to the highest mapped address; the model's values are encoded into them in one vectorized
pass per type (scaled int16, float32 with the device's byte and word order, ...). The pymodbus
server reads the image directly through a small datastore object (``_Datastore``), so an update
costs one numpy assignment, not one ``async_setValues`` per tag.

Faults on the wire: a silenced unit does not answer at all (the request times out), a stopped
server refuses connections and closes the open ones; a bad-quality analog reads NaN (float) or the
type's overflow code (32767 for int16, the S7 wire-break value). The PLCs are read-only: writes
are refused with ILLEGAL_FUNCTION.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hazmon.gateways.config import ModbusDevice, ModbusSerial, ModbusTable, ModbusType
from hazmon.reading import Quality

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

# function code -> table
_READ_TABLE = {1: ModbusTable.COIL, 2: ModbusTable.DISCRETE_INPUT, 3: ModbusTable.HOLDING, 4: ModbusTable.INPUT}
_BIG_ENDIAN_DTYPE = {
    ModbusType.INT16: ">i2",
    ModbusType.UINT16: ">u2",
    ModbusType.INT32: ">i4",
    ModbusType.UINT32: ">u4",
    ModbusType.FLOAT32: ">f4",
    ModbusType.FLOAT64: ">f8",
}
_INT_LIMITS = {
    ModbusType.INT16: (-32768, 32767),
    ModbusType.UINT16: (0, 65535),
    ModbusType.INT32: (-(2**31), 2**31 - 1),
    ModbusType.UINT32: (0, 2**32 - 1),
}


@dataclass(slots=True)
class _Group:
    """Tags of one device sharing a table, a type and a byte/word order (or bits of registers), encoded together."""

    table: ModbusTable
    type: ModbusType
    model_index: npt.NDArray[np.int64]
    address: npt.NDArray[np.int64]  # (n, width) register addresses, or (n,) bit / packed-register addresses
    gain: F64
    offset: F64
    byte_order: str = "big"
    word_order: str = "big"
    bit: npt.NDArray[np.int64] | None = None  # a bit of a register per tag (packed status words)


@dataclass(slots=True)
class ProcessImage:
    """The registers and bits of one PLC (unit id), as the wire sees them."""

    device: ModbusDevice
    tables: dict[ModbusTable, npt.NDArray[np.uint16] | npt.NDArray[np.bool_]] = field(default_factory=dict)
    groups: list[_Group] = field(default_factory=list)

    @classmethod
    def build(cls, device: ModbusDevice, index: dict[str, int]) -> ProcessImage:
        image = cls(device)
        sizes = dict.fromkeys(ModbusTable, 0)
        for t in device.tags:
            sizes[t.table] = max(sizes[t.table], t.address + t.width)
        for table, size in sizes.items():
            bits = table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)
            image.tables[table] = np.zeros(size, dtype=bool if bits else np.uint16)
        keys = dict.fromkeys((t.table, t.type, *t.orders(device), t.bit is not None) for t in device.tags)
        for table, typ, byte_order, word_order, packed in keys:
            tags = [
                t
                for t in device.tags
                if t.table is table
                and t.type is typ
                and t.orders(device) == (byte_order, word_order)
                and (t.bit is not None) == packed
            ]
            width = tags[0].width
            address = np.array([[t.address + j for j in range(width)] for t in tags], dtype=np.int64)
            scales = [t.linear() for t in tags]
            image.groups.append(
                _Group(
                    table,
                    typ,
                    np.array([index[t.tag] for t in tags], dtype=np.int64),
                    address[:, 0] if typ is ModbusType.BOOL or packed else address,
                    np.array([s[0] for s in scales]),
                    np.array([s[1] for s in scales]),
                    byte_order,
                    word_order,
                    np.array([t.bit for t in tags], dtype=np.int64) if packed else None,
                )
            )
        return image

    def update(self, values: F64, quality: U8) -> None:
        """Encodes the model's values into the process image (vectorized per group)."""
        for g in self.groups:
            v = values[g.model_index]
            bad = quality[g.model_index] >= Quality.BAD
            table = self.tables[g.table]
            if g.type is ModbusType.BOOL:
                table[g.address] = v >= 0.5
                continue
            if g.bit is not None:  # bits of packed status words: clear, then set, register by register
                raw_bits = ((v - g.offset) / g.gain >= 0.5).astype(np.uint16)
                words = table.view(np.uint16) if table.dtype == np.uint16 else table
                shift = g.bit.astype(np.uint16)
                if g.byte_order == "little":  # the register's bytes are swapped on the wire
                    shift = (shift + 8) % 16
                np.bitwise_and.at(words, g.address, ~(np.uint16(1) << shift))
                np.bitwise_or.at(words, g.address, raw_bits << shift)
                continue
            raw = (v - g.offset) / g.gain
            if g.type in _INT_LIMITS:
                lo, hi = _INT_LIMITS[g.type]
                raw = np.where(bad | ~np.isfinite(raw), hi, np.clip(np.rint(raw), lo, hi))
            else:
                raw = np.where(bad, np.nan, raw)
            words = np.asarray(raw).astype(_BIG_ENDIAN_DTYPE[g.type]).view(">u2").reshape(len(v), -1)
            if g.word_order == "little":
                words = words[:, ::-1]
            words = words.astype(np.uint16)
            if g.byte_order == "little":
                words = words.byteswap()
            table[g.address] = words


class _Datastore:
    """What pymodbus' request handler calls: reads go straight to the process images."""

    def __init__(self, images: dict[int, ProcessImage]) -> None:
        self.images = images
        self.silent: set[int] = set()
        self.mute: set[tuple[int, int]] = set()  # (unit, function code) never answered: a half-working RTU bridge
        self.requests = 0

    def device_ids(self) -> list[int]:
        return list(self.images)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.requests += 1
        image = self.images.get(device_id)
        if image is None or device_id in self.silent or (device_id, func_code) in self.mute:
            # with ignore_missing_devices the server sends nothing: the PLC is silent
            raise NoSuchIdException(f"unit {device_id} does not answer")
        table = _READ_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        data = self.images[device_id].tables[table]
        if address < 0 or count < 1 or address + count > len(data):
            return ExcCodes.ILLEGAL_ADDRESS
        out: list[int] | list[bool] = data[address : address + count].tolist()
        return out

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if device_id not in self.images or device_id in self.silent:
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return ExcCodes.ILLEGAL_FUNCTION


class ModbusEndpoint:
    """One Modbus TCP listening socket, or one RTU serial line, serving the PLCs (unit ids) configured on it."""

    protocol = "modbus"

    def __init__(
        self,
        host: str,
        port: int,
        devices: list[ModbusDevice],
        index: dict[str, int],
        *,
        serial: ModbusSerial | None = None,
    ) -> None:
        units = [d.unit for d in devices]
        if len(set(units)) != len(units):
            where = serial.port if serial is not None else f"{host}:{port}"
            raise ValueError(f"modbus {where}: two devices share a unit id")
        self.host = host
        self.port = port
        self.serial = serial
        self.devices = devices
        self.images = {d.unit: ProcessImage.build(d, index) for d in devices}
        self.store = _Datastore(self.images)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def url(self) -> str:
        if self.serial is not None:
            s = self.serial
            return f"modbus-rtu://{s.port}?baudrate={s.baudrate}&parity={s.parity}&stopbits={s.stopbits}"
        return f"modbus://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def unit_of(self, device_id: str) -> int | None:
        for d in self.devices:
            if d.id == device_id:
                return d.unit
        return None

    async def start(self) -> None:
        if self._server is not None:
            return
        # pymodbus wants a SimDevice to build its own store; we swap in ours (reads hit our numpy images)
        placeholder = SimDevice(0, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)])
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial is not None:
            s = self.serial
            server = ModbusSerialServer(
                placeholder,
                port=s.port,
                baudrate=s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
                ignore_missing_devices=True,
            )
        else:
            server = ModbusTcpServer(placeholder, address=(self.host, self.port), ignore_missing_devices=True)
        server.context = self.store  # type: ignore[assignment]
        await server.serve_forever(background=True)
        self._server = server
        log.info("modbus server on %s (units %s)", self.url, sorted(self.images))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            log.info("modbus server on %s stopped", self.url)

    def silence(self, units: set[int]) -> None:
        self.store.silent = set(units)

    def publish(self, values: F64, quality: U8) -> None:
        for image in self.images.values():
            image.update(values, quality)
