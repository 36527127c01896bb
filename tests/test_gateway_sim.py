"""The three gateways against the bundled plant simulators: what arrives is what the model computed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway_helpers import Collector, Mosquitto, wait_for
from hazmon.gateways import open_gateway
from hazmon.gateways.config import ModbusGateway, ModbusType, OpcUaGateway, load_gateway_config, tag_ids
from hazmon.plant.site import Site, load_site
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.sim import Simulation, load_scenario, serve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "sites/demo-tank-farm.yaml")


@pytest.fixture
async def sim(site: Site, tmp_path: Path) -> AsyncIterator[Simulation]:
    broker = Mosquitto(tmp_path / "mosquitto")
    await broker.start()
    configs = [load_gateway_config(ROOT / f"gateways/demo-{p}.yaml", site) for p in ("opcua", "modbus", "mqtt")]
    scenario = load_scenario(ROOT / "simulators/normal.yaml", site)
    try:
        async with serve(
            site, configs, scenario, seed=1, manual=True, opcua_port=0, modbus_port=0, mqtt_port=broker.port
        ) as s:
            yield s
    finally:
        await broker.stop()


def tolerance(config: Any, tag: str, value: float) -> float:
    """What the wire format can carry: float32 rounding, scaled int16 resolution."""
    if isinstance(config, ModbusGateway):
        t = next(t for d in config.devices for t in d.tags if t.tag == tag)
        if t.type is ModbusType.FLOAT32:
            return abs(value) * 1e-6 + 1e-6
        if t.raw_range is not None and t.eng_range is not None:
            return abs(t.eng_range[1] - t.eng_range[0]) / abs(t.raw_range[1] - t.raw_range[0])
    return 1e-9


async def test_gateways_deliver_what_the_simulated_plant_computes(sim: Simulation, site: Site, tmp_path: Path) -> None:
    index = TagIndex.from_sites([site])  # tags named across sites; a gateway names its site's own
    gws = []
    for gid in ("demo-opcua", "demo-modbus", "demo-mqtt"):
        c = sim.config(gid)
        if isinstance(c, ModbusGateway):
            c = c.model_copy(update={"poll_groups": {"default": 100.0, "slow": 200.0}})
        if isinstance(c, OpcUaGateway):
            c = c.model_copy(update={"publishing_interval_ms": 100.0, "sampling_interval_ms": 0.0})
        gws.append((c, open_gateway(c, index.scoped(site.id), data_dir=tmp_path)))
    model = sim.model
    async with gws[0][1], gws[1][1], gws[2][1]:
        cols = [Collector(gw) for _, gw in gws]
        for col in cols:
            await col.__aenter__()
        try:
            await wait_for(lambda: all(gw.health().connected for _, gw in gws), 15, "gateways connected")
            for step in (5, 30):
                await sim.advance(step)

                def matches(cfg: Any, col: Collector) -> bool:
                    for tag in tag_ids(cfg):
                        i = model.index[tag]
                        if model.quality[i] >= 128:
                            continue
                        got = col.latest(index.key(tag_ref(site.id, tag)))
                        want = float(model.values[i])
                        if got is None or abs(got - want) > tolerance(cfg, tag, want):
                            return False
                    return True

                for (cfg, _), col in zip(gws, cols, strict=True):
                    await wait_for(lambda cfg=cfg, col=col: matches(cfg, col), 15, f"{cfg.id} matches the model")
            for _, gw in gws:
                h = gw.health()
                assert not h.quarantined, h.quarantined
                assert all(d.connected and not d.stale for d in h.devices.values())
            keys = {int(k) for _, gw in gws for ks in gw.devices().values() for k in ks}
            assert keys == {index.key(tag_ref(site.id, t)) for cfg, _ in gws for t in tag_ids(cfg)}
            assert np.all([col.rows() > 0 for col in cols])
        finally:
            for col in cols:
                await col.__aexit__()
