"""`hazmon serve --role hub` against real NATS JetStream and PostgreSQL: an enterprise's hazmon (the demo site,
its own database, the uplink sender of docs/uplink.md) sends base data, real-time values and alarms to the hub
process over HTTP + SM4; the hub registers the site, publishes reading batches and alarm events on the bus,
and a writer process stores the readings in the regulator's database, each once — also when a message is
sent again."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_helpers import RULES, SITE_FILE, free_port, ingest
from conftest import NATS_URL, create_database, drop_database
from hazmon.cluster.bus import Bus
from hazmon.cluster.hub import BusSink, batch_id_of
from hazmon.config import load_settings
from hazmon.hub.receiver import UPLINK_PATH, create_receiver
from hazmon.hub.sink import JsonlSink
from hazmon.regulator.uplink_payload import Credentials, seal
from hazmon.runtime import run_runtime
from test_cluster import _until, stop_roles

KEY = "0123456789abcdeffedcba9876543210"
IV = "00112233445566778899aabbccddeeff"
SECRET = "issued-to-ecs"
APP = "hz-320500-0001"
USCC = "91320500MA1XK7Q211"  # the demo enterprise
CREDS = Credentials(APP, SECRET.encode(), bytes.fromhex(KEY), bytes.fromhex(IV))


@pytest.fixture
async def enterprise_db(pg_admin_url: str) -> AsyncIterator[str]:
    """The enterprise's own database (the hub has another: ``pg_url``)."""
    url = await create_database(pg_admin_url)
    yield url
    await drop_database(pg_admin_url, url)


@asynccontextmanager
async def _hub(
    pg_url: str,
    namespace: str,
    tmp_path: Path,
    credentials: dict[str, Credentials],
    enterprises: dict[str, frozenset[str]] | None = None,
) -> AsyncIterator[tuple[Bus, asyncpg.Pool, BusSink, httpx.AsyncClient]]:
    """The hub's receiver feeding the bus and the database, and a client of it (in process)."""
    bus = await Bus.connect(NATS_URL, namespace)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    try:
        sink = BusSink(bus, pool, 4, JsonlSink(tmp_path / "received.jsonl"))
        app = create_receiver(credentials, sink, enterprises)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
            yield bus, pool, sink, client
    finally:
        await pool.close()
        await bus.close()


def _credentials_file(path: Path, enterprises: list[str] | None = None) -> Path:
    entry: dict[str, Any] = {"app_id": APP, "app_secret": SECRET, "sm4_key": KEY, "sm4_iv": IV}
    if enterprises is not None:
        entry["enterprises"] = enterprises
    path.write_text(yaml.safe_dump([entry]))
    return path


