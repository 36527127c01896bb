"""Device communication across the stages (issue 14): a PLC that stops answering a gateway process
(`hazmon serve --role gateway`) raises its `comm.LOSS` alarm at the engine shard of its site, as in one
process — the gateway publishes each device's state on the site's partition, beside its readings.

Real NATS JetStream, real PostgreSQL, a real Modbus TCP connection refused by a port nobody serves.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NATS_URL
from hazmon.cluster.bus import Bus
from hazmon.cluster.codec import CodecError, decode_message, encode_device_status
from hazmon.cluster.roles import (
    StageStats,
    bus_publisher,
    device_publisher,
    run_engine_shard,
    run_writer,
    sites_by_key,
)
from hazmon.config import load_settings
from hazmon.gateways.config import load_gateway_config
from hazmon.plant.site import load_site
from hazmon.reading import DeviceStatus, now_us
from hazmon.runtime import run_runtime
from test_cluster import _until

ROOT = Path(__file__).resolve().parents[1]
SITE_FILE = ROOT / "sites" / "demo-tank-farm.yaml"
SITE = "demo-tank-farm"
RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]
PLC = f"{SITE}/demo-modbus.PLC-NH3"
LOSS = f"{PLC}:comm.LOSS"


def test_a_device_status_goes_over_the_wire_whole_and_garbage_is_refused() -> None:
    status = DeviceStatus(SITE, PLC, (3, 4, 5), False, 1_780_000_000_000_000, refresh=True)
    assert decode_message(encode_device_status(status)) == status
    for bad in (b"HZDS", b"HZDS{}", b'HZDS{"site": 1, "owner": "x", "keys": [], "ok": true, "ts_us": 0}', b"HZDS[1]"):
        try:
            decode_message(bad)
        except CodecError:
            continue
        raise AssertionError(f"{bad!r} was decoded")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "site": JSON | st.text(max_size=10),
        "owner": JSON | st.text(max_size=10),
        "keys": JSON | st.lists(st.integers() | st.floats() | st.booleans(), max_size=3),
        "ok": JSON | st.booleans(),
        "ts_us": JSON | st.integers() | st.floats(),
        "refresh": JSON,
    },
)


@given(body=st.binary(max_size=200) | FIELDS.map(lambda d: json.dumps(d).encode()))
@settings(max_examples=500, deadline=None)
def test_whatever_follows_the_device_magic_is_a_status_or_a_codec_error(body: bytes) -> None:
    """The shard's consumer sets aside what it cannot read (CodecError): no other exception may escape."""
    try:
        status = decode_message(b"HZDS" + body)
    except CodecError:
        return
    assert isinstance(status, DeviceStatus) and isinstance(status.owner, str) and isinstance(status.ok, bool)
    assert all(isinstance(k, int) for k in status.keys)


async def test_a_plc_lost_by_a_gateway_process_is_alarmed_by_the_engine_shard_and_survives_its_restart(
    pg_url: str, tmp_path: Path, namespace: str
) -> None:
    site = load_site(SITE_FILE)
    text = (ROOT / "gateways" / "demo-modbus.yaml").read_text(encoding="utf-8")
    dead = tmp_path / "modbus.yaml"
    dead.write_text(text.replace("port: 5020", "port: 1"), encoding="utf-8")  # nobody answers there
    config = load_gateway_config(dead, site)
    common = {"database_url": pg_url, "site": SITE_FILE, "nats_namespace": namespace, "partitions": 4}
    gateway_settings = load_settings(**common, data_dir=tmp_path / "gw")
    shard_settings = load_settings(**common, data_dir=tmp_path / "engine", rules=RULES, shard="0/1")
    bus = await Bus.connect(NATS_URL, namespace)
    conn = await asyncpg.connect(pg_url)

    async def journal(alarm_id: str) -> list[tuple[str, str | None]]:
        rows = await conn.fetch("SELECT action, site_id FROM alarm_journal WHERE alarm_id = $1 ORDER BY id", alarm_id)
        return [(r["action"], r["site_id"]) for r in rows]

    stop, stats = asyncio.Event(), StageStats()
    shard = asyncio.create_task(run_engine_shard(shard_settings, bus, stop, stats))
    writer_stop, writer_stats = asyncio.Event(), StageStats()
    writer = asyncio.create_task(run_writer(shard_settings, bus, writer_stop, writer_stats))
    try:
        # the gateway process: its Modbus devices cannot be reached; it tells the shards so
        async with run_runtime(gateway_settings, gateway_configs=[config]) as rt:
            assert rt.engine is None
            sent: list[DeviceStatus] = []
            publish = device_publisher(bus, gateway_settings.partitions)

            async def recorded(status: DeviceStatus) -> None:
                await publish(status)
                sent.append(status)

            rt.device_publisher = recorded
            rt.publisher = bus_publisher(bus, sites_by_key(rt.sites, rt.tags), gateway_settings.partitions)

            async def lost() -> bool:
                return ("activate", SITE) in await journal(LOSS)

            await _until(lost, 60, "the shard to journal the PLC's communication loss")
            nh3 = next(s for s in sent if s.owner == PLC)
            assert not nh3.ok and set(nh3.keys) == {int(k) for k in rt.gateways[0].devices()["PLC-NH3"]}
            assert {s.owner for s in sent} == {PLC, f"{SITE}/demo-modbus.PLC-MEOH"}
        # once per change, not once per tick (the clock ticked every second while the shard caught up)
        assert len([s for s in sent if s.owner == PLC]) == 1, sent

        # the alarm went to the site's events subject, for the api instances, as one process's would
        s = bus.subjects
        n_events = (await bus.js.stream_info(s.events_stream)).state.messages
        msgs = [await bus.js.get_msg(s.events_stream, seq) for seq in range(1, n_events + 1)]
        assert any(m.subject == s.events(SITE) and LOSS.encode() in m.data for m in msgs)
        # the shard restarts while the PLC is lost; the PLC comes back: the restarted shard clears the alarm
        stop.set()
        await asyncio.wait_for(shard, 15)
        stop = asyncio.Event()
        shard = asyncio.create_task(run_engine_shard(shard_settings, bus, stop, stats))
        await publish(DeviceStatus(SITE, PLC, nh3.keys, True, now_us()))

        async def cleared() -> bool:
            return (await journal(LOSS))[-1:] == [("clear", SITE)]

        await _until(cleared, 30, "the restarted shard to clear the loss it restored from the journal")
        assert [a for a, _ in await journal(LOSS)].count("activate") == 1
        # a status for a site no shard here owns is refused, counted, and changes nothing
        await publish(DeviceStatus("elsewhere", "elsewhere/gw.plc", (), False, now_us()))
        await publish(DeviceStatus(SITE, "elsewhere/gw.plc", (), False, now_us()))

        async def refused() -> bool:
            return stats.rejected.get("device status of another shard's site", 0) >= 1

        await _until(refused, 30, "the shard to refuse a status of another site")

        # the writers take device statuses off the stream (acknowledged, not stored, not refused)
        async def drained() -> bool:
            info = await bus.js.consumer_info(bus.subjects.readings_stream, "writers")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await _until(drained, 30, "the writers to take every message")
        assert writer_stats.rejected == {}
    finally:
        stop.set()
        writer_stop.set()
        await asyncio.wait_for(asyncio.gather(shard, writer, return_exceptions=True), 15)
        await conn.close()
        await bus.close()
