"""CPU share of the PLC simulator serving 10,000 tags at 1 Hz (`hazmon sim --scale 2000`).

For each mode (Modbus only, OPC UA only, both halves) the simulator runs as a subprocess at speed 1
(one model step per second); this process acts as the client that a gateway would be: it polls
every Modbus register and bit once a second, and/or subscribes to every OPC UA node (publishing
interval 1 s). After a warm-up, the simulator's CPU time over a window of ``--seconds`` gives its
share of one core. The clients also count value changes, to show that all tags really move at 1 Hz.

Usage: .venv/bin/python bench/sim_scale.py [--tanks 2000] [--seconds 20] [--modes modbus,opcua,both]
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import psutil
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from hazmon.sim import free_port
from hazmon.sim.scale import TANKS_PER_UNIT, scale_plant


class Counter:
    def __init__(self) -> None:
        self.changes = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.changes += 1


async def poll_modbus(port: int, units: int, tanks_per_unit: list[int], stop: asyncio.Event, counter: Counter) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    await client.connect()
    last: dict[tuple[int, int], list[int]] = {}
    loop = asyncio.get_running_loop()
    due = loop.time()
    try:
        while not stop.is_set():
            for unit in range(1, units + 1):
                n = tanks_per_unit[unit - 1]
                regs: list[int] = []
                for start in range(0, 6 * n, 120):
                    rr = await client.read_holding_registers(start, count=min(120, 6 * n - start), device_id=unit)
                    regs += rr.registers
                await client.read_coils(0, count=n, device_id=unit)
                await client.read_discrete_inputs(0, count=n, device_id=unit)
                for k in range(0, len(regs), 2):
                    pair = regs[k : k + 2]
                    if last.get((unit, k)) != pair:
                        counter.changes += 1
                        last[(unit, k)] = pair
            due += 1.0
            await asyncio.sleep(max(0.0, due - loop.time()))
    finally:
        client.close()


async def run_mode(mode: str, tanks: int, seconds: float) -> dict[str, Any]:
    opcua_port, modbus_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "sim", "--scale", str(tanks), "--scale-protocol", mode,
        "--opcua-port", str(opcua_port), "--modbus-port", str(modbus_port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    t_start = time.perf_counter()
    lines = []
    while True:  # the endpoints are printed once everything listens
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        if not line:
            raise RuntimeError(f"simulator exited: {lines}")
        lines.append(line)
        if line.startswith("  ") and len([x for x in lines if x.startswith("  ")]) == (2 if mode == "both" else 1):
            break
    startup_s = time.perf_counter() - t_start
    _, configs, _ = scale_plant(tanks, protocol=mode)  # type: ignore[arg-type]
    stop = asyncio.Event()
    counter = Counter()
    tasks: list[asyncio.Task[None]] = []
    opc_client: Client | None = None
    opc_tags = 0
    modbus_tags = 0
    try:
        for c in configs:
            if c.protocol == "modbus":
                per_unit = [len(d.tags) // 5 for d in c.devices]
                modbus_tags = sum(len(d.tags) for d in c.devices)
                tasks.append(asyncio.create_task(poll_modbus(modbus_port, len(c.devices), per_unit, stop, counter)))
            elif c.protocol == "opcua":
                opc_client = Client(f"opc.tcp://127.0.0.1:{opcua_port}/hazmon", timeout=30)
                await opc_client.connect()
                ns = await opc_client.get_namespace_index("urn:hazmon:scale-farm")
                sub = await opc_client.create_subscription(1000, counter)
                nodes = [opc_client.get_node(ua.NodeId(t.node[2:], ns, ua.NodeIdType.String)) for t in c.tags]
                for k in range(0, len(nodes), 1000):
                    await sub.subscribe_data_change(nodes[k : k + 1000], sampling_interval=1000)
                opc_tags = len(nodes)
        await asyncio.sleep(3.0)  # warm-up: subscriptions settle, first polls done
        p = psutil.Process(proc.pid)
        cpu0 = sum(p.cpu_times()[:2])
        changes0 = counter.changes
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1 = sum(p.cpu_times()[:2])
        wall = time.perf_counter() - t0
        changes = counter.changes - changes0
        rss = p.memory_info().rss
    finally:
        stop.set()
        for t in tasks:
            await t
        if opc_client is not None:
            await opc_client.disconnect()
        proc.terminate()
        await proc.wait()
    return {
        "mode": mode,
        "tags": tanks * 5,
        "opcua_tags": opc_tags,
        "modbus_tags": modbus_tags,
        "startup_s": round(startup_s, 2),
        "window_s": round(wall, 1),
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 1),
        "analog_changes_per_s": round(changes / wall),
        "rss_mb": round(rss / 2**20, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tanks", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--modes", default="modbus,opcua,both")
    args = ap.parse_args()
    results = []
    for mode in args.modes.split(","):
        r = await run_mode(mode, args.tanks, args.seconds)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(
        json.dumps(
            {
                "bench": "sim_scale",
                "tags": args.tanks * 5,
                "rate_hz": 1.0,
                "cpus": os.cpu_count(),
                "tanks_per_modbus_unit": TANKS_PER_UNIT,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