def _received(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def test_an_enterprise_uplink_reaches_the_regulators_database_once_through_hub_and_writer(
    pg_url: str, enterprise_db: str, tmp_path: Path, namespace: str
) -> None:
    port = free_port()
    out = tmp_path / "hub" / "received.jsonl"
    env = {
        **os.environ,
        "HAZMON_DATABASE_URL": pg_url,
        "HAZMON_DATA_DIR": str(tmp_path / "hub-data"),
        "HAZMON_NATS_URL": NATS_URL,
        "HAZMON_NATS_NAMESPACE": namespace,
        "HAZMON_PARTITIONS": "4",
        "HAZMON_HUB__PORT": str(port),
        "HAZMON_HUB__CREDENTIALS": str(_credentials_file(tmp_path / "hub-credentials.yaml", [USCC])),
        "HAZMON_HUB__OUT": str(out),
        "HAZMON_LOG_LEVEL": "INFO",
    }
    for name in ("HAZMON_SITE", "HAZMON_RULES", "HAZMON_GATEWAYS", "HAZMON_CONFIG"):
        env.pop(name, None)
    log = tmp_path / "stages.log"
    procs: dict[str, asyncio.subprocess.Process] = {}
    for role in ("hub", "writer"):
        procs[role] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hazmon", "serve", "--role", role,
            env=env, stdout=log.open("a"), stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    hub_url = f"http://127.0.0.1:{port}"
    bus = await Bus.connect(NATS_URL, namespace)
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def hub_up() -> bool:
                assert procs["hub"].returncode is None, log.read_text()[-3000:]
                try:
                    return (await client.get(f"{hub_url}/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await _until(hub_up, 30, "the hub to listen")

            # the enterprise: its own hazmon, database and uplink to the hub
            settings = load_settings(
                database_url=enterprise_db, data_dir=tmp_path / "enterprise", site=SITE_FILE, rules=RULES,
                uplink={"endpoint": f"{hub_url}{UPLINK_PATH}", "app_id": APP, "app_secret": SECRET,
                        "sm4_key": KEY, "sm4_iv": IV, "interval_s": 1.0, "heartbeat_s": 2.0},
            )  # fmt: skip
            async with run_runtime(settings) as rt:
                assert rt.uplink is not None
                uplink = rt.uplink

                async def realtime_and_alarm_delivered() -> bool:
                    # a gas detector past its H limit, then back: readings, a raise and a clear
                    high = uplink.stats.enqueued["alarm"] < 1
                    await ingest(rt, {"V101.GT1": 30.0 if high else 2.0, "V101.LT": 8.5, "V101.PT": 0.6})
                    by_type = (await client.get(f"{hub_url}/stats")).json()["by_type"]
                    return bool(by_type.get("realtime", 0) >= 4 and by_type.get("alarm", 0) >= 2)

                await _until(realtime_and_alarm_delivered, 90, "real-time values and alarms at the hub")
                queued = uplink.queue.last_seq

                async def caught_up() -> bool:
                    last = (await client.get(f"{hub_url}/stats")).json()["last_seq"]
                    return bool(max(last.values(), default=0) >= queued)

                await _until(caught_up, 60, f"the hub to receive the enterprise's messages 1..{queued}")

            stats = (await client.get(f"{hub_url}/stats")).json()
            # every message the enterprise queued, once and in order (a sequence without gaps)
            assert stats["received"] == max(stats["last_seq"].values()) >= queued, stats
            assert stats["out_of_order"] == 0, stats
            assert stats["fed"]["sites"] >= 1 and stats["rejected_content"] == {}, stats

            received = _received(out)
            realtime = [m for m in received if m["type"] == "realtime"]
            pairs = {(v["tag_code"], v["ts"]): v["value"] for m in realtime for v in m["data"]["values"]}
            events = [e for m in received if m["type"] == "alarm" for e in m["data"]["events"]]
            assert {e["kind"] for e in events} >= {"raise"}, events

            conn = await asyncpg.connect(pg_url)
            try:
                # the base data registered the enterprise's site in the regulator's database
                row = await conn.fetchrow(
                    "SELECT e.uscc, (SELECT count(*) FROM tags t WHERE t.site_id = s.id) AS tags "
                    "FROM sites s JOIN enterprises e ON e.id = s.enterprise_id WHERE s.id = 'demo-tank-farm'"
                )
                assert row is not None and row["uscc"] == USCC and row["tags"] > 0
                audited = "SELECT count(*) FROM audit_log WHERE action = 'site.load' AND target = 'demo-tank-farm'"
                assert await conn.fetchval(audited) == 1

                async def stored() -> bool:
                    return int(await conn.fetchval("SELECT count(*) FROM readings")) >= len(pairs)

                await _until(stored, 30, f"the writer to store {len(pairs)} readings")
                rows = await conn.fetchval("SELECT count(*) FROM readings")
                distinct = await conn.fetchval("SELECT count(*) FROM (SELECT DISTINCT tag, time FROM readings) d")
                assert rows == distinct == len(pairs), f"{rows} rows, {distinct} distinct, {len(pairs)} sent"
                stored_values = await conn.fetch(
                    "SELECT t.id, r.value FROM readings r JOIN tags t ON t.key = r.tag ORDER BY t.id, r.time"
                )
                by_tag: dict[str, list[float]] = {}
                for (tag, _ts), value in sorted(pairs.items()):
                    by_tag.setdefault(tag, []).append(value)
                got: dict[str, list[float]] = {}
                for r in stored_values:
                    got.setdefault(r["id"], []).append(r["value"])
                assert got == by_tag, "the stored values differ from those the enterprise sent"

                # the same message again: the receiver knows it (duplicate), nothing more is stored
                first = realtime[0]
                again = await client.post(f"{hub_url}{UPLINK_PATH}", json=seal(CREDS, first))
                assert again.status_code == 200 and again.json()["duplicate"] is True
                # ... and were the hub's file lost, the bus would drop the re-published batch (same batch id)
                readings_before = (await bus.js.stream_info(bus.subjects.readings_stream)).state.messages
                pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
                try:
                    fresh = BusSink(bus, pool, 4, JsonlSink(tmp_path / "lost" / "received.jsonl"))
                    assert await fresh.accept(first) is True
                    assert fresh.fed["batches"] == 1
                finally:
                    await pool.close()
                info = await bus.js.stream_info(bus.subjects.readings_stream)
                assert info.state.messages == readings_before, "a resent message was published twice"
                await asyncio.sleep(0)  # the writer had the chance; the count stays
                assert await conn.fetchval("SELECT count(*) FROM readings") == len(pairs)
                assert batch_id_of(USCC, first["msg_id"]) == batch_id_of(USCC, first["msg_id"])
            finally:
                await conn.close()

            # the alarms: one event on <ns>.events.<site> per raise/clear, none twice
            ev = await bus.js.stream_info(bus.subjects.events_stream)
            assert ev.state.messages == len(events), f"{ev.state.messages} events on the bus, {len(events)} sent"
    finally:
        await stop_roles(procs, log)
        await bus.close()
    assert all(p.returncode == 0 for p in procs.values()), log.read_text()[-3000:]


async def test_the_hub_keeps_enterprises_apart(pg_url: str, tmp_path: Path, namespace: str) -> None:
    """An app id sends only for its enterprises (403); a site registered for one enterprise cannot be taken
    over by another's base data, nor fed its readings (422, counted); a malformed value is a 400."""
    from hazmon.plant.site import load_site
    from hazmon.regulator.uplink_payload import base_data, message

    site = load_site(SITE_FILE)
    other = "91320600MA1XK7Q216"  # another enterprise, bound to its own app id
    other_creds = Credentials("hz-320600-0001", b"other-secret", bytes.fromhex(KEY), bytes.fromhex(IV))
    async with _hub(
        pg_url,
        namespace,
        tmp_path,
        {APP: CREDS, other_creds.app_id: other_creds},
        {APP: frozenset({USCC}), other_creds.app_id: frozenset()},
    ) as (bus, pool, sink, client):
        base = message("s1-000000000001", 1, "base", USCC, 0, base_data(site, [t.id for t in site.tags]))
        r = await client.post(UPLINK_PATH, json=seal(CREDS, base))
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        # the same base data at the enterprise's next start: registered again, audited once
        r = await client.post(UPLINK_PATH, json=seal(CREDS, {**base, "msg_id": "s1-000000000005", "seq": 5}))
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        async with pool.acquire() as conn:
            loads = await conn.fetch("SELECT actor, detail FROM audit_log WHERE action = 'site.load'")
        assert len(loads) == 1 and loads[0]["actor"] == f"hazmon hub (enterprise {USCC})", loads
        # another enterprise's app id claims the demo enterprise's data
        r = await client.post(UPLINK_PATH, json=seal(other_creds, {**base, "msg_id": "s2-000000000001"}))
        assert r.status_code == 403 and "enterprise not issued" in r.json()["msg"]
        # an unbound app id (the demo's, in another enterprise's name) sends a site of that other one
        hijack = {**base, "msg_id": "s1-000000000002", "seq": 2, "enterprise_code": other}
        hijack["data"] = {**base["data"], "enterprise": {"code": other, "name": "Other", "id": "other"}}
        sink_open = create_receiver({APP: CREDS}, sink)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sink_open), base_url="http://hub") as c2:
            r = await c2.post(UPLINK_PATH, json=seal(CREDS, hijack))
            assert r.status_code == 422 and "another enterprise's site" in r.json()["msg"], r.text
            values = [{"tag_code": "V101.LT", "value": 1.0, "quality": "good", "ts": "2026-11-30T10:00:00.000Z"}]
            rt = message("s1-000000000003", 3, "realtime", other, 0, {"site_code": site.id, "values": values})
            r = await c2.post(UPLINK_PATH, json=seal(CREDS, rt))
            assert r.status_code == 422 and "another enterprise" in r.json()["msg"]
        nul = {**base, "msg_id": "s1-000000000006", "seq": 6}
        nul["data"] = {**base["data"], "site": {**base["data"]["site"], "name": "tank\u0000farm"}}
        r = await client.post(UPLINK_PATH, json=seal(CREDS, nul))
        assert r.status_code == 422 and "site.name: contains a NUL character" in r.json()["msg"], r.text
        bad = message("s1-000000000004", 4, "realtime", USCC, 0, {"site_code": site.id, "values": [{"x": 1}]})
        r = await client.post(UPLINK_PATH, json=seal(CREDS, bad))
        assert r.status_code == 400 and "malformed" in r.json()["msg"]
        stats = (await client.get("/stats")).json()
        assert stats["received"] == 2 and sum(stats["rejected_content"].values()) == 4, stats
        assert stats["refused"] == {
            "enterprise not issued": 1,
            "base data do not make a valid site": 1,
            "realtime": 1,
        }
        async with pool.acquire() as conn:
            assert (
                await conn.fetchval("SELECT e.uscc FROM sites s JOIN enterprises e ON e.id = s.enterprise_id") == USCC
            )
        # the database away: 503 (the enterprise retries), nothing kept, so the retry is fed
        gone = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
        await gone.close()
        away = BusSink(bus, gone, 4, JsonlSink(tmp_path / "away.jsonl"))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_receiver({APP: CREDS}, away)), base_url="http://hub"
        ) as client:
            r = await client.post(UPLINK_PATH, json=seal(CREDS, base))
            assert r.status_code == 503 and "cannot keep the message" in r.json()["msg"], r.text
            assert (await client.get("/stats")).json()["received"] == 0


