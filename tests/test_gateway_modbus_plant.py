"""Modbus as it meets real plants: many unit ids behind one endpoint that takes few connections, a dead
unit among them, a half-working bridge, foreign layouts (per-tag word order, scale/offset, packed bits)
and tag templates. Real pymodbus servers on loopback; pymodbus' own packing builds the foreign layout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from gateway_helpers import Collector, free_port, wait_for
from hazmon.errors import InvalidFile
from hazmon.gateways import open_gateway
from hazmon.gateways.config import ModbusDevice, ModbusGateway, parse_gateway_config
from hazmon.gateways.modbus import ModbusGatewayImpl, _TcpLink
from hazmon.plant.tag import TagIndex
from hazmon.reading import Quality
from hazmon.sim.modbus import ModbusEndpoint
from tcpproxy import TcpProxy

DT = AsyncModbusTcpClient.DATATYPE


def _gateway(devices: list[dict[str, Any]], **extra: Any) -> ModbusGateway:
    doc = {
        "gateway": {
            "id": "mb",
            "protocol": "modbus",
            "site": "x",
            "poll_groups": {"default": 100},
            "backoff": {"initial_s": 0.05, "max_s": 0.5},
            "devices": devices,
            **extra,
        }
    }
    cfg = parse_gateway_config(doc)
    assert isinstance(cfg, ModbusGateway)
    return cfg


# ---------------------------------------------------------------- 20 units, one endpoint, 2 connections


@pytest.fixture
async def twenty_units() -> AsyncIterator[tuple[ModbusEndpoint, TcpProxy, list[ModbusDevice], TagIndex]]:
    devices = [
        ModbusDevice.model_validate(
            {
                "id": f"U{u:02d}",
                "unit": u,
                "timeout_s": 0.5,
                "retries": 0,
                "tags": [
                    {"tag": f"U{u:02d}.LT", "address": 0, "type": "float32"},
                    {"tag": f"U{u:02d}.PT", "address": 2, "type": "int16", "scale": 0.01},
                ],
            }
        )
        for u in range(1, 21)
    ]
    index = TagIndex([t.tag for d in devices for t in d.tags])
    server = ModbusEndpoint("127.0.0.1", free_port(), devices, {t: index.key(t) for t in index.ids})
    values = np.array([float(k) + 0.5 for k in range(len(index))])
    values[1::2] = np.arange(len(index) // 2) * 0.25  # the int16 pressures, scaled by 1/100
    server.publish(values, np.zeros(len(index), np.uint8))
    await server.start()
    proxy = TcpProxy("127.0.0.1", server.port, max_connections=2)  # a TCP-to-RTU bridge: two slots
    await proxy.start()
    yield server, proxy, devices, index
    await proxy.stop()
    await server.stop()


async def test_twenty_units_share_one_connection_and_a_dead_unit_stalls_none(
    twenty_units: tuple[ModbusEndpoint, TcpProxy, list[ModbusDevice], TagIndex], tmp_path: Path
) -> None:
    server, proxy, devices, index = twenty_units
    server.silence({7})  # unit 7 does not answer at all
    cfg = _gateway([{**d.model_dump(mode="json"), "port": proxy.port} for d in devices])
    gw = open_gateway(cfg, index, data_dir=tmp_path)
    assert isinstance(gw, ModbusGatewayImpl)
    live = [d.id for d in devices if d.unit != 7]
    async with gw, Collector(gw) as col:
        await wait_for(
            lambda: all(gw.health().devices[d].connected for d in live), timeout=10, what="19 units answering"
        )
        # every live unit keeps being polled while unit 7 times out again and again
        counts0 = {d: len(col.values(index.key(f"{d}.LT"))) for d in live}
        await wait_for(lambda: gw.health().devices["U07"].errors.get("connection", 0) >= 3, what="unit 7 retried")
        await asyncio.sleep(1.0)
        polled = {d: len(col.values(index.key(f"{d}.LT"))) - counts0[d] for d in live}
        assert min(polled.values()) >= 3, polled
        h = gw.health()
        assert all(h.devices[d].connected and not h.devices[d].stale for d in live)
        assert not h.devices["U07"].connected
        assert col.latest(index.key("U03.LT")) == index.key("U03.LT") + 0.5
        assert col.latest(index.key("U03.PT")) == pytest.approx((index.key("U03.PT") // 2) * 0.25)
        dead = col.all()
        assert dead.quality[dead.tag == index.key("U07.LT")].tolist() == [Quality.BAD_COMM]  # once
        # one connection for all 20 units: the bridge never had to refuse one
        assert gw.connections_opened == 1
        assert proxy.peak_connections == 1 and proxy.over_limit == 0
        # unit 7 comes back: it answers again on the same connection
        server.silence(set())
        await wait_for(lambda: gw.health().devices["U07"].connected, timeout=10, what="unit 7 back")
        await wait_for(lambda: col.latest(index.key("U07.LT")) is not None, what="unit 7 values")
        assert gw.connections_opened == 1


async def test_pipelined_requests_are_matched_by_transaction_id(
    twenty_units: tuple[ModbusEndpoint, TcpProxy, list[ModbusDevice], TagIndex], tmp_path: Path
) -> None:
    """``pipeline: 4``: several requests in flight on the one connection; every unit gets its own values.

    (pymodbus' server answers the requests of one TCP segment one at a time, so this checks the
    matching, not a speed-up.)"""
    _server, proxy, devices, index = twenty_units
    cfg = _gateway(
        [{**d.model_dump(mode="json"), "port": proxy.port, "pipeline": 4, "timeout_s": 1.0} for d in devices]
    )
    gw = open_gateway(cfg, index, data_dir=tmp_path)
    async with gw, Collector(gw) as col:
        await wait_for(
            lambda: all(col.latest(index.key(f"{d.id}.LT")) is not None for d in devices), what="all 20 units"
        )
        for d in devices:
            assert col.latest(index.key(f"{d.id}.LT")) == index.key(f"{d.id}.LT") + 0.5
        assert proxy.peak_connections == 1


async def test_a_failure_later_in_the_cycle_keeps_what_was_decoded(tmp_path: Path) -> None:
    """A bridge answers holding registers but never input registers: the holding values still arrive."""
    dev = ModbusDevice.model_validate(
        {
            "id": "PLC",
            "unit": 2,
            "timeout_s": 0.5,
            "retries": 0,
            "tags": [
                {"tag": "A.LT", "address": 0, "type": "float32"},
                {"tag": "A.TT", "table": "input", "address": 0, "type": "float32"},
            ],
        }
    )
    index = TagIndex(["A.LT", "A.TT"])
    server = ModbusEndpoint("127.0.0.1", free_port(), [dev], {"A.LT": 0, "A.TT": 1})
    server.publish(np.array([3.5, 20.0]), np.zeros(2, np.uint8))
    await server.start()
    server.store.mute = {(2, 4)}
    try:
        gw = open_gateway(_gateway([{**dev.model_dump(mode="json"), "port": server.port}]), index, data_dir=tmp_path)
        async with gw, Collector(gw) as col:
            await wait_for(lambda: len(col.values(index.key("A.LT"))) >= 3, what="holding values, again and again")
            assert col.latest(index.key("A.LT")) == 3.5
            h = gw.health().devices["PLC"]
            assert h.errors.get("partial_cycle", 0) >= 3
            assert not h.connected  # a unit that answers only in part is lost: its comm-loss alarm stands
            b = col.all()
            assert b.quality[b.tag == index.key("A.TT")].tolist() == [Quality.BAD_COMM]  # reported once
    finally:
        await server.stop()


async def test_a_gateway_stopped_while_it_closes_a_link_stops() -> None:
    """Closing a link waits for its receiver; a stop (cancellation) arriving just then must end the
    closing task, not be swallowed: a swallowed one left a gateway polling on and its stop hanging."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = server.sockets[0].getsockname()[1]
    try:
        link = _TcpLink("127.0.0.1", port, pipeline=1)
        await link.open(timeout=2.0)
        closer = asyncio.create_task(link.close())
        await asyncio.sleep(0)  # the closer now waits for the receiver to end
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closer, 5)
        await link.close()  # and a link can still be closed afterwards
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- a device laid out unlike the simulators


