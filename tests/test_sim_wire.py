"""The simulators on the wire: plain asyncua, pymodbus and paho clients read what the model predicts,
and every scenario fault shows the way it is specified (bad status, silence, out of range, restart)."""

from __future__ import annotations

import asyncio
import json
import queue
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from hazmon.gateways.config import (
    ModbusGateway,
    MqttGateway,
    MqttTopic,
    OpcUaGateway,
    load_gateway_config,
)
from hazmon.plant.site import Site, load_site
from hazmon.sim import PlantModel, Simulation, load_scenario, serve

ROOT = Path(__file__).resolve().parents[1]
BROKER = ("127.0.0.1", 1883)


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "sites/demo-tank-farm.yaml")


def demo_configs(site: Site) -> list[Any]:
    """The demo gateway configs with a unique MQTT topic prefix and client id for this test."""
    prefix = f"test-sim-{uuid.uuid4().hex[:8]}"
    out: list[Any] = []
    for name in ("opcua", "modbus", "mqtt"):
        c = load_gateway_config(ROOT / f"gateways/demo-{name}.yaml", site)
        if isinstance(c, MqttGateway):
            c = c.model_copy(
                update={
                    "topics": [MqttTopic(filter=f"{prefix}/gds/+", format=c.topics[0].format)],
                    "broker": c.broker.model_copy(update={"client_id": prefix}),
                }
            )
        out.append(c)
    return out


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Subscriber:
    """A plain paho subscriber collecting JSON envelopes."""

    def __init__(self, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
        self.subscribed = False
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.client.on_subscribe = lambda *a: setattr(self, "subscribed", True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect(*BROKER)
        self.client.loop_start()

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
async def faults(site: Site) -> AsyncIterator[tuple[Simulation, Subscriber]]:
    scenario = load_scenario(ROOT / "simulators/sensor-faults.yaml", site)
    configs = demo_configs(site)
    mq = next(c for c in configs if isinstance(c, MqttGateway))
    sub = Subscriber(mq.topics[0].filter)
    await until(lambda: sub.subscribed, what="MQTT subscription")
    try:
        async with serve(site, configs, scenario, seed=3, manual=True, opcua_port=0, modbus_port=0) as sim:
            yield sim, sub
    finally:
        sub.close()


def node(ns: int, tag: str) -> ua.NodeId:
    return ua.NodeId(tag, ns, ua.NodeIdType.String)


async def test_clients_read_what_the_model_predicts_and_faults_show_on_the_wire(
    faults: tuple[Simulation, Subscriber], site: Site
) -> None:
    sim, sub = faults
    await sim.advance(610)  # bad quality 500..800 and out of range 600..900 are active
    model = sim.model
    # the model behind the servers is the pure model, step for step
    pure = PlantModel(site, model.scenario, seed=3)
    pure.run(610)
    assert np.array_equal(pure.values, model.values)

    # ---- OPC UA: exact Doubles, EU properties, BadSensorFailure, out-of-range value with good status
    opc = sim.config("demo-opcua")
    assert isinstance(opc, OpcUaGateway)
    async with Client(opc.endpoint) as client:
        ns = await client.get_namespace_index(opc.namespace)
        for tag in ("V101.LT", "V102.PT", "WS1.TT", "V104.FT"):
            assert await client.get_node(node(ns, tag)).read_value() == model.value(tag)
        assert await client.get_node(node(ns, "V101.XV")).read_value() is True
        v101_lt = client.get_node(node(ns, "V101.LT"))
        eu_range = await (await v101_lt.get_child("0:EURange")).read_value()
        assert (eu_range.Low, eu_range.High) == (0.0, 15.7)
        units = await (await v101_lt.get_child("0:EngineeringUnits")).read_value()
        assert units.DisplayName.Text == "m"
        path = await client.nodes.objects.get_child([f"{ns}:demo-tank-farm", f"{ns}:HI-01", f"{ns}:V101", f"{ns}:LT"])
        assert path.nodeid == v101_lt.nodeid
        bad = await client.get_node(node(ns, "V103.TT")).read_data_value(raise_on_bad_status=False)
        assert bad.StatusCode.value == ua.StatusCodes.BadSensorFailure
        over = await client.get_node(node(ns, "V104.PT")).read_data_value()
        assert over.StatusCode.is_good() and over.Value.Value > 2.5

    # ---- Modbus: float32 ABCD on unit 1, S7 int16 + float32 CDAB on unit 2, bits, wire-break code
    mb = sim.config("demo-modbus")
    assert isinstance(mb, ModbusGateway)
    plc = AsyncModbusTcpClient("127.0.0.1", port=mb.devices[0].port, timeout=1, retries=0)
    await plc.connect()
    try:
        regs = (await plc.read_holding_registers(0, count=8, device_id=1)).registers
        for k, tag in enumerate(("T201.LT", "T201.TT", "T201.PT", "T201.FT")):
            got = struct.unpack(">f", struct.pack(">HH", regs[2 * k], regs[2 * k + 1]))[0]
            assert got == np.float32(model.value(tag))
        assert model.value("T201.LT") < 0  # out of range low, as served
        bits = (await plc.read_discrete_inputs(0, count=3, device_id=1)).bits[:3]
        assert bits == [bool(model.value(t)) for t in ("T201.LSHH", "T201.PSHH", "K201.RUN")]
        coils = (await plc.read_coils(0, count=2, device_id=1)).bits[:2]
        assert coils == [model.value("T201.XV") == 1, model.value("T201.IS") == 1]
        regs = (await plc.read_holding_registers(0, count=34, device_id=2)).registers
        lt = int(np.int16(regs[0])) * 16 / 27648
        assert abs(lt - model.value("T301.LT")) <= 16 / 27648
        tt = struct.unpack(">f", struct.pack(">HH", regs[3], regs[2]))[0]  # word-swapped
        assert tt == np.float32(model.value("T301.TT"))
        assert regs[10] == 32767  # T302.LT bad quality: wire-break code
        assert int(np.int16(regs[21])) * 12 / 27648 - 2 > 10  # T303.PT over range
    finally:
        plc.close()

    # ---- MQTT: one envelope per device with seq = model step, exact values, quality codes
    mq = sim.config("demo-mqtt")
    assert isinstance(mq, MqttGateway)
    seen: dict[str, dict[str, Any]] = {}

    def collect() -> bool:
        for _, doc in sub.drain():
            if doc["seq"] == 610:
                seen[doc["device"]] = doc
        return len(seen) == 3

    await until(collect, what="envelopes of step 610")
    for device, doc in seen.items():
        assert doc["enterprise"] == "ecs"
        for r in doc["readings"]:
            tag = mq.points[f"{device}/{r['point']}"]
            assert r["value"] == model.value(tag)
            assert r["quality"] == model.quality_of(tag)
    assert {r["point"]: r["quality"] for r in seen["gds-hi01"]["readings"]}["ch07"] == 130  # V104.GT1
    assert {r["point"]: r["value"] for r in seen["gds-hi02"]["readings"]}["ch02"] > 150  # T201.AT2


async def test_comm_loss_silence_restart_and_no_communication(site: Site) -> None:
    scenario = load_scenario(ROOT / "simulators/comm-loss.yaml", site)
    configs = demo_configs(site)
    mqcfg = next(c for c in configs if isinstance(c, MqttGateway))
    sub = Subscriber(mqcfg.topics[0].filter)
    await until(lambda: sub.subscribed, what="MQTT subscription")
    try:
        async with serve(site, configs, scenario, seed=1, manual=True, opcua_port=0, modbus_port=0) as sim:
            mb = sim.config("demo-modbus")
            opc = sim.config("demo-opcua")
            assert isinstance(mb, ModbusGateway) and isinstance(opc, OpcUaGateway)
            port = mb.devices[0].port

            # 120 s: PLC-NH3 (unit 1) stops answering; PLC-MEOH (unit 2) still answers
            await sim.advance(121)
            plc = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
            await plc.connect()
            with pytest.raises(ModbusException):
                await plc.read_holding_registers(0, count=2, device_id=1)
            assert not (await plc.read_holding_registers(0, count=2, device_id=2)).isError()
            await sim.advance(60)  # 181 s: answering again
            assert not (await plc.read_holding_registers(0, count=2, device_id=1)).isError()

            # 300 s: the OPC UA server restarts: the session drops, connections are refused, then back
            async with Client(opc.endpoint, timeout=2) as client:
                ns = await client.get_namespace_index(opc.namespace)
                await sim.advance(120)  # 301 s
                with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError, ua.UaError)):
                    await client.get_node(node(ns, "V101.LT")).read_value()
            with pytest.raises(OSError):
                async with Client(opc.endpoint, timeout=1):
                    pass
            await sim.advance(20)  # 321 s: back
            async with Client(opc.endpoint) as client:
                ns = await client.get_namespace_index(opc.namespace)
                assert await client.get_node(node(ns, "V101.LT")).read_value() == sim.model.value("V101.LT")

            # 400 s: gds-hi01 stops publishing, the other devices go on
            sub.drain()
            await sim.advance(80)  # 401 s
            await until(
                lambda: any(d["seq"] == 401 for _, d in list(sub.messages.queue)), what="an envelope of step 401"
            )
            await sim.advance(1)
            await until(
                lambda: sum(d["seq"] == 402 for _, d in list(sub.messages.queue)) == 2, what="two envelopes at 402"
            )
            devices = {d["device"] for _, d in sub.drain() if d["seq"] in (401, 402)}
            assert devices == {"gds-hi02", "gds-hi03"}

            # 600 s: the Modbus server restarts: the open connection is closed, new ones refused
            await sim.advance(199)  # 601 s
            await until(lambda: not plc.connected, what="the Modbus connection to close")
            refused = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
            assert not await refused.connect()
            refused.close()
            await sim.advance(15)  # 616 s: back
            plc2 = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
            assert await plc2.connect()
            assert not (await plc2.read_holding_registers(0, count=2, device_id=1)).isError()
            plc2.close()
            plc.close()

            # 700 s: the DCS loses its PLC: every node reads BadNoCommunication, then recovers
            await sim.advance(85)  # 701 s
            async with Client(opc.endpoint) as client:
                ns = await client.get_namespace_index(opc.namespace)
                dv = await client.get_node(node(ns, "V102.PT")).read_data_value(raise_on_bad_status=False)
                assert dv.StatusCode.value == ua.StatusCodes.BadNoCommunication
                await sim.advance(30)  # 731 s
                dv = await client.get_node(node(ns, "V102.PT")).read_data_value()
                assert dv.StatusCode.is_good() and dv.Value.Value == sim.model.value("V102.PT")
    finally:
        sub.close()


