"""Scale-out throughput: readings through the bus — publisher (the gateway stage) → NATS JetStream → engine
shards → writers → TimescaleDB — with 1 and then 2 engine shards, on this machine.

The bench process plays the gateway stage: it publishes reading batches of ``--sites`` synthetic sites
(``--tanks`` tanks each, 5 tags per tank), one batch per site per round, as fast as the bus takes them
for ``--seconds``; every reading carries its publish time as timestamp, and a few level readings per
round jump above HH so that alarms come and go. The stages are real processes (`hazmon serve --role
engine` × shards, `--role writer` × 2) on a scratch TimescaleDB database (``--db-url``, default: the
one `deploy/timescaledb.sh` runs) and the NATS server on 127.0.0.1:4222.

Measured per run: readings/s judged by the engine shards and stored by the writers (from the consumers'
acknowledgement floors and the database), CPU per stage (share of one core, from /proc), and the
latency from a reading's timestamp to its alarm event arriving on the events stream (p50/p99): the API
role that would put it on a WebSocket does not exist yet, so the bus is where it is measured. Two phases:
a flood (throughput: how fast the stages drain what was published) and a paced phase at 1 Hz per tag
(latency and CPU at a steady plant-like load).

    .venv/bin/python bench/scale.py [--shards 1,2] [--sites 8] [--tanks 500] [--seconds 20]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from e2e import _cpu_s, _stop, _tree  # noqa: E402
from hazmon.cluster.bus import Bus, partition_of  # noqa: E402
from hazmon.cluster.codec import encode_batch  # noqa: E402
from hazmon.plant.site import parse_site  # noqa: E402
from hazmon.plant.tag import tag_ref  # noqa: E402
from hazmon.reading import ReadingBatch  # noqa: E402
from hazmon.sim.scale import SCALE_RULES, _site  # noqa: E402
from hazmon.storage.registry import tag_index, upsert_site  # noqa: E402
from scratch_db import drop_db, fresh_db  # noqa: E402

NATS_URL = os.environ.get("HAZMON_TEST_NATS_URL", "nats://127.0.0.1:4222")
HAZMON = str(ROOT / ".venv" / "bin" / "hazmon")


def tsdb_admin_url() -> str:
    url = os.environ.get("HAZMON_TEST_TSDB_URL")
    if url:
        return url
    out = subprocess.run(["bash", str(ROOT / "deploy" / "timescaledb.sh")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def server_pids() -> dict[str, list[int]]:
    """The NATS server and the TimescaleDB postmaster with its backends, to count their CPU too."""
    out: dict[str, list[int]] = {}
    for name, pattern in (("nats-server", "nats-server"), ("timescaledb", "hazmon-data")):
        found = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True).stdout.split()
        if found:
            out[name] = _tree(int(found[0]))
    return out


def site_docs(sites: int, tanks: int) -> list[dict[str, Any]]:
    docs = []
    for k in range(sites):
        d = _site(sites * tanks, k * tanks, (k + 1) * tanks)
        d["site"] = {"id": f"farm-{k:02d}", "name": f"Synthetic farm {k}"}
        docs.append(d)
    return docs


async def run(shards: int, args: argparse.Namespace, admin_url: str) -> dict[str, Any]:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    db_url = await fresh_db(admin_url, "hazmon_scale")
    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    bus = await Bus.connect(NATS_URL, ns)
    with tempfile.TemporaryDirectory(prefix="hazmon-scale-") as tmp:
        d = Path(tmp)
        try:
            docs = site_docs(args.sites, args.tanks)
            files = []
            for doc in docs:
                f = d / f"{doc['site']['id']}.yaml"
                f.write_text(yaml.safe_dump(doc), "utf-8")
                files.append(str(f))
            rules = d / "rules.yaml"
            rules.write_text(yaml.safe_dump(SCALE_RULES), "utf-8")
            sites = [parse_site(doc, doc["site"]["id"]) for doc in docs]
            conn = await asyncpg.connect(db_url)
            for s in sites:
                await upsert_site(conn, s)
            tags = await tag_index(conn)
            env = {
                **os.environ,
                "HAZMON_DATABASE_URL": db_url,
                "HAZMON_DATA_DIR": str(d / "data"),
                "HAZMON_SITE": files[0],
                "HAZMON_SITES": json.dumps(files[1:]),
                "HAZMON_RULES": json.dumps([str(rules)]),
                "HAZMON_NATS_NAMESPACE": ns,
                "HAZMON_PARTITIONS": str(args.partitions),
                "HAZMON_LOG_LEVEL": "WARNING",
            }
            log = (d / "stages.log").open("w")
            for i in range(shards):
                procs.append((f"engine-{i}", await _spawn("engine", {**env, "HAZMON_SHARD": f"{i}/{shards}"}, log)))
            for i in range(2):
                procs.append((f"writer-{i}", await _spawn("writer", env, log)))
            batches = []
            for s in sites:
                keys = np.array([tags.key(tag_ref(s.id, t.id)) for t in s.tags], dtype=np.int32)
                level = np.array([t.id.endswith(".LT") for t in s.tags])
                batches.append((s.id, keys, level))
            latencies: list[float] = []
            events_seen = 0

            async def on_event(msg: Any) -> None:
                nonlocal events_seen
                e = json.loads(msg.data)
                events_seen += 1
                if e["action"] == "activate":
                    latencies.append((time.time_ns() // 1000 - e["ts_us"]) / 1000)

            sub = await bus.nc.subscribe(bus.subjects.events("*"), cb=on_event)  # core NATS: live tail
            await asyncio.sleep(3.0)  # the stages connect and create their consumers
            rng = np.random.default_rng(0)
            published = 0
            t0 = time.monotonic()
            cpu0 = {name: _cpu_s(_tree(p.pid)) for name, p in procs}
            servers = server_pids()
            servers0 = {name: _cpu_s(pids) for name, pids in servers.items()}
            me0 = time.process_time()
            rounds = 0
            while time.monotonic() - t0 < args.seconds:
                now = time.time_ns() // 1000
                for site_id, keys, level in batches:
                    values = 7.0 + rng.normal(0, 0.05, len(keys))
                    spikes = rng.random(len(keys)) < 0.002
                    values[level & spikes] = 15.5
                    b = ReadingBatch.from_columns(keys, now, values)
                    subject = bus.subjects.readings(partition_of(site_id, args.partitions))
                    await bus.publish(subject, encode_batch(b), str(b.batch_id))
                    published += len(b)
                rounds += 1
            pub_s = time.monotonic() - t0
            me_cpu = time.process_time() - me0

            async def progress() -> tuple[int, int]:
                stored = int(await conn.fetchval("SELECT count(*) FROM readings"))
                judged = 0
                for p in range(args.partitions):
                    with contextlib.suppress(Exception):  # a partition without a site has no consumer
                        ci = await bus.js.consumer_info(bus.subjects.readings_stream, f"engine-{p}")
                        judged += int(ci.ack_floor.consumer_seq or 0)
                return stored, judged

            deadline = time.monotonic() + 600
            while True:
                stored, judged_msgs = await progress()
                if stored >= published and judged_msgs >= rounds * args.sites:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            total_s = time.monotonic() - t0
            cpu = {name: round((_cpu_s(_tree(p.pid)) - cpu0[name]) / total_s, 3) for name, p in procs}
            servers = {name: _tree(pids[0]) for name, pids in servers.items()}  # backends come and go
            cpu |= {name: round((_cpu_s(pids) - servers0[name]) / total_s, 3) for name, pids in servers.items()}
            # latency at a steady 1 Hz per tag: one batch per site per second, as gateways send them
            latencies.clear()
            t1 = time.monotonic()
            paced_cpu0 = {name: _cpu_s(_tree(p.pid)) for name, p in procs}
            for second in range(int(args.latency_seconds)):
                now = time.time_ns() // 1000
                for site_id, keys, level in batches:
                    values = 7.0 + rng.normal(0, 0.05, len(keys))
                    values[level & (rng.random(len(keys)) < 0.01)] = 15.5
                    b = ReadingBatch.from_columns(keys, now, values)
                    subject = bus.subjects.readings(partition_of(site_id, args.partitions))
                    await bus.publish(subject, encode_batch(b), str(b.batch_id))
                await asyncio.sleep(max(0.0, t1 + second + 1 - time.monotonic()))
            await asyncio.sleep(2.0)
            paced_s = time.monotonic() - t1
            paced_cpu = {n: round((_cpu_s(_tree(p.pid)) - paced_cpu0[n]) / paced_s, 3) for n, p in procs}
            await sub.unsubscribe()
            await conn.close()
        finally:
            for _, p in procs:
                await _stop(p)
            await bus.delete_streams()
            await bus.close()
            await drop_db(admin_url, db_url)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "engine_shards": shards,
        "writers": 2,
        "sites": args.sites,
        "tags": sum(len(b[1]) for b in batches),
        "published_readings": published,
        "publish_rate_per_s": round(published / pub_s),
        "through_rate_per_s": round(published / total_s),
        "stored": stored,
        "drain_s_after_publishing": round(total_s - pub_s, 1),
        "cpu_core_share": {**cpu, "publisher (bench)": round(me_cpu / total_s, 3)},
        "alarm_events_on_bus": events_seen,
        "paced_1hz": {"seconds": args.latency_seconds, "cpu_core_share": paced_cpu},
        "reading_to_event_on_bus_ms_at_1hz": {
            "n": len(latencies),
            "p50": round(float(np.nanpercentile(lat, 50)), 1),
            "p99": round(float(np.nanpercentile(lat, 99)), 1),
        },
    }


async def _spawn(role: str, env: dict[str, str], log: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        HAZMON, "serve", "--role", role, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    admin = args.db_url or tsdb_admin_url()
    runs = []
    for shards in (int(s) for s in args.shards.split(",")):
        print(f"scale: {shards} engine shard(s) ...", file=sys.stderr, flush=True)
        r = await run(shards, args, admin)
        print(f"scale: {json.dumps(r)}", file=sys.stderr, flush=True)
        runs.append(r)
    base = runs[0]["through_rate_per_s"]
    return {
        "benchmark": "scale",
        "database": admin.rsplit("@", 1)[-1],
        "runs": runs,
        "ratio_to_first": [round(r["through_rate_per_s"] / base, 2) for r in runs],
        "cores": os.cpu_count(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="1,2")
    p.add_argument("--sites", type=int, default=8)
    p.add_argument("--tanks", type=int, default=500)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="flood phase: publish as fast as the bus takes")
    p.add_argument("--latency-seconds", type=float, default=15.0, help="paced phase: every tag at 1 Hz")
    p.add_argument("--db-url", default="")
    args = p.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    t = time.monotonic()
    out = asyncio.run(main_async(args))
    out["total_seconds"] = round(time.monotonic() - t, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