def _pack(value: Any, dt: Any, word_order: str) -> list[int]:
    return AsyncModbusTcpClient.convert_to_registers(value, dt, word_order=word_order)  # type: ignore[arg-type]


@pytest.fixture
async def foreign_device() -> AsyncIterator[int]:
    """Unit 7: a PLC with CDAB floats beside an ABCD one, int32 in 1/100, %LEL as uint16, a float64,
    a packed alarm word, a coil, and 100 tank levels at registers 1000..1199."""
    hr = [0] * 1300
    hr[0:2] = _pack(12.75, DT.FLOAT32, "little")  # CDAB
    hr[2:4] = _pack(-4.5, DT.FLOAT32, "big")  # ABCD on the same device
    hr[4:6] = _pack(-123456, DT.INT32, "little")  # -1234.56 in 1/100
    hr[6] = 37  # %LEL
    hr[8:12] = _pack(98765.4321, DT.FLOAT64, "little")
    hr[20] = 0b0000_0000_0010_1001  # gas controller alarm word: channels 0, 3 and 5 in alarm
    for i in range(100):
        hr[1000 + 2 * i : 1002 + 2 * i] = _pack(float(i) + 0.5, DT.FLOAT32, "little")
    coils = [False] * 8
    coils[3] = True
    device = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, hr), co=ModbusSequentialDataBlock(1, coils))
    port = free_port()
    server = ModbusTcpServer(ModbusServerContext(devices={7: device}, single=False), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    yield port
    await server.shutdown()


FOREIGN = {
    "id": "PLC7",
    "unit": 7,
    "word_order": "little",
    "tags": [
        {"tag": "F.TT", "address": 0, "type": "float32"},
        {"tag": "F.PT", "address": 2, "type": "float32", "word_order": "big"},
        {"tag": "F.FT", "address": 4, "type": "int32", "scale": 0.01},
        {"tag": "F.GT", "address": 6, "type": "uint16"},
        {"tag": "F.QT", "address": 8, "type": "float64"},
        {"tag": "F.LT", "address": 10, "type": "uint16", "scale": 0.5, "offset": -10},  # overlaps F.QT: refused
        {"tag": "GD.CH0", "address": 20, "type": "uint16", "bit": 0},
        {"tag": "GD.CH1", "address": 20, "type": "uint16", "bit": 1},
        {"tag": "GD.CH3", "address": 20, "type": "uint16", "bit": 3},
        {"tag": "GD.CH5", "address": 20, "type": "uint16", "bit": 5},
        {"tag": "F.XV", "table": "coil", "address": 3, "type": "bool"},
    ],
    "templates": [{"tag": "T{n:03d}.LT", "count": 100, "first": 1, "address": 1000, "type": "float32"}],
}


def test_overlapping_registers_are_refused_but_bits_of_one_register_are_not() -> None:
    with pytest.raises(InvalidFile) as e:
        _gateway([FOREIGN])
    assert [p.path for p in e.value.problems] == ["gateway.devices[0].tags[5].address"]
    with pytest.raises(InvalidFile) as e:
        _gateway([{"id": "d", "tags": [{"tag": "x", "address": 0, "type": "float32", "bit": 1}]}])
    assert "bit: only in a 16-bit register" in str(e.value)
    with pytest.raises(InvalidFile) as e:
        _gateway([{"id": "d", "templates": [{"tag": "T{i}.LT", "count": 2, "address": 0}]}])
    assert "templates[0]" in str(e.value) and "{n}" in str(e.value)


async def test_a_foreign_layout_decodes_exactly(foreign_device: int, tmp_path: Path) -> None:
    device = {**FOREIGN, "port": foreign_device, "tags": [t for t in FOREIGN["tags"] if t["tag"] != "F.LT"]}  # type: ignore[attr-defined]
    cfg = _gateway([device])
    assert len(cfg.devices[0].tags) == 10 + 100
    index = TagIndex([t.tag for t in cfg.devices[0].tags])
    gw = open_gateway(cfg, index, data_dir=tmp_path)
    async with gw, Collector(gw) as col:
        await wait_for(lambda: all(col.latest(index.key(t)) is not None for t in index.ids), what="every tag")
        got = {t: col.latest(index.key(t)) for t in index.ids}
    assert got["F.TT"] == 12.75 and got["F.PT"] == -4.5
    assert got["F.FT"] == pytest.approx(-1234.56) and got["F.GT"] == 37
    assert got["F.QT"] == 98765.4321
    assert [got[f"GD.CH{c}"] for c in (0, 1, 3, 5)] == [1.0, 0.0, 1.0, 1.0]
    assert got["F.XV"] == 1.0
    assert [got[f"T{n:03d}.LT"] for n in range(1, 101)] == [n - 0.5 for n in range(1, 101)]
    plan = gw.blocks("PLC7")["default"]  # type: ignore[attr-defined]
    assert [(b.table, b.start, b.count) for b in plan] == [
        ("holding", 0, 21),  # the alarm word is within max_gap (8) of the values: one read
        ("holding", 1000, 124),
        ("holding", 1124, 76),
        ("coil", 3, 1),
    ]
