"""Scale mode for benchmarks: the synthetic plant spread over simulator processes, one protocol and slice
each, and `hazmon sim --scale N --write-config DIR` writing the files `hazmon serve` reads. End to end:
three simulator processes serve a plant and a real runtime, configured from the written files only,
receives data from every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from hazmon.alarms.compiler import load_rules
from hazmon.config import load_settings
from hazmon.gateways.config import ModbusGateway, OpcUaGateway, load_gateway_config
from hazmon.plant.site import load_site
from hazmon.runtime import run_runtime
from hazmon.sim.scale import TAGS_PER_TANK, scale_layout, write_config
from hazmon.sim.service import free_port_run


def test_layout_spreads_tanks_over_parts_one_protocol_each() -> None:
    layout = scale_layout(20_000, protocol="both", opcua_port=4840, modbus_port=5020)
    opcua = [p for p in layout.parts if p.protocol == "opcua"]
    modbus = [p for p in layout.parts if p.protocol == "modbus"]
    assert sum(p.tags for p in layout.parts) == 20_000 * TAGS_PER_TANK  # every tank served once
    assert max(p.tags for p in opcua) <= 5_000 and max(p.tags for p in modbus) <= 25_000
    assert len(opcua) == 10 and len(modbus) == 2
    assert [p.port for p in opcua] == list(range(4840, 4850)) and [p.port for p in modbus] == [5020, 5021]
    covered = sorted((p.first, p.last) for p in layout.parts)
    assert covered[0][0] == 0 and covered[-1][1] == 20_000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # no gap, no overlap


def test_write_config_writes_files_that_load(tmp_path: Path) -> None:
    layout = scale_layout(1_000, protocol="both", opcua_tags_per_part=1_000, modbus_tags_per_part=1_000)
    env = write_config(layout, tmp_path)
    site = load_site(env["HAZMON_SITE"])
    assert len(site.tags) == 5_000
    rules = load_rules(json.loads(env["HAZMON_RULES"]), [site])
    assert rules.rules
    configs = [load_gateway_config(p, site) for p in json.loads(env["HAZMON_GATEWAYS"])]
    assert len(configs) == len(layout.parts) == 6
    served = set()
    for c in configs:
        if isinstance(c, OpcUaGateway):
            served |= {t.tag for t in c.tags}
        else:
            assert isinstance(c, ModbusGateway)
            served |= {t.tag for d in c.devices for t in d.tags}
    assert served == {t.id for t in site.tags}
    assert (tmp_path / "serve.env").read_text().count("HAZMON_") == 3


async def test_serve_reads_every_simulator_process_from_the_written_files(pg_url: str, tmp_path: Path) -> None:
    opcua_base, modbus_base = free_port_run(2), free_port_run(1)
    out = tmp_path / "sim.log"
    # 300 tanks: 150 over OPC UA in two processes (100 + 50 tanks), 150 over Modbus in one
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "sim", "--scale", "300", "--write-config", str(tmp_path / "plant"),
        "--opcua-tags-per-process", "500", "--modbus-tags-per-process", "1000",
        "--opcua-port", str(opcua_base), "--modbus-port", str(modbus_base),
        stdout=out.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while out.read_text().count("tags)") < 3:  # each process prints its endpoint once it serves
            assert sim.returncode is None, out.read_text()
            assert time.monotonic() < deadline, f"simulators not up in 60 s:\n{out.read_text()}"
            await asyncio.sleep(0.2)
        assert "300 tanks over 3 simulator processes" in out.read_text()
        env = dict(line.split("=", 1) for line in (tmp_path / "plant" / "serve.env").read_text().splitlines() if line)
        settings = load_settings(
            database_url=pg_url,
            data_dir=tmp_path / "data",
            site=env["HAZMON_SITE"],
            rules=json.loads(env["HAZMON_RULES"]),
            gateways=json.loads(env["HAZMON_GATEWAYS"]),
        )
        async with run_runtime(settings) as rt:
            assert len(rt.gateways) == 3 and rt.engine is not None
            deadline = time.monotonic() + 60
            while True:
                per_gateway = {gw.id: sum(d.readings_total for d in gw.health().devices.values()) for gw in rt.gateways}
                if all(n > 0 for n in per_gateway.values()):
                    break
                assert time.monotonic() < deadline, f"no data from every simulator process: {per_gateway}"
                await asyncio.sleep(0.2)
            assert set(per_gateway) == {"scale-opcua-1", "scale-opcua-2", "scale-modbus-1"}
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(sim.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                sim.kill()
            await sim.wait()
    assert sim.returncode == 0, out.read_text()
