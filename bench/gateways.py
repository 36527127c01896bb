"""Gateway benchmark: OPC UA, Modbus TCP and MQTT ingest measured into PostgreSQL.

Each workload runs its source (asyncua server, pymodbus servers, an MQTT publisher into a private
Mosquitto) in a separate process, and in this process the gateway -> Forwarder (disk spool) ->
ReadingStore (binary COPY) into a fresh database. Reported per workload: readings stored per second
during the measuring window, the share of what the source produced that was stored (after the
final flush), rows stored twice, this process's CPU (% of one core: gateway + forwarder + store
client) and RSS, and latency from the reading's timestamp to the store's confirmation (p50/p95;
for Modbus the timestamp is the poll, for OPC UA and MQTT the source's change time).
Baseline in the same run: ReadingStore.write of ready-made batches (the store's ceiling here).

The standard workloads (../shared/BENCH-WORKLOADS.md) run on the layouts they name: A1-A4 are 20
unit ids behind one pymodbus server; B1-B3 and B5 asyncua servers with 10, 50 or 1 device objects.
For Modbus, delivered and duplicates are counted against what the servers served: register r holds
(second + r) % 65536 during each second and the servers count each register served per second, so
every stored value is matched to a served one (lost: served more often than stored; duplicate:
stored more often than served).

    python bench/gateways.py [--seconds 10] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
                             [--only A1,A2,A3,A4,B1,B2,B3,B5,opcua-10k,modbus-200k,mqtt-50k]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from hazmon.gateways import open_gateway
from hazmon.gateways.config import parse_gateway_config
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch, now_us
from hazmon.storage.database import connect
from hazmon.storage.forwarder import Forwarder
from hazmon.storage.store import ReadingStore
from scratch_db import drop_db, fresh_db

NS = "urn:hazmon:bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- sources (run in child processes)


async def serve_opcua(port: int, objects: int, per: int, rate: float, seconds: float) -> None:
    """An asyncua server; changes ``rate`` variables a second round-robin, then reports how many."""
    from datetime import UTC, datetime

    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
    idx = await server.register_namespace(NS)
    nodeids = []
    for o in range(objects):
        obj = await server.nodes.objects.add_object(ua.NodeId(f"D{o}", idx), f"D{o}")
        for i in range(per):
            var = await obj.add_variable(ua.NodeId(f"D{o}.V{i}", idx), f"V{i}", ua.Variant(0.0, ua.VariantType.Double))
            nodeids.append(var.nodeid)
    written = 0
    async with server:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
        tick = 0.1
        per_tick = max(1, int(rate * tick))
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            now = datetime.now(UTC)
            for _ in range(per_tick):
                n = nodeids[k % len(nodeids)]
                dv = ua.DataValue(ua.Variant(float(k + 1), ua.VariantType.Double), SourceTimestamp=now)
                await server.write_attribute_value(n, dv)
                k += 1
            written = k
            t_next = t0 + (k // per_tick) * tick
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        await asyncio.sleep(1.5)  # let the last changes be published
    print(json.dumps({"written": written}), flush=True)


async def serve_modbus(ports: list[int], registers: int, seconds: float, units: int = 1) -> None:
    """pymodbus servers (one per port), each answering ``units`` unit ids (1..units); every register
    changes once a second: register i of every unit holds ``(step + i) % 65536`` during second ``step``.

    Counts what it serves: for each (port, unit, step) how many times each register was read, so the
    benchmark can check every served value against the database (lost, or stored twice)."""
    import logging

    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    step = 0
    served: dict[tuple[int, int, int], np.ndarray] = {}

    class Counting:
        """The server's datastore, counting the registers it serves."""

        def __init__(self, inner: Any, port: int) -> None:
            self.inner, self.port = inner, port

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
            got = await self.inner.async_getValues(device_id, func_code, address, count)
            if func_code == 3 and isinstance(got, list):
                counts = served.setdefault((self.port, device_id, step), np.zeros(registers, np.int64))
                counts[address : address + count] += 1
            return got

    servers = []
    for p in ports:
        devices = {
            u: ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, [i % 65536 for i in range(registers)]))
            for u in range(1, units + 1)
        }
        s = ModbusTcpServer(ModbusServerContext(devices=devices, single=False), address=("127.0.0.1", p))
        s.context = Counting(s.context, p)
        await s.serve_forever(background=True)
        servers.append(s)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        step += 1
        values = [(step + i) % 65536 for i in range(registers)]
        for s in servers:
            for u in range(1, units + 1):
                await s.async_setValues(u, 3, 0, values)
        await asyncio.sleep(max(0.0, t0 + step - time.monotonic()))
    for s in servers:
        await s.shutdown()
    table = [[p, u, st, c.tolist()] for (p, u, st), c in served.items()]
    print(json.dumps({"written": int(sum(c.sum() for c in served.values())), "served": table}), flush=True)


