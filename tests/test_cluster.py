"""Scale-out over NATS JetStream (a real server on 127.0.0.1:4222): the reading-batch wire codec, and the
proof that the stages as separate processes lose and double nothing — three engine shards and two writers
(`hazmon serve --role engine|writer`) take two sites' readings from the bus; one shard is killed with
SIGKILL mid-run and restarted; the journal then holds exactly the transitions a single engine computes
from the same readings, and the database every reading exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError

from conftest import NATS_URL
from hazmon.alarms.alarm import AlarmEvent
from hazmon.alarms.compiler import compile_rules, load_rules
from hazmon.alarms.engine import AlarmEngine
from hazmon.cluster.bus import Bus, partition_of
from hazmon.cluster.codec import CodecError, decode_batch, encode_batch
from hazmon.plant.site import Site, load_site
from hazmon.plant.tag import tag_ref
from hazmon.reading import ReadingBatch
from hazmon.sim.model import PlantModel
from hazmon.sim.scale import SCALE_RULES, scale_layout
from hazmon.sim.scenario import load_scenario, parse_scenario
from hazmon.storage.registry import tag_index, upsert_site

ROOT = Path(__file__).resolve().parents[1]
DEMO_RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]
STEPS = 600


# ---------------------------------------------------------------- codec


def test_codec_round_trip_keeps_every_column_and_the_batch_id() -> None:
    batch = ReadingBatch.from_columns(
        [3, 1, 2], [1_700_000_000_000_000, 2, -5], [1.5, float("nan"), -0.0], [0, 130, 64]
    )
    back = decode_batch(encode_batch(batch))
    assert back.batch_id == batch.batch_id
    assert back.tag.tolist() == [3, 1, 2] and back.ts.tolist() == [1_700_000_000_000_000, 2, -5]
    assert np.array_equal(back.value, batch.value, equal_nan=True) and back.quality.tolist() == [0, 130, 64]
    assert len(encode_batch(ReadingBatch.from_columns(np.arange(10_000), 0, np.zeros(10_000)))) == 28 + 21 * 10_000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_codec_rejects_any_malformed_message_with_a_reason(data: bytes) -> None:
    try:
        batch = decode_batch(data)
    except CodecError as e:
        assert str(e).startswith("reading batch:")
    else:  # only a well-formed message decodes, and it re-encodes to itself
        assert encode_batch(batch) == data


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.integers(0, 27), st.binary(min_size=1, max_size=4))
def test_codec_rejects_truncated_or_padded_batches(n: int, cut: int, pad: bytes) -> None:
    wire = encode_batch(ReadingBatch.from_columns(np.arange(n), 7, np.ones(n)))
    for bad in (wire[: len(wire) - 1 - cut], wire + pad):
        with pytest.raises(CodecError):
            decode_batch(bad)


# ---------------------------------------------------------------- the stages as processes


def _batches(site: Site, scenario: Any, keys: dict[str, int], t0_us: int) -> list[ReadingBatch]:
    model = PlantModel(site, scenario, seed=0)
    tag = np.array([keys[tag_ref(site.id, t.id)] for t in site.tags], dtype=np.int32)
    out = []
    for step in range(STEPS):
        model.step()
        ts = np.full(len(tag), t0_us + step * 1_000_000, dtype=np.int64)
        out.append(ReadingBatch(tag.copy(), ts, model.values.astype(np.float64), model.quality.astype(np.uint8)))
    return out


def _sequences(events: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    by_alarm: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for alarm_id, action, state in events:
        by_alarm[alarm_id].append((action, state))
    return dict(by_alarm)


async def _spawn(role: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "serve", "--role", role,
        env=env, stdout=log.open("a"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def stop_roles(procs: dict[str, asyncio.subprocess.Process], log: Path) -> None:
    """SIGTERM to every role process still running; each must stop within 30 s."""
    for p in procs.values():
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        try:
            await asyncio.wait_for(p.wait(), 30)
        except TimeoutError:
            p.kill()
            await p.wait()
            text = await asyncio.to_thread(log.read_text)
            pytest.fail(f"{name} did not stop on SIGTERM:\n{text[-3000:]}")


async def _until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.02)


async def test_shards_and_writers_lose_and_double_nothing_when_a_shard_is_killed(
    pg_url: str, tmp_path: Path, namespace: str
) -> None:
    demo = load_site(ROOT / "sites" / "demo-tank-farm.yaml")
    scale_site = scale_layout(40).site()
    scale_file = tmp_path / "scale-site.yaml"
    scale_file.write_text(yaml.safe_dump(scale_site.model_dump(mode="json", by_alias=True), allow_unicode=True))
    scale_rules = tmp_path / "scale-rules.yaml"
    # no on-delay for the scale site: a restarted shard restarts a pending delay (docs/alarms.md), and the
    # comparison with one uninterrupted engine is to be exact
    undelayed = {
        "rules": [
            {**r, "limits": {k: {**v, "on_delay_s": 0} for k, v in r["limits"].items()}} for r in SCALE_RULES["rules"]
        ]
    }
    scale_rules.write_text(yaml.safe_dump(undelayed))
    rules = [*DEMO_RULES, scale_rules]
    # partitions such that the two sites belong to different shards of three
    partitions = next(p for p in range(3, 64) if partition_of(demo.id, p) % 3 != partition_of(scale_site.id, p) % 3)
    p_demo, p_scale = partition_of(demo.id, partitions), partition_of(scale_site.id, partitions)
    victim = p_scale % 3

    conn = await asyncpg.connect(pg_url)
    try:
        for site in (demo, scale_site):
            await upsert_site(conn, site)
        tags = await tag_index(conn)
    finally:
        await conn.close()
    keys = dict(tags.items())  # by reference: site/tag
    t0 = (time.time_ns() // 1000) - 3_600_000_000
    demo_batches = _batches(demo, load_scenario(ROOT / "simulators" / "demo.yaml", demo), keys, t0)
    scale_scenario = parse_scenario(
        {"name": "cluster", "site": scale_site.id, "duration_s": STEPS + 10,
         "events": [{"type": "spike", "tag": f"TK{i:05d}.LT", "value": 15.5, "at_s": 20 + 13 * i, "duration_s": 8}
                    for i in range(40)]},
        "<cluster test>", scale_site,
    )  # fmt: skip
    scale_batches = _batches(scale_site, scale_scenario, keys, t0)

    # the reference: one engine, the same rules and readings, in one process
    both = [demo, scale_site]
    reference = AlarmEngine(compile_rules(load_rules(rules, both), both, tags))
    expected: list[AlarmEvent] = []
    for a, b in zip(demo_batches, scale_batches, strict=True):
        expected += reference.process(a) + reference.process(b)
    assert len(expected) > 20, "the scenario must raise and clear alarms"

    env = {
        **os.environ,
        "HAZMON_DATABASE_URL": pg_url,
        "HAZMON_DATA_DIR": str(tmp_path / "data"),
        "HAZMON_SITE": str(ROOT / "sites" / "demo-tank-farm.yaml"),
        "HAZMON_SITES": json.dumps([str(scale_file)]),
        "HAZMON_RULES": json.dumps([str(r) for r in rules]),
        "HAZMON_NATS_URL": NATS_URL,
        "HAZMON_NATS_NAMESPACE": namespace,
        "HAZMON_PARTITIONS": str(partitions),
        "HAZMON_ENGINE_CLOCK": "false",  # recorded readings: no wall-clock ticks
        "HAZMON_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "stages.log"
    bus = await Bus.connect(NATS_URL, namespace)
    procs: dict[str, asyncio.subprocess.Process] = {}
    try:
        s = bus.subjects
        half = STEPS // 2
        for a, b in zip(demo_batches, scale_batches[:half], strict=False):
            await bus.publish(s.readings(p_demo), encode_batch(a), str(a.batch_id))
            await bus.publish(s.readings(p_scale), encode_batch(b), str(b.batch_id))
        for a in demo_batches[half:]:
            await bus.publish(s.readings(p_demo), encode_batch(a), str(a.batch_id))
        for i in range(3):
            procs[f"engine-{i}"] = await _spawn("engine", {**env, "HAZMON_SHARD": f"{i}/3"}, log)
        for i in range(2):
            procs[f"writer-{i}"] = await _spawn("writer", env, log)

        async def victim_progress() -> int:
            with_info: Any = None
            try:
                with_info = await bus.js.consumer_info(s.readings_stream, f"engine-{p_scale}")
            except Exception:  # the consumer is not created yet
                return 0
            done = int(with_info.ack_floor.consumer_seq or 0)
            return done if done >= 30 else 0

        await _until(victim_progress, 60, f"shard {victim} to work through partition {p_scale}")
        procs[f"engine-{victim}"].send_signal(signal.SIGKILL)
        await procs[f"engine-{victim}"].wait()
        info = await bus.js.consumer_info(s.readings_stream, f"engine-{p_scale}")
        assert info.num_pending + info.num_ack_pending > 0, "the kill must fall mid-run"
        for b in scale_batches[half:]:
            await bus.publish(s.readings(p_scale), encode_batch(b), str(b.batch_id))
        procs[f"engine-{victim}"] = await _spawn("engine", {**env, "HAZMON_SHARD": f"{victim}/3"}, log)

        total = sum(len(b) for b in demo_batches + scale_batches)
        conn = await asyncpg.connect(pg_url)
        try:

            async def all_done() -> bool:
                for consumer in (f"engine-{p_demo}", f"engine-{p_scale}", "writers"):
                    try:
                        ci = await bus.js.consumer_info(s.readings_stream, consumer)
                    except NotFoundError:  # its process is still starting
                        return False
                    if ci.num_pending or ci.num_ack_pending:
                        return False
                return True

            await _until(all_done, 120, "every batch judged and stored")
            rows = await conn.fetchval("SELECT count(*) FROM readings")
            distinct = await conn.fetchval("SELECT count(*) FROM (SELECT DISTINCT tag, time FROM readings) d")
            assert rows == distinct == total, f"{rows} rows, {distinct} distinct, {total} published"
            journal = await conn.fetch(
                'SELECT alarm_id, site_id, tag_id, action, new_state, ts FROM alarm_journal WHERE "user" IS NULL '
                "ORDER BY id"
            )
        finally:
            await conn.close()
        got = _sequences([(r["alarm_id"], r["action"], r["new_state"]) for r in journal])
        want = _sequences([(e.alarm_id, e.action, str(e.new_state)) for e in expected])
        assert got == want, "the journal differs from the single engine's transitions"
        # both sites' alarms, each named in its own site: <site>/<tag>:<condition>, the tag by its own id
        assert {r["site_id"] for r in journal} == {demo.id, scale_site.id}
        for r in journal:
            assert r["alarm_id"].startswith(f"{r['site_id']}/{r['tag_id']}:"), dict(r)
        stream = await bus.js.stream_info(s.events_stream)
        assert stream.state.messages == len(expected), "an event was published twice or not at all"
    finally:
        await stop_roles(procs, log)
        await bus.close()
    assert all(p.returncode == 0 for n, p in procs.items()), log.read_text()[-3000:]


async def test_gateway_role_publishes_what_a_plc_serves_and_a_writer_stores_it(
    pg_url: str, tmp_path: Path, namespace: str
) -> None:
    """`--role gateway`: a real Modbus simulator's readings go to the bus, not to the engine or the store;
    a writer then stores every one of them."""
    from hazmon.cluster.roles import StageStats, bus_publisher, run_writer, sites_by_key
    from hazmon.config import load_settings
    from hazmon.gateways.config import load_gateway_config
    from hazmon.runtime import run_runtime
    from hazmon.sim import serve as serve_sim

    site = load_site(ROOT / "sites" / "demo-tank-farm.yaml")
    scenario = load_scenario(ROOT / "simulators" / "normal.yaml", site)
    config = load_gateway_config(ROOT / "gateways" / "demo-modbus.yaml", site)
    settings = load_settings(
        database_url=pg_url, data_dir=tmp_path, site=ROOT / "sites" / "demo-tank-farm.yaml",
        nats_namespace=namespace, partitions=4,
    )  # fmt: skip
    bus = await Bus.connect(NATS_URL, namespace)
    try:
        async with serve_sim(site, [config], scenario, modbus_port=0, speed=5.0) as sim:
            async with run_runtime(settings, gateway_configs=[sim.config("demo-modbus")]) as rt:
                assert rt.engine is None
                rt.publisher = bus_publisher(bus, sites_by_key(rt.sites, rt.tags), settings.partitions)

                async def published() -> int:
                    info = await bus.js.stream_info(bus.subjects.readings_stream)
                    return int(info.state.messages) if info.state.messages >= 5 else 0

                await _until(published, 30, "five batches on the bus")
            sent = rt.stats.readings  # the gateways are stopped: every batch counted was published
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM readings") == 0, "the gateway role stored readings"
            stop, stats = asyncio.Event(), StageStats()
            writer = asyncio.create_task(run_writer(settings, bus, stop, stats))

            async def stored() -> bool:
                return int(await conn.fetchval("SELECT count(*) FROM readings")) == sent

            await _until(stored, 30, f"the writer to store the {sent} published readings")
            stop.set()
            await asyncio.wait_for(writer, 10)
            subject = bus.subjects.readings(partition_of(site.id, settings.partitions))
            info = await bus.js.stream_info(bus.subjects.readings_stream, subjects_filter=subject)
            assert info.state.messages == stats.batches and stats.rejected == {}
        finally:
            await conn.close()
    finally:
        await bus.close()


async def test_a_malformed_message_is_set_aside_counted_and_does_not_stop_the_writer(
    pg_url: str, tmp_path: Path, namespace: str
) -> None:
    from hazmon.cluster.roles import StageStats, run_writer
    from hazmon.config import load_settings

    settings = load_settings(database_url=pg_url, data_dir=tmp_path, nats_namespace=namespace)
    conn = await asyncpg.connect(pg_url)
    bus = await Bus.connect(NATS_URL, namespace)
    try:
        await upsert_site(conn, load_site(ROOT / "sites" / "demo-tank-farm.yaml"))
        key = (await tag_index(conn)).key("demo-tank-farm/V101.LT")
        good = ReadingBatch.from_columns([key, key], [1_000_000, 2_000_000], [5.0, 5.1])
        await bus.publish(bus.subjects.readings(0), b"HZRB garbage", "bad-1")
        await bus.publish(bus.subjects.readings(0), encode_batch(good)[:-3], "bad-2")  # truncated
        await bus.publish(bus.subjects.readings(0), encode_batch(good), str(good.batch_id))
        stop, stats = asyncio.Event(), StageStats()
        writer = asyncio.create_task(run_writer(settings, bus, stop, stats))

        async def stored() -> bool:
            return int(await conn.fetchval("SELECT count(*) FROM readings")) == 2

        await _until(stored, 30, "the good batch behind two malformed ones")
        stop.set()
        await asyncio.wait_for(writer, 10)
        assert stats.rejected == {"undecodable": 2} and stats.batches == 1
        info = await bus.js.consumer_info(bus.subjects.readings_stream, "writers")
        assert info.num_pending == 0 and info.num_ack_pending == 0  # terminated, never redelivered
    finally:
        await bus.close()
        await conn.close()