async def test_two_enterprises_with_the_same_tag_codes_are_both_registered_each_on_its_own_site(
    pg_url: str, tmp_path: Path, namespace: str
) -> None:
    """Issue 14: tag codes are unique within a site only. A second enterprise uplinking base data with the
    demo's very tag codes (its own site code) is registered too (it used to be refused with 422), each tag
    with its own key; each enterprise's real-time values and alarms land on its own site."""
    from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority
    from hazmon.cluster.codec import decode_batch
    from hazmon.plant.site import load_site, parse_site
    from hazmon.regulator.uplink_payload import alarm_event, base_data, message, realtime_data

    demo = load_site(SITE_FILE)
    north_uscc = "91320600MA1XK7Q216"
    doc = demo.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["enterprise"] = {"id": "ntc", "name": "Nantong Chemicals", "uscc": north_uscc}
    doc["site"] = {**doc["site"], "id": "north-works", "name": "Nantong north works"}
    north = parse_site(doc)  # the same plant built again: every tag code the same
    north_creds = Credentials("hz-320600-0001", b"north-secret", bytes.fromhex(KEY), bytes.fromhex(IV))
    sender = {demo.id: (CREDS, USCC, "s1"), north.id: (north_creds, north_uscc, "s2")}
    value = {demo.id: 3.0, north.id: 33.0}  # V101.GT1, %LEL: north-works has the leak
    ts_us = 1_780_000_000_000_000
    async with _hub(
        pg_url,
        namespace,
        tmp_path,
        {APP: CREDS, north_creds.app_id: north_creds},
        {APP: frozenset({USCC}), north_creds.app_id: frozenset({north_uscc})},
    ) as (bus, pool, _, client):
        for site in (demo, north):
            creds, uscc, prefix = sender[site.id]
            base = message(f"{prefix}-000000000001", 1, "base", uscc, 0, base_data(site, [t.id for t in site.tags]))
            r = await client.post(UPLINK_PATH, json=seal(creds, base))
            assert r.status_code == 200, r.text  # the second is no longer refused for its tag codes
        for site in (demo, north):
            creds, uscc, prefix = sender[site.id]
            values = [{"tag": "V101.GT1", "ts_us": ts_us, "value": value[site.id], "quality": 0}]
            rt = message(f"{prefix}-000000000002", 2, "realtime", uscc, 0, realtime_data(site.id, ts_us, values, {}))
            r = await client.post(UPLINK_PATH, json=seal(creds, rt))
            assert r.status_code == 200, r.text
            # the enterprise's engine names the alarm across sites; the message names it within its site
            raised = AlarmEvent(
                f"{site.id}/V101.GT1:gas.H", f"{site.id}/V101.GT1", "gas.H", Priority.HIGH, AlarmState.NORMAL,
                AlarmState.ACTIVE_UNACK, value[site.id], 25.0, ts_us, None, None, "activate",
            )  # fmt: skip
            data = {"site_code": site.id, "events": [alarm_event(raised, "HI-01", "V-101")]}
            alarm = message(f"{prefix}-000000000003", 3, "alarm", uscc, 0, data)
            r = await client.post(UPLINK_PATH, json=seal(creds, alarm))
            assert r.status_code == 200, r.text
        stats = (await client.get("/stats")).json()
        assert stats["received"] == 6 and stats["rejected_content"] == {} and stats["refused"] == {}, stats
        assert stats["fed"]["sites"] == 2 and stats["fed"]["readings"] == 2 and stats["fed"]["events"] == 2
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT t.site_id, t.key, e.uscc FROM tags t JOIN sites s ON s.id = t.site_id "
                "JOIN enterprises e ON e.id = s.enterprise_id WHERE t.id = 'V101.GT1' AND t.active ORDER BY t.site_id"
            )
            assert [(r["site_id"], r["uscc"]) for r in rows] == [(demo.id, USCC), (north.id, north_uscc)]
            key_of = {r["key"]: r["site_id"] for r in rows}
            assert len(key_of) == 2  # each V101.GT1 its own tag
            for site in (demo, north):
                n = await conn.fetchval("SELECT count(*) FROM tags WHERE site_id = $1 AND active", site.id)
                assert n == len(site.tags)
        # the readings: each value under its own site's tag
        s = bus.subjects
        readings = (await bus.js.stream_info(s.readings_stream)).state.messages
        got: dict[str, list[float]] = {}
        for seq in range(1, readings + 1):
            batch = decode_batch((await bus.js.get_msg(s.readings_stream, seq)).data)
            for k, v in zip(batch.tag.tolist(), batch.value.tolist(), strict=True):
                got.setdefault(key_of[k], []).append(v)
        assert got == {demo.id: [value[demo.id]], north.id: [value[north.id]]}
        # the alarms: on each site's subject, named in that site, with that enterprise's value
        n_events = (await bus.js.stream_info(s.events_stream)).state.messages
        events = [await bus.js.get_msg(s.events_stream, seq) for seq in range(1, n_events + 1)]
        seen = {
            m.subject: {k: json.loads(m.data)[k] for k in ("alarm_id", "site", "tag", "enterprise", "value")}
            for m in events
        }
        assert seen == {
            s.events(site.id): {
                "alarm_id": f"{site.id}/V101.GT1:gas.H",
                "site": site.id,
                "tag": "V101.GT1",
                "enterprise": sender[site.id][1],
                "value": value[site.id],
            }
            for site in (demo, north)
        }


