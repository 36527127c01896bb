"""End to end at scale: `hazmon sim --scale` and `hazmon serve` as separate processes, readings into the
database with the rule engine on, N tags at 1 Hz.

For each mode (Modbus only, OPC UA only, mixed: half and half) and each size N (ascending), this script

1. starts the simulator with `hazmon sim --scale N/5 --write-config DIR` (its servers spread over
   processes, so that the simulator is never the limit) and `hazmon serve` on the files it wrote, with
   a fresh scratch database (PostgreSQL on 127.0.0.1:5432, or ``--db-url`` for TimescaleDB) and one
   extra rule: a pad-pressure H limit that about one reading in 200 of a quiet tank crosses (from the
   plant model's own noise), so that alarms come and go all the time;
2. after a warm-up, measures over ``--seconds``:
   - delivery per protocol: readings stored in the database for that protocol's tags, against what the
     simulators served (Modbus: every tag once per 1 s poll; OPC UA subscriptions send changes, and
     the analog tags change at every 1 s model step, so the analog tags once a second);
   - CPU (share of one core) and peak RSS of `hazmon serve` and of the simulator processes;
   - alarm latency: from the reading's timestamp (the gateway's read for Modbus, the simulator's source
     timestamp for OPC UA) to the event decoded by a WebSocket client subscribed to the site;
3. stops both, and moves on to the next size while delivery stays at 100 % (>= 99.5 % of the
   expected readings, nothing dropped by the gateways or the spool).

The result names, per mode, the largest N sustained with 100 % delivery on this machine.

    .venv/bin/python bench/e2e.py [--modes modbus,opcua,mixed] [--sizes 10000,30000,100000]
                                  [--seconds 30] [--warmup 20]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import websockets
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from hazmon.sim.service import free_port_run  # noqa: E402
from scratch_db import drop_db, fresh_db  # noqa: E402

PG_ADMIN = os.environ.get("HAZMON_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HAZMON = str(ROOT / ".venv" / "bin" / "hazmon")
SITE = "scale-farm"
DEFAULT_SIZES = {"modbus": [10_000, 30_000, 100_000], "opcua": [5_000, 10_000, 20_000], "mixed": [10_000, 30_000]}
PROTOCOL = {"modbus": "modbus", "opcua": "opcua", "mixed": "both"}
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total / 2**20


async def _stop(proc: asyncio.subprocess.Process, timeout_s: float = 30) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _until(check: Any, timeout_s: float, what: str, *procs: asyncio.subprocess.Process) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        for p in procs:
            if p.returncode is not None:
                raise RuntimeError(f"a process stopped (status {p.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- the plant


def pressure_limit(tanks: int = 2000, steps: int = 120) -> float:
    """A pad-pressure limit about one quiet tank's reading in 200 crosses: the median pressure plus the
    99.5th percentile of the readings' deviation from their tank's median (plant model, no servers)."""
    from hazmon.sim.model import PlantModel
    from hazmon.sim.scale import scale_plant

    site, _, scenario = scale_plant(tanks)
    model = PlantModel(site, scenario, seed=0)
    cols = [i for i, t in enumerate(site.tags) if t.id.endswith(".PT")]
    samples = []
    for _ in range(steps):
        model.step()
        samples.append(model.values[cols].copy())
    values = np.array(samples)
    deviation = values - np.median(values, axis=0)
    return round(float(np.median(values) + np.percentile(deviation, 99.5)), 4)


def alarm_rules(limit: float) -> dict[str, Any]:
    return {
        "rules": [
            {"name": "bench: pad pressure crossing often", "select": {"kind": "pressure"},
             "limits": {"H": {"value": limit, "priority": "medium"}}},
        ]
    }  # fmt: skip


# ---------------------------------------------------------------- one run


async def ws_latencies(base: str, token: str, stop: asyncio.Event, out: list[float]) -> None:
    uri = base.replace("http://", "ws://") + f"/api/v1/live?token={token}"
    async with websockets.connect(uri, max_size=2**26) as ws:
        await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            now_us = time.time_ns() // 1000
            msg = json.loads(text)
            for e in msg.get("events", []):
                if e.get("action") == "activate" and e.get("ts_us"):
                    out.append((now_us - int(e["ts_us"])) / 1000)


async def run_one(mode: str, tags: int, args: argparse.Namespace, limit: float) -> dict[str, Any]:
    tanks = tags // 5
    opcua_base, modbus_base = free_port_run(40), free_port_run(10)
    db_url = await fresh_db(args.db_url or PG_ADMIN, "hazmon_e2e")
    with tempfile.TemporaryDirectory(prefix="hazmon-e2e-") as tmp:
        d = Path(tmp)
        sim_log = (d / "sim.log").open("w")
        sim = await asyncio.create_subprocess_exec(
            HAZMON, "sim", "--scale", str(tanks), "--scale-protocol", PROTOCOL[mode],
            "--write-config", str(d / "plant"),
            "--opcua-port", str(opcua_base), "--modbus-port", str(modbus_base),
            stdout=sim_log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        serve: asyncio.subprocess.Process | None = None
        t_start = time.monotonic()
        try:
            parts = 0

            async def sims_up() -> bool:
                nonlocal parts
                text = (d / "sim.log").read_text()
                m = re.search(r"over (\d+) simulator processes", text)
                parts = int(m.group(1)) if m else 1
                return text.count("tags)") >= parts

            await _until(sims_up, 300, "the simulators", sim)
            (d / "bench-rules.yaml").write_text(yaml.safe_dump(alarm_rules(limit)), "utf-8")
            env_file = dict(line.split("=", 1) for line in (d / "plant" / "serve.env").read_text().splitlines() if line)
            port = free_port_run(1)
            env = {
                **os.environ,
                **env_file,
                "HAZMON_RULES": json.dumps([*json.loads(env_file["HAZMON_RULES"]), str(d / "bench-rules.yaml")]),
                "HAZMON_DATABASE_URL": db_url,
                "HAZMON_DATA_DIR": str(d / "data"),
                "HAZMON_API_PORT": str(port),
                "HAZMON_LOG_LEVEL": "WARNING",
            }
            token_out = await asyncio.create_subprocess_exec(
                HAZMON, "token", "create", "--role", "operator", "--site", SITE, "--name", "bench-e2e",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            text = (await token_out.communicate())[0].decode()
            m = re.search(r"hzm_[A-Za-z0-9_\-]+", text)
            if m is None:
                raise RuntimeError(f"no token from hazmon token create: {text}")
            token = m.group(0)
            serve_log = (d / "serve.log").open("w")
            serve = await asyncio.create_subprocess_exec(
                HAZMON, "serve", env=env, stdout=serve_log, stderr=asyncio.subprocess.STDOUT
            )
            base = f"http://127.0.0.1:{port}"
            conn = await asyncpg.connect(db_url)
            try:

                async def flowing() -> bool:
                    n = await conn.fetchval("SELECT count(*) FROM (SELECT 1 FROM readings LIMIT $1) r", 2 * tags)
                    return int(n) >= 2 * tags

                await _until(flowing, 600, "readings in the database", serve, sim)
                startup_s = time.monotonic() - t_start
                latencies: list[float] = []
                stop = asyncio.Event()
                ws_task = asyncio.create_task(ws_latencies(base, token, stop, latencies))
                await asyncio.sleep(args.warmup)
                sim_pids, serve_pids = _tree(sim.pid), _tree(serve.pid)
                cpu0 = (_cpu_s(sim_pids), _cpu_s(serve_pids))
                t0_us, w0 = time.time_ns() // 1000, time.monotonic()
                rss = [0.0, 0.0]
                while time.monotonic() - w0 < args.seconds:
                    await asyncio.sleep(1.0)
                    rss = [max(rss[0], _rss_mib(sim_pids)), max(rss[1], _rss_mib(serve_pids))]
                elapsed = time.monotonic() - w0
                t1_us = t0_us + int(elapsed * 1e6)
                cpu1 = (_cpu_s(sim_pids), _cpu_s(serve_pids))
                await asyncio.sleep(3.0)  # readings of the window still on their way to the database
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws_task, 5)
                rows = await conn.fetch(
                    """SELECT t.id, count(r.*) AS n FROM tags t LEFT JOIN readings r ON r.tag = t.key
                       AND r.time >= to_timestamp($1 / 1e6) AND r.time < to_timestamp($2 / 1e6)
                       WHERE t.site_id = $3 GROUP BY t.id""",
                    t0_us,
                    t1_us,
                    SITE,
                )
                gateways: Any = None
                try:
                    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                        gateways = (
                            await client.get("/api/v1/gateways", headers={"Authorization": f"Bearer {token}"})
                        ).json()
                except httpx.HTTPError as e:  # an API too busy to answer: the run is not sustained
                    print(f"e2e: /api/v1/gateways did not answer: {e!r}", file=sys.stderr)
            finally:
                await conn.close()
        finally:
            if serve is not None:
                await _stop(serve, 60)
            await _stop(sim)
            await drop_db(args.db_url or PG_ADMIN, db_url)
    return summarise(mode, tags, rows, gateways, elapsed, cpu0, cpu1, rss, latencies, startup_s, parts)


def summarise(
    mode: str,
    tags: int,
    rows: list[Any],
    gateways: Any,
    elapsed: float,
    cpu0: tuple[float, float],
    cpu1: tuple[float, float],
    rss: list[float],
    latencies: list[float],
    startup_s: float,
    parts: int,
) -> dict[str, Any]:
    tanks = tags // 5
    split = tanks // 2 if mode == "mixed" else (tanks if mode == "opcua" else 0)
    expected: dict[str, float] = {"opcua": 0.0, "modbus": 0.0}
    stored: dict[str, int] = {"opcua": 0, "modbus": 0}
    for r in rows:
        tank = int(r["id"][2:7])
        protocol = "opcua" if tank < split else "modbus"
        analog = r["id"].rsplit(".", 1)[1] in ("LT", "TT", "PT")
        if protocol == "modbus" or analog:  # OPC UA: discrete tags send only their rare changes
            expected[protocol] += elapsed
            stored[protocol] += int(r["n"])
    delivery = {p: round(min(1.0, stored[p] / expected[p]), 4) for p in expected if expected[p] > 0}
    dropped = 0
    if isinstance(gateways, list):
        dropped = sum(int(g.get("dropped_readings", 0) or 0) for g in gateways)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    sustained = all(v >= 0.995 for v in delivery.values()) and dropped == 0 and isinstance(gateways, list)
    return {
        "mode": mode,
        "tags": tags,
        "simulator_processes": parts,
        "seconds": round(elapsed, 1),
        "startup_s": round(startup_s, 1),
        "delivery": delivery,
        "gateway_dropped_readings": dropped,
        "sustained": sustained,
        "cpu_core_share": {
            "serve": round((cpu1[1] - cpu0[1]) / elapsed, 3),
            "simulators": round((cpu1[0] - cpu0[0]) / elapsed, 3),
        },
        "rss_mib": {"serve": round(rss[1]), "simulators": round(rss[0])},
        "alarm_latency_ms": {
            "n": len(latencies),
            "p50": round(float(np.nanpercentile(lat, 50)), 1),
            "p99": round(float(np.nanpercentile(lat, 99)), 1),
            "from": "reading timestamp to WebSocket client",
        },
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    limit = pressure_limit()
    modes = args.modes.split(",")
    runs: list[dict[str, Any]] = []
    largest: dict[str, int | None] = {}
    for mode in modes:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else DEFAULT_SIZES[mode]
        largest[mode] = None
        for tags in sizes:
            print(f"e2e: {mode} at {tags} tags ...", file=sys.stderr, flush=True)
            try:
                result = await run_one(mode, tags, args, limit)
            except (RuntimeError, OSError, asyncpg.PostgresError) as e:
                result = {"mode": mode, "tags": tags, "sustained": False, "error": repr(e)}
            print(f"e2e: {json.dumps(result)}", file=sys.stderr, flush=True)
            runs.append(result)
            if not result["sustained"]:
                break
            largest[mode] = tags
    return {
        "benchmark": "e2e",
        "pressure_limit_kpa": limit,
        "largest_sustained_tags": largest,
        "runs": runs,
        "cores": os.cpu_count(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="modbus,opcua,mixed")
    p.add_argument("--sizes", default="", help="tag counts, ascending (default per mode)")
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window per run")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds after data flows before measuring")
    p.add_argument("--db-url", default="", help="admin URL of the server for scratch databases")
    args = p.parse_args()
    t = time.monotonic()
    results = asyncio.run(bench(args))
    results["total_seconds"] = round(time.monotonic() - t, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
