"""Modbus TCP gateway against a pymodbus server built here (its own layout, little-endian words)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from gateway_helpers import Collector, free_port, wait_for
from hazmon.gateways import open_gateway
from hazmon.gateways.base import ConnectionState
from hazmon.gateways.config import ModbusType, parse_gateway_config
from hazmon.gateways.modbus import decode_registers, encode_registers, plan_blocks
from hazmon.plant.tag import TagIndex
from hazmon.reading import Quality

DT = AsyncModbusTcpClient.DATATYPE
UNIT = 3

# (tag, table, address, type, value on the device, pymodbus datatype)
LAYOUT: list[tuple[str, str, int, str, Any, Any]] = [
    ("T.A", "holding", 100, "float32", 12.5, DT.FLOAT32),
    ("T.B", "holding", 102, "float32", -3.25, DT.FLOAT32),
    ("T.C", "holding", 110, "int16", -200, DT.INT16),
    ("T.D", "holding", 111, "uint16", 65000, DT.UINT16),
    ("T.E", "holding", 120, "int32", -123456, DT.INT32),
    ("T.F", "holding", 122, "uint32", 4_000_000_000, DT.UINT32),
    ("T.G", "holding", 130, "float64", 1234.5678, DT.FLOAT64),
    ("T.H", "input", 5, "int16", 42, DT.INT16),
]
TAGS = [t[0] for t in LAYOUT] + ["T.I", "T.J", "D.X"]


def _registers(word_order: str) -> tuple[list[int], list[int]]:
    hr, ir = [0] * 200, [0] * 20
    for _tag, table, addr, _type, value, dt in LAYOUT:
        regs = AsyncModbusTcpClient.convert_to_registers(value, dt, word_order=word_order)  # type: ignore[arg-type]
        target = hr if table == "holding" else ir
        target[addr : addr + len(regs)] = regs
    return hr, ir


async def start_server(port: int, word_order: str = "little") -> ModbusTcpServer:
    hr, ir = _registers(word_order)
    coils = [False] * 16
    coils[2] = True
    di = [False] * 16
    di[7] = True
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, hr),
        ir=ModbusSequentialDataBlock(1, ir),
        co=ModbusSequentialDataBlock(1, coils),
        di=ModbusSequentialDataBlock(1, di),
    )
    server = ModbusTcpServer(ModbusServerContext(devices={UNIT: device}, single=False), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


def gateway_doc(port: int, dead_port: int, *, timeout_s: float = 0.3) -> dict[str, Any]:
    tags: list[dict[str, Any]] = [
        {"tag": tag, "table": table, "address": addr, "type": type_, "group": "fast" if tag == "T.A" else "default"}
        for tag, table, addr, type_, _v, _dt in LAYOUT
    ]
    tags[2]["raw_range"] = [-1000, 1000]
    tags[2]["eng_range"] = [-10, 10]
    tags.append({"tag": "T.I", "table": "coil", "address": 2, "type": "bool"})
    tags.append({"tag": "T.J", "table": "discrete_input", "address": 7, "type": "bool"})
    return {
        "gateway": {
            "id": "mb-foreign",
            "protocol": "modbus",
            "site": "x",
            "poll_groups": {"default": 200, "fast": 50},
            "backoff": {"initial_s": 0.05, "max_s": 0.2},
            "devices": [
                {"id": "plc3", "port": port, "unit": UNIT, "word_order": "little", "tags": tags},
                {
                    "id": "dead",
                    "port": dead_port,
                    "timeout_s": timeout_s,
                    "retries": 0,
                    "tags": [{"tag": "D.X", "address": 0}],
                },
            ],
        }
    }


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    port = free_port()
    server = await start_server(port)
    yield port
    await server.shutdown()


def test_decode_matches_pymodbus_for_every_type_and_order() -> None:
    rng = np.random.default_rng(1)
    cases = [
        (ModbusType.INT16, DT.INT16, rng.integers(-32768, 32767, 50)),
        (ModbusType.UINT16, DT.UINT16, rng.integers(0, 65535, 50)),
        (ModbusType.INT32, DT.INT32, rng.integers(-(2**31), 2**31 - 1, 50)),
        (ModbusType.UINT32, DT.UINT32, rng.integers(0, 2**32 - 1, 50)),
        (ModbusType.FLOAT32, DT.FLOAT32, rng.normal(0, 1e4, 50).astype(np.float32)),
        (ModbusType.FLOAT64, DT.FLOAT64, rng.normal(0, 1e9, 50)),
    ]
    for type_, dt, values in cases:
        for word_order in ("big", "little"):
            regs: list[int] = []
            for v in values.tolist():
                regs += AsyncModbusTcpClient.convert_to_registers(v, dt, word_order=word_order)  # type: ignore[arg-type]
            width = len(regs) // len(values)
            offsets = np.arange(len(values)) * width
            got = decode_registers(regs, offsets, type_, "big", word_order)
            np.testing.assert_array_equal(got, values.astype(np.float64), err_msg=f"{type_} {word_order}")
            # byte-swapped devices: the same values with the bytes of every register swapped
            swapped = np.asarray(regs, dtype=np.uint16).byteswap()
            np.testing.assert_array_equal(decode_registers(swapped, offsets, type_, "little", word_order), got)
            back = encode_registers(values, type_, "big", word_order)
            assert back.tolist() == regs


def test_neighbouring_registers_coalesce_into_reads_of_at_most_125() -> None:
    tags = [{"tag": f"R{i}", "address": i * 2, "type": "float32"} for i in range(100)]  # 200 registers
    tags += [{"tag": "FAR", "address": 1000, "type": "int16"}, {"tag": "NEAR", "address": 1005, "type": "int16"}]
    doc = {
        "gateway": {
            "id": "g",
            "protocol": "modbus",
            "site": "x",
            "devices": [{"id": "d", "max_gap": 8, "tags": tags}],
        }
    }
    cfg = parse_gateway_config(doc)
    index = TagIndex([t["tag"] for t in tags])
    blocks = plan_blocks(cfg.devices[0], index)["default"]  # type: ignore[union-attr]
    assert [(b.start, b.count) for b in blocks] == [(0, 124), (124, 76), (1000, 6)]
    assert all(b.count <= 125 for b in blocks)
    assert sum(len(b.keys) for b in blocks) == len(tags)


async def test_reads_every_type_scaled_and_a_dead_device_delays_nothing(server_port: int, tmp_path: Any) -> None:
    cfg = parse_gateway_config(gateway_doc(server_port, free_port()))
    index = TagIndex(TAGS)
    gw = open_gateway(cfg, index, data_dir=tmp_path)
    async with gw, Collector(gw) as col:
        await wait_for(lambda: all(col.latest(index.key(t)) is not None for t in TAGS[:-1]), what="every tag")
        got = {t: col.latest(index.key(t)) for t in TAGS[:-1]}
        assert got["T.A"] == 12.5 and got["T.B"] == -3.25
        assert got["T.C"] == pytest.approx(-2.0)  # -200 raw in [-1000, 1000] -> [-10, 10]
        assert got["T.D"] == 65000 and got["T.E"] == -123456 and got["T.F"] == 4_000_000_000
        assert got["T.G"] == pytest.approx(1234.5678)
        assert got["T.H"] == 42 and got["T.I"] == 1.0 and got["T.J"] == 1.0
        # the fast group (50 ms) runs while the dead device times out again and again
        n0 = len(col.values(index.key("T.A")))
        await asyncio.sleep(1.0)
        n1 = len(col.values(index.key("T.A")))
        assert n1 - n0 >= 12, f"only {n1 - n0} polls of the 50 ms group in 1 s"
        health = gw.health()
        assert health.devices["plc3"].connected and not health.devices["plc3"].stale
        assert not health.devices["dead"].connected
        assert health.devices["dead"].state in (ConnectionState.BACKOFF, ConnectionState.CONNECTING)
        assert health.devices["dead"].errors.get("connection", 0) >= 2
        dead = col.all()
        dead_rows = dead.quality[dead.tag == index.key("D.X")]
        assert dead_rows.tolist() == [Quality.BAD_COMM]  # reported once, not on every retry
        assert gw.devices()["plc3"].tolist() == [index.key(t) for t in TAGS[:8]] + [index.key("T.I"), index.key("T.J")]


async def test_server_restart_resumes_polling(tmp_path: Any) -> None:
    port = free_port()
    server = await start_server(port)
    cfg = parse_gateway_config(gateway_doc(port, free_port()))
    index = TagIndex(TAGS)
    gw = open_gateway(cfg, index, data_dir=tmp_path)
    key = index.key("T.A")
    async with gw, Collector(gw) as col:
        await wait_for(lambda: col.latest(key) is not None, what="first reading")
        await server.shutdown()
        await wait_for(lambda: not gw.health().devices["plc3"].connected, what="loss detected")
        bad = col.all()
        assert Quality.BAD_COMM in bad.quality[bad.tag == key].tolist()
        server = await start_server(port)
        n = len(col.values(key))
        await wait_for(lambda: len(col.values(key)) > n + 3, what="polling resumed")
        assert gw.health().devices["plc3"].reconnects >= 1
    await server.shutdown()


def test_failure_codes_read_as_bad_quality_not_as_values() -> None:
    """An S7 analog card sends 32767 for a broken wire: that is a failed sensor, not a full tank."""
    from hazmon.gateways.config import ModbusDevice
    from hazmon.gateways.modbus import plan_blocks
    from hazmon.plant.tag import TagIndex
    from hazmon.reading import Quality

    device = ModbusDevice.model_validate(
        {
            "id": "plc",
            "tags": [
                {"tag": "a", "address": 0, "type": "int16", "raw_range": [0, 27648], "eng_range": [0, 16],
                 "bad_raw": [32767, -32768]},
                {"tag": "b", "address": 1, "type": "int16", "raw_range": [0, 27648], "eng_range": [0, 16]},
            ],
        }
    )  # fmt: skip
    (block,) = plan_blocks(device, TagIndex(["a", "b"]))["default"]
    values, quality = block.decode([32767, 32767])
    assert list(quality) == [Quality.BAD_SENSOR, Quality.GOOD]
    assert np.isnan(values[0]) and values[1] > 16  # without bad_raw the code reads as a value
    values, quality = block.decode([13824, 0])
    assert list(quality) == [0, 0] and values[0] == 8.0