def test_a_dotted_site_id_is_one_subject_token() -> None:
    from hazmon.cluster.bus import Subjects

    assert Subjects("ns").events("plant.north") == "ns.events.plant_north"
    assert Subjects("ns").events("demo-tank-farm") == "ns.events.demo-tank-farm"


async def test_a_bad_credentials_file_stops_the_hub_with_a_message(tmp_path: Path, namespace: str) -> None:
    bad = tmp_path / "hub-credentials.yaml"
    bad.write_text(yaml.safe_dump([{"app_id": APP, "app_secret": SECRET, "sm4_key": "xyz", "sm4_iv": IV}]))
    env = {
        **os.environ,
        "HAZMON_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "HAZMON_NATS_URL": NATS_URL,
        "HAZMON_NATS_NAMESPACE": namespace,
        "HAZMON_HUB__CREDENTIALS": str(bad),
    }
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "serve", "--role", "hub",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 2, err.decode()
    assert f"{bad}" in err.decode() and "[0].sm4_key" in err.decode() and "Traceback" not in err.decode()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
VALUE = st.fixed_dictionaries(
    {},
    optional={
        "tag_code": st.sampled_from(["V101.LT", "V101.PT", "nope"]) | JSON,
        "value": st.floats(allow_nan=False, allow_infinity=False) | JSON,
        "quality": st.sampled_from(["good", "bad", "uncertain"]) | JSON,
        "quality_code": st.integers(-5, 300) | JSON,
        "ts": st.sampled_from(["2026-11-30T10:00:00.000Z", "2026-11-30T10:00:01Z", "yesterday"]) | JSON,
    },
)