async def test_real_time_run_publishes_the_same_series_as_the_pure_model(site: Site) -> None:
    """Accelerated real time (x50): the envelopes on the broker equal a pure run with the same seed."""
    scenario = load_scenario(ROOT / "simulators/leak.yaml", site)
    configs = [c for c in demo_configs(site) if isinstance(c, MqttGateway)]
    sub = Subscriber(configs[0].topics[0].filter)
    await until(lambda: sub.subscribed, what="MQTT subscription")
    try:
        async with serve(site, configs, scenario, seed=11, speed=50.0) as sim:
            await sim.wait_step(60, timeout=20)
    finally:
        await asyncio.sleep(0)
    got: dict[int, dict[str, float]] = {}
    await until(lambda: sub.messages.qsize() >= 3 * 60, what="60 steps of envelopes")
    for _, doc in sub.drain():
        for r in doc["readings"]:
            got.setdefault(doc["seq"], {})[f"{doc['device']}/{r['point']}"] = r["value"]
    sub.close()
    series = PlantModel(site, scenario, seed=11).run(60)
    points = configs[0].points
    for seq in range(1, 61):
        if seq not in got:
            continue  # a late step is caught up and published with the next one
        for key, value in got[seq].items():
            assert value == series.values[seq, series.tag_ids.index(points[key])]
    assert len(got) >= 30


async def test_scale_mode_serves_10000_tags_from_one_process() -> None:
    from hazmon.sim.scale import scale_plant

    site, configs, scenario = scale_plant(2000, protocol="modbus")
    assert len(site.tags) == 10_000
    async with serve(site, configs, scenario, manual=True, modbus_port=0) as sim:
        await sim.advance(2)
        mb = sim.config("scale-modbus")
        assert isinstance(mb, ModbusGateway) and len(mb.devices) == 20
        plc = AsyncModbusTcpClient("127.0.0.1", port=mb.devices[0].port, timeout=1, retries=0)
        await plc.connect()
        try:
            regs = (await plc.read_holding_registers(594, count=6, device_id=20)).registers  # last tank
            tank = "TK01999"
            for k, m in enumerate(("LT", "TT", "PT")):
                got = struct.unpack(">f", struct.pack(">HH", regs[2 * k], regs[2 * k + 1]))[0]
                assert got == np.float32(sim.model.value(f"{tank}.{m}"))
        finally:
            plc.close()