def publish_mqtt(port: int, points: int, per_message: int, rate: float, seconds: float) -> None:
    """paho publisher: columnar batch payloads, QoS 1, ``rate`` readings a second."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()
    names = [f"p{i}" for i in range(points)]
    msgs_per_s = rate / per_message
    t0 = time.monotonic()
    sent = 0
    infos = []
    k = 0
    while time.monotonic() - t0 < seconds:
        ts = int(time.time() * 1000)
        chunk = [names[(k + j) % points] for j in range(per_message)]
        payload = json.dumps({"ts": ts, "points": chunk, "values": [float(k + j) for j in range(per_message)]})
        infos.append(client.publish("bench/batch", payload, qos=1))
        k += per_message
        sent += per_message
        t_next = t0 + (sent / per_message) / msgs_per_s
        time.sleep(max(0.0, t_next - time.monotonic()))
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"written": sent}), flush=True)


# ---------------------------------------------------------------- measuring


@dataclass
class MeasuringStore:
    """Wraps the store: counts rows and samples latency (confirmation time - reading ts)."""

    store: Any  # ReadingStore, or NullWriter for the gateway-only figure
    stored: int = 0
    latencies_us: list[int] = field(default_factory=list)

    async def write(self, batch: ReadingBatch) -> int:
        n = await self.store.write(batch)
        self.stored += n
        if n and len(self.latencies_us) < 200_000:
            sample = batch.ts[:: max(1, len(batch) // 50)]
            self.latencies_us.extend((now_us() - sample).tolist())
        return n


class NullWriter:
    """Accepts every batch at once: the gateway (and forwarder) without the database."""

    async def write(self, batch: ReadingBatch) -> int:
        return len(batch)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Source:
    """A source child process: started, told "go", waited for its final {"written": n}."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.report: dict[str, Any] = {}

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"source failed to start: {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    async def written(self) -> int:
        assert self.proc.stdout is not None
        out = await asyncio.to_thread(self.proc.stdout.read)
        await asyncio.to_thread(self.proc.wait, 60)
        self.report = json.loads(out.strip().splitlines()[-1])
        return int(self.report["written"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


class Sources:
    """Several source processes acting as one."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    async def ready(self) -> None:
        for s in self.sources:
            await s.ready()

    def go(self) -> None:
        for s in self.sources:
            s.go()

    async def written(self) -> int:
        return sum([await s.written() for s in self.sources])

    @property
    def report(self) -> dict[str, Any]:
        return {"served": [row for s in self.sources for row in s.report.get("served", [])]}

    def kill(self) -> None:
        for s in self.sources:
            s.kill()


async def run_workload(
    name: str,
    admin_url: str,
    gateway_doc: dict[str, Any],
    tags: list[str],
    source: Source | Sources,
    seconds: float,
    asked_per_s: float,
    produced: Callable[[int], int],
    to_db: bool = True,
    where: dict[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    url = await fresh_db(admin_url, "hazmon_bench_gw")
    db = await connect(url, pool_size=4, run_migrations=False)
    tmp = Path(tempfile.mkdtemp(prefix="hazmon-bench-"))
    index = TagIndex(tags)
    store = MeasuringStore(ReadingStore(db.pool, db.caps) if to_db else NullWriter())
    gw = open_gateway(parse_gateway_config({"gateway": gateway_doc}), index, data_dir=tmp)
    try:
        await source.ready()
        async with Forwarder(store, tmp / "spool") as fwd, gw:  # type: ignore[arg-type]

            async def pump() -> None:
                async for b in gw.batches():
                    await fwd.put(b)

            pump_task = asyncio.create_task(pump())
            deadline = time.monotonic() + 30
            while not gw.health().connected:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: gateway did not connect: {gw.health()}")
                await asyncio.sleep(0.05)
            source.go()
            await asyncio.sleep(2.0)  # warm-up
            store.latencies_us.clear()
            s0, c0, t0 = store.stored, os.times(), time.monotonic()
            await asyncio.sleep(seconds)
            s1, c1, t1 = store.stored, os.times(), time.monotonic()
            rss = rss_mb()
            health = gw.health()
            written = await source.written()
            await asyncio.sleep(1.0)  # the last readings in flight
            await fwd.flush(60)
            pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump_task
            fstats = fwd.stats()
        conn = await asyncpg.connect(url)
        accounting = None
        try:
            rows = await conn.fetchval("SELECT count(*) FROM readings WHERE quality < 128") if to_db else store.stored
            dup = await conn.fetchval("SELECT count(*) - count(DISTINCT (tag, time)) FROM readings WHERE quality < 128")
            if where is not None and to_db and isinstance(source, Sources):
                accounting = await modbus_accounting(conn, index, source.report["served"], where)
        finally:
            await conn.close()
        rate = (s1 - s0) / (t1 - t0)
        cpu = ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0) * 100
        lat = np.array(store.latencies_us or [0]) / 1000
        expected = produced(written)
        delivered = round(int(rows) / expected, 4) if expected else None
        if accounting is not None:  # Modbus: against what the servers served, per poll
            expected = accounting["served"]
            delivered = round((expected - accounting["lost"]) / expected, 4) if expected else None
            dup = accounting["duplicates"]
        return {
            "workload": name,
            "asked_per_s": asked_per_s,
            "stored_per_s": round(rate),
            "share_of_asked": round(rate / asked_per_s, 3),
            "produced": expected,
            "stored_total": int(rows),
            "delivered_share": delivered,
            "duplicates": int(dup),
            "connections": getattr(gw, "connections_opened", None),
            "cpu_pct_one_core": round(cpu, 1),
            "rss_mb": round(rss, 1),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
            "writes": fstats.writes,
            "quarantined": health.quarantined,
            "gateway_errors": {d: h.errors for d, h in health.devices.items() if h.errors},
        }
    finally:
        source.kill()
        await db.close()
        await drop_db(admin_url, url)


# ---------------------------------------------------------------- workloads


def opcua_workload(
    name: str, objects: int, per: int, rate: float, seconds: float, mode: str = "subscribe"
) -> tuple[Any, ...]:
    port = free_port()
    src = Source(["serve-opcua", str(port), str(objects), str(per), str(rate), str(seconds + 3)])
    tags = [f"D{o}.V{i}" for o in range(objects) for i in range(per)]
    doc = {
        "id": name,
        "protocol": "opcua",
        "site": "bench",
        "endpoint": f"opc.tcp://127.0.0.1:{port}/bench",
        "namespace": NS,
        "mode": mode,
        "publishing_interval_ms": 200,
        "sampling_interval_ms": 0,
        "poll_interval_ms": 1000,
        "timeout_s": 10,
        "tags": [{"tag": t, "node": f"s={t}"} for t in tags],
    }
    # every variable's initial value is delivered once on subscribing, then each change
    return doc, tags, src, rate, lambda written: written + len(tags)


@dataclass
class ModbusWorkload:
    doc: dict[str, Any]
    tags: list[str]
    source: Sources
    asked: float
    where: dict[str, tuple[int, int, int]]  # tag -> (port, unit, register)


def modbus_workload(
    name: str,
    devices: int,
    registers: int,
    poll_ms: float,
    seconds: float,
    *,
    units_per_server: int,
    template: bool = False,
    procs: int = 1,
) -> ModbusWorkload:
    """``devices`` Modbus devices of ``registers`` holding registers (uint16), ``units_per_server`` unit
    ids behind each pymodbus server; ``template``: each device's tags as one template line (a "range"),
    else one configured tag per register (the gateway coalesces them)."""
    servers = devices // units_per_server
    ports = [free_port() for _ in range(servers)]
    # the servers run in ``procs`` processes (one process can serve ~2,000 reads/s)
    parts = [ports[i::procs] for i in range(procs)]
    src = Sources(
        [
            Source(["serve-modbus", ",".join(map(str, part)), str(registers), str(seconds + 3), str(units_per_server)])
            for part in parts
            if part
        ]
    )
    where: dict[str, tuple[int, int, int]] = {}
    device_docs = []
    for d in range(devices):
        port, unit = ports[d // units_per_server], d % units_per_server + 1
        for r in range(registers):
            where[f"M{d}.R{r}"] = (port, unit, r)
        dev: dict[str, Any] = {"id": f"M{d}", "port": port, "unit": unit, "timeout_s": 2}
        if template:
            dev["templates"] = [{"tag": f"M{d}.R{{n}}", "first": 0, "count": registers, "address": 0, "type": "uint16"}]
        else:
            dev["tags"] = [{"tag": f"M{d}.R{r}", "address": r, "type": "uint16"} for r in range(registers)]
        device_docs.append(dev)
    doc = {
        "id": name,
        "protocol": "modbus",
        "site": "bench",
        "poll_groups": {"default": poll_ms},
        "devices": device_docs,
    }
    return ModbusWorkload(doc, list(where), src, devices * registers * 1000 / poll_ms, where)


async def modbus_accounting(
    conn: asyncpg.Connection, index: TagIndex, served: list[Any], where: dict[str, tuple[int, int, int]]
) -> dict[str, int]:
    """Every value the device servers served, against the database: register r holds (step + r) % 65536
    during second ``step``, so a stored value names the poll period it came from. Lost: served more
    often than stored; duplicates: stored more often than served (per tag, source value and period)."""
    expected: dict[tuple[int, int, int, int], int] = {}
    for port, unit, step, counts in served:
        for r in np.flatnonzero(np.asarray(counts)).tolist():
            expected[(port, unit, step % 65536, r)] = int(counts[r])
    stored: dict[tuple[int, int, int, int], int] = {}
    for row in await conn.fetch("SELECT tag, value, count(*) AS n FROM readings WHERE quality < 128 GROUP BY 1, 2"):
        port, unit, r = where[index.id(row["tag"])]
        stored[(port, unit, (int(row["value"]) - r) % 65536, r)] = int(row["n"])
    lost = sum(max(0, n - stored.get(k, 0)) for k, n in expected.items())
    dup = sum(max(0, n - expected.get(k, 0)) for k, n in stored.items())
    return {"served": sum(expected.values()), "lost": lost, "duplicates": dup}


def start_broker(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["mosquitto", "-c", str(conf)])


async def bench_modbus_baseline(devices: int, registers: int, seconds: float, procs: int) -> dict[str, Any]:
    """Plain pymodbus clients, one per device, reading 125-register blocks back to back: the most the
    same servers deliver to anyone on this machine (the ceiling for the gateway's Modbus figure)."""
    from pymodbus.client import AsyncModbusTcpClient

    ports = [free_port() for _ in range(devices)]
    parts = [ports[i::procs] for i in range(procs)]
    src = Sources(
        [Source(["serve-modbus", ",".join(map(str, part)), str(registers), str(seconds + 3), "1"]) for part in parts]
    )
    await src.ready()
    src.go()
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2) for p in ports]
    for c in clients:
        await c.connect()
    count = 0
    stop = time.monotonic() + seconds

    async def loop(c: Any) -> None:
        nonlocal count
        while time.monotonic() < stop:
            for start in range(0, registers, 125):
                rr = await c.read_holding_registers(start, count=min(125, registers - start), device_id=1)
                count += len(rr.registers)

    t0 = time.monotonic()
    await asyncio.gather(*(loop(c) for c in clients))
    dt = time.monotonic() - t0
    for c in clients:
        c.close()
    src.kill()
    return {"workload": "modbus-raw-clients", "registers_per_s": round(count / dt), "devices": devices}


async def bench_store_baseline(admin_url: str) -> dict[str, Any]:
    url = await fresh_db(admin_url, "hazmon_bench_gw")
    db = await connect(url, pool_size=2, run_migrations=False)
    try:
        store = ReadingStore(db.pool, db.caps)
        n, size = 400_000, 10_000
        t0_us = now_us()
        batches = [
            ReadingBatch.from_columns(np.arange(size) % 1000, t0_us + np.arange(i, i + size), np.ones(size), 0)
            for i in range(0, n, size)
        ]
        t0 = time.monotonic()
        for b in batches:
            await store.write(b)
        dt = time.monotonic() - t0
        return {"workload": "store-baseline", "rows_per_s": round(n / dt), "batch_rows": size}
    finally:
        await db.close()
        await drop_db(admin_url, url)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    secs = args.seconds
    only = set(args.only.split(",")) if args.only else None
    results: list[dict[str, Any]] = []

    def wanted(name: str) -> bool:
        return only is None or name in only

    results.append(await bench_store_baseline(args.pg))
    print(json.dumps(results[-1]), file=sys.stderr)

    if wanted("opcua-10k"):
        # 10,000 monitored items (in 2 subscriptions), each changing about once a second
        doc, tags, src, asked, produced = opcua_workload("opcua-10k", 100, 100, 11_000, secs)
        results.append(await run_workload("opcua-10k", args.pg, doc, tags, src, secs, asked, produced))
        print(json.dumps(results[-1]), file=sys.stderr)
    # the standard workloads (BENCH-WORKLOADS.md), each on the layout it names
    for name, objects, per, mode in (
        ("B1", 10, 100, "subscribe"),
        ("B2", 50, 100, "subscribe"),
        ("B3", 1, 5_000, "subscribe"),
        ("B5", 50, 100, "poll"),
    ):
        if wanted(name):
            rate = objects * per  # every variable changes once a second
            doc, tags, src, asked, produced = opcua_workload(name, objects, per, rate, secs, mode=mode)
            results.append(await run_workload(name, args.pg, doc, tags, src, secs, asked, produced))
            print(json.dumps(results[-1]), file=sys.stderr)
    if wanted("modbus-200k"):
        results.append(await bench_modbus_baseline(20, 500, secs / 2, args.modbus_procs))
        print(json.dumps(results[-1]), file=sys.stderr)
    for name, devices, regs, poll, units, template, to_db in (
        # hazmon's own throughput target: 20 servers of one device each (not a standard layout)
        ("modbus-200k", 20, 500, 50.0, 1, False, True),
        ("modbus-200k-no-db", 20, 500, 50.0, 1, False, False),
        # the standard layout: 20 unit ids behind one server
        ("A1", 20, 100, 1000.0, 20, True, True),
        ("A2", 20, 100, 100.0, 20, True, True),
        ("A3", 20, 100, 1000.0, 20, False, True),
        ("A4", 20, 100, 100.0, 20, False, True),
    ):
        if not wanted(name.removesuffix("-no-db")):
            continue
        w = modbus_workload(
            name, devices, regs, poll, secs, units_per_server=units, template=template, procs=args.modbus_procs
        )
        r = await run_workload(
            name, args.pg, w.doc, w.tags, w.source, secs, w.asked, lambda written: 0, to_db=to_db, where=w.where
        )
        results.append(r)
        print(json.dumps(results[-1]), file=sys.stderr)
    if wanted("mqtt-50k"):
        with tempfile.TemporaryDirectory() as d:
            port = free_port()
            conf = Path(d) / "m.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                "max_inflight_messages 1000\nuser root\nlog_type error\n"
            )
            broker = start_broker(conf)
            try:
                for _ in range(100):
                    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                        break
                    await asyncio.sleep(0.05)
                points = 5000
                src = Source(["publish-mqtt", str(port), str(points), "1000", "60000", str(secs + 3)])
                doc = {
                    "id": "mqtt-50k",
                    "protocol": "mqtt",
                    "site": "bench",
                    "broker": {"port": port, "client_id": "bench-gw"},
                    "topics": [{"filter": "bench/#", "format": "batch"}],
                    "points": {f"p{i}": f"P{i}" for i in range(points)},
                }
                tags = [f"P{i}" for i in range(points)]
                results.append(
                    await run_workload("mqtt-50k", args.pg, doc, tags, src, secs, 60_000, lambda written: written)
                )
                print(json.dumps(results[-1]), file=sys.stderr)
            finally:
                broker.send_signal(signal.SIGTERM)
                broker.wait(10)
    base = results[0]["rows_per_s"]
    raw = next((r["registers_per_s"] for r in results if r["workload"] == "modbus-raw-clients"), None)
    for r in results[1:]:
        if "stored_per_s" in r:
            r["ratio_to_store_baseline"] = round(r["stored_per_s"] / base, 3)
        if r["workload"] == "modbus-200k" and raw:
            r["ratio_to_raw_pymodbus_clients"] = round(r["stored_per_s"] / raw, 3)
    return {
        "benchmark": "gateways",
        "cpus": os.cpu_count(),
        "seconds": secs,
        "targets": {"opcua-10k": 10_000, "modbus-200k": 200_000, "mqtt-50k": 50_000},
        "results": results,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-opcua":
        _, _, port, objects, per, rate, seconds = sys.argv
        asyncio.run(serve_opcua(int(port), int(objects), int(per), float(rate), float(seconds)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "serve-modbus":
        _, _, ports, registers, seconds, units = sys.argv
        asyncio.run(serve_modbus([int(p) for p in ports.split(",")], int(registers), float(seconds), int(units)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "publish-mqtt":
        _, _, port, points, per_message, rate, seconds = sys.argv
        publish_mqtt(int(port), int(points), int(per_message), float(rate), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--pg", default=os.environ.get("HAZMON_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--modbus-procs", type=int, default=1, help="processes serving the Modbus devices")
    parser.add_argument(
        "--only", default="", help="comma-separated workloads: opcua-10k,B1,B2,B3,B5,modbus-200k,A1,A2,A3,A4,mqtt-50k"
    )
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