async def test_no_uplinked_content_makes_the_hub_fail(pg_url: str, tmp_path: Path, namespace: str) -> None:
    """Whatever an authenticated enterprise puts in its real-time and alarm messages, the hub answers 200,
    400 or 422 — never a 5xx — and what it refuses it counts."""
    from hazmon.plant.site import load_site
    from hazmon.regulator.uplink_payload import base_data, message

    site = load_site(SITE_FILE)
    seq = iter(range(2, 10_000))
    async with _hub(pg_url, namespace, tmp_path, {APP: CREDS}) as (*_, client):
        base = message("f-000000000001", 1, "base", USCC, 0, base_data(site, [t.id for t in site.tags]))
        assert (await client.post(UPLINK_PATH, json=seal(CREDS, base))).status_code == 200

        @given(
            kind=st.sampled_from(["realtime", "alarm"]),
            items=st.lists(VALUE | JSON, max_size=4),
            site_code=st.just(site.id) | JSON,
        )
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(kind: str, items: list[Any], site_code: Any) -> None:
            n = next(seq)
            key = "values" if kind == "realtime" else "events"
            msg = message(f"f-{n:012d}", n, kind, USCC, 0, {"site_code": site_code, key: items})
            fut = asyncio.run_coroutine_threadsafe(client.post(UPLINK_PATH, json=seal(CREDS, msg)), loop)
            r = fut.result(30)
            assert r.status_code in (200, 400, 422), (r.status_code, r.text, msg)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(check)
        stats = (await client.get("/stats")).json()
        assert stats["received"] + sum(stats["refused"].values()) == next(seq) - 1, stats
