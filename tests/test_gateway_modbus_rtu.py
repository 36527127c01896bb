"""Modbus RTU over a virtual RS-485 line: the simulator on one end of a socat pty pair, hazmon on the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway_helpers import Collector, PtyPair, wait_for
from hazmon.gateways import open_gateway
from hazmon.gateways.config import ModbusDevice, ModbusGateway, ModbusSerial, parse_gateway_config
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.reading import Quality
from hazmon.sim.modbus import ModbusEndpoint

ROOT = Path(__file__).resolve().parents[1]
# parity N: a Linux pty refuses PARENB when pymodbus reconfigures it (a real UART takes E or O)
LINE = {"baudrate": 19200, "parity": "N", "stopbits": 1}
# a radar level gauge (unit 1: level in mm as uint32 CDAB, temperature in 0.1 °C as int16) and a gas
# detection controller (unit 2: %LEL per channel as uint16, a packed alarm word) on one RS-485 line
DEVICES: list[dict[str, Any]] = [
    {
        "id": "LG-T101",
        "unit": 1,
        "word_order": "little",
        "tags": [
            {"tag": "T101.LT", "address": 0, "type": "uint32", "scale": 0.001},
            {"tag": "T101.TT", "address": 2, "type": "int16", "scale": 0.1},
        ],
    },
    {
        "id": "GDS-1",
        "unit": 2,
        "tags": [
            {"tag": "GD1.GAS", "table": "input", "address": 0, "type": "uint16"},
            {"tag": "GD2.GAS", "table": "input", "address": 1, "type": "uint16"},
        ],
        # the alarm word: bit 0 = channel 1, bit 1 = channel 2
        "templates": [{"tag": "GD{n}.AH", "count": 2, "table": "input", "address": 10, "type": "uint16", "bit": 0}],
    },
]
TAGS = ["T101.LT", "T101.TT", "GD1.GAS", "GD2.GAS", "GD1.AH", "GD2.AH"]
VALUES = np.array([7.345, -12.5, 23.0, 0.0, 1.0, 0.0])


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[ModbusEndpoint, PtyPair]]:
    pty = PtyPair(tmp_path)
    await pty.start()
    devices = [
        ModbusDevice.model_validate({**d, "transport": "rtu", "serial": {"port": str(pty.a), **LINE}}) for d in DEVICES
    ]
    assert devices[0].serial is not None
    plc = ModbusEndpoint("rtu", 0, devices, {t: i for i, t in enumerate(TAGS)}, serial=devices[0].serial)
    plc.publish(VALUES, np.zeros(len(VALUES), np.uint8))
    await plc.start()
    yield plc, pty
    await plc.stop()
    await pty.stop()


def _config(port: Path) -> ModbusGateway:
    doc = {
        "gateway": {
            "id": "rtu",
            "protocol": "modbus",
            "site": "x",
            "poll_groups": {"default": 200},
            "backoff": {"initial_s": 0.1, "max_s": 0.5},
            "devices": [
                {**d, "transport": "rtu", "serial": {"port": str(port), **LINE}, "timeout_s": 0.5, "retries": 0}
                for d in DEVICES
            ],
        }
    }
    cfg = parse_gateway_config(doc)
    assert isinstance(cfg, ModbusGateway)
    return cfg


def test_rtu_needs_its_serial_line() -> None:
    from hazmon.errors import InvalidFile

    with pytest.raises(InvalidFile, match="serial: required with transport: rtu"):
        parse_gateway_config(
            {"gateway": {"id": "g", "protocol": "modbus", "site": "x", "devices": [{**DEVICES[0], "transport": "rtu"}]}}
        )
    assert ModbusSerial(port="/dev/ttyUSB0").parity == "N"


async def test_two_units_on_one_rs485_line_decode_and_a_silent_one_is_isolated(
    line: tuple[ModbusEndpoint, PtyPair], tmp_path: Path
) -> None:
    plc, pty = line
    index = TagIndex(TAGS)
    gw = open_gateway(_config(pty.b), index, data_dir=tmp_path)
    async with gw, Collector(gw) as col:
        await wait_for(lambda: all(col.latest(index.key(t)) is not None for t in TAGS), what="every tag over RTU")
        got = [col.latest(index.key(t)) for t in TAGS]
        assert got == pytest.approx(VALUES.tolist())
        assert gw.connections_opened == 1  # type: ignore[attr-defined]
        # the gas controller goes silent: the level gauge goes on
        plc.silence({2})
        await wait_for(lambda: not gw.health().devices["GDS-1"].connected, what="unit 2 lost")
        n = len(col.values(index.key("T101.LT")))
        # the level gauge keeps being read while the silent unit is probed (no fixed wait: a loaded
        # machine reads more slowly, but a line held by the silent unit would read nothing more)
        await wait_for(lambda: len(col.values(index.key("T101.LT"))) - n >= 3, 5, "unit 1 read on, beside it")
        assert gw.health().devices["LG-T101"].connected
        b = col.all()
        assert b.quality[b.tag == index.key("GD1.GAS")].tolist()[-1] == Quality.BAD_COMM
        plc.silence(set())
        await wait_for(lambda: gw.health().devices["GDS-1"].connected, what="unit 2 back")
        assert gw.connections_opened == 1  # type: ignore[attr-defined]


async def test_the_demo_plcs_served_over_rtu_by_the_simulator(tmp_path: Path) -> None:
    """`hazmon sim` serves a gateway file's RTU devices on its serial line: the demo PLCs moved to RS-485."""
    from hazmon.gateways.config import load_gateway_config, tag_ids
    from hazmon.plant.site import load_site
    from hazmon.sim import load_scenario, serve

    root = ROOT
    site = load_site(root / "sites/demo-tank-farm.yaml")
    demo = load_gateway_config(root / "gateways/demo-modbus.yaml", site)
    assert isinstance(demo, ModbusGateway)
    pty = PtyPair(tmp_path)
    await pty.start()

    def on(port: Path) -> ModbusGateway:
        line = ModbusSerial(port=str(port), baudrate=19200)
        devices = [d.model_copy(update={"transport": "rtu", "serial": line, "timeout_s": 0.5}) for d in demo.devices]
        return demo.model_copy(update={"devices": devices, "poll_groups": {"default": 100.0, "slow": 200.0}})

    try:
        scenario = load_scenario(root / "simulators/normal.yaml", site)
        async with serve(site, [on(pty.a)], scenario, seed=1, manual=True) as sim:
            assert any(e.url.startswith("modbus-rtu://") for e in sim.endpoints)
            index = TagIndex.from_sites([site])  # tags named across sites; the gateway names its site's own
            gw = open_gateway(on(pty.b), index.scoped(site.id), data_dir=tmp_path)
            async with gw, Collector(gw) as col:
                await sim.advance(5)
                model = sim.model

                def matches() -> bool:
                    for tag in tag_ids(demo):
                        i = model.index[tag]
                        got = col.latest(index.key(tag_ref(site.id, tag)))
                        if model.quality[i] < 128 and (got is None or abs(got - float(model.values[i])) > 0.01):
                            return False
                    return True

                await wait_for(matches, 15, "the demo PLCs' values over RTU")
                assert gw.connections_opened == 1  # type: ignore[attr-defined]
    finally:
        await pty.stop()
