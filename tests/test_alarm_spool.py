"""Alarm events survive a database outage and a crash: kept on disk, replayed at the next start."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from api_helpers import SITE as SITE_ID
from api_helpers import ingest, ref
from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority
from hazmon.alarms.pending import AlarmSpool, Pending
from hazmon.config import load_settings
from hazmon.reading import now_us
from hazmon.recorder import RecordNotPossible
from hazmon.runtime import ALARM_SPOOL_FILE, Actor, run_runtime
from tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "sites" / "demo-tank-farm.yaml"
RULES = sorted((ROOT / "alarm_rules").glob("*.yaml"))


def _gas_event() -> AlarmEvent:
    return AlarmEvent(
        ref("V101.GT1:gas.H"), ref("V101.GT1"), "gas.H", Priority.HIGH, AlarmState.NORMAL, AlarmState.ACTIVE_UNACK,
        30.0, 25.0, 1_780_000_000_000_000, None, None, "activate",
    )  # fmt: skip


def test_spool_round_trip_journaled_marks_and_torn_line(tmp_path: Path) -> None:
    spool = AlarmSpool(tmp_path / "pending.jsonl")
    e = _gas_event()
    ack = replace(
        e, prev_state=AlarmState.ACTIVE_UNACK, new_state=AlarmState.ACTIVE_ACK, action="acknowledge", user="op1",
        comment="NUL \x00 and a lone surrogate \ud800 are kept",
    )  # fmt: skip
    first, second, third = Pending([e]), Pending([ack], {"actor": "op1", "action": "alarm.acknowledge"}), Pending([e])
    spool.append([first])
    spool.append([second, third])
    assert [i.seq for i in (first, second, third)] == [1, 2, 3]
    spool.mark_journaled([first, third])
    with spool.path.open("a") as f:
        f.write('{"alarm_id": "torn')  # a crash in the middle of a write
    again = AlarmSpool(spool.path)
    (left,) = again.load()
    assert left.events == [ack] and left.audit == {"actor": "op1", "action": "alarm.acknowledge"}
    # the torn line is moved aside with its reason, not dropped and not fatal
    assert again.moved_aside == 1
    (aside,) = [json.loads(line) for line in again.dead_letter_path.read_text().splitlines()]
    assert aside["line"] == '{"alarm_id": "torn' and "line 5" in aside["reason"]
    # numbering goes on after what the file holds
    later = Pending([e])
    again.append([later])
    assert later.seq == 4
    again.clear()
    assert again.load() == []


def test_old_format_lines_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "pending.jsonl"
    path.write_text(json.dumps(asdict(_gas_event())) + "\n" + "\x00garbage\n", encoding="utf-8")
    spool = AlarmSpool(path)
    (item,) = spool.load()
    assert item.events == [_gas_event()] and spool.moved_aside == 1


async def test_alarm_raised_during_an_outage_survives_a_crash_and_a_shutdown(pg_url: str, tmp_path: Path) -> None:
    u = urlsplit(pg_url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    url = urlunsplit(u._replace(netloc=f"{u.username}@127.0.0.1:{proxy.port}"))
    (tmp_path / "run").mkdir()
    (tmp_path / "crashed").mkdir()
    settings = load_settings(database_url=url, data_dir=tmp_path / "run", site=SITE, rules=RULES)
    pending = tmp_path / "run" / ALARM_SPOOL_FILE
    try:
        async with run_runtime(settings) as rt:
            await proxy.go_down()
            await ingest(rt, {"V101.GT1": 30.0})  # a leak: gas.H activates while the database is down
            # on disk before anything else happened (no wait): what a crash at this instant leaves
            assert ref("V101.GT1:gas.H") in pending.read_text()
            shutil.copy(pending, tmp_path / "crashed" / ALARM_SPOOL_FILE)
            await _until(lambda: rt.recorder.down, 20, "the writer to find the database away")
            # an operator action during the outage: applied, on disk, journaled later
            ack = await rt.act("acknowledge", ref("V101.GT1:gas.H"), Actor("alice", "t1", "operator"))
            assert ack.record == "queued"
            # a normal shutdown during the outage: nothing is dropped with the flush timeout
        text = pending.read_text()
        assert ref("V101.GT1:gas.H") in text and "alarm.acknowledge" in text
        await proxy.come_up()
        crashed = load_settings(database_url=url, data_dir=tmp_path / "crashed", site=SITE, rules=RULES)
        async with run_runtime(crashed) as rt:
            assert rt.engine is not None
            assert rt.engine.get(ref("V101.GT1:gas.H")).state is AlarmState.ACTIVE_UNACK  # restored, not forgotten
        assert not (tmp_path / "crashed" / ALARM_SPOOL_FILE).exists()
    finally:
        await proxy.stop()
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT action, site_id, tag_id FROM alarm_journal WHERE alarm_id = $1", ref("V101.GT1:gas.H")
        )
    finally:
        await conn.close()
    # replayed from the crashed run's spool: in its site, under the tag's own id
    assert [tuple(r) for r in rows] == [("activate", SITE_ID, "V101.GT1")]


async def test_after_the_shutdown_the_queued_action_is_journaled_and_audited(pg_url: str, tmp_path: Path) -> None:
    u = urlsplit(pg_url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    url = urlunsplit(u._replace(netloc=f"{u.username}@127.0.0.1:{proxy.port}"))
    settings = load_settings(database_url=url, data_dir=tmp_path, site=SITE, rules=RULES)
    try:
        async with run_runtime(settings) as rt:
            await ingest(rt, {"V102.GT1": 30.0})
            await rt.flush_journal()
            await proxy.go_down()
            await ingest(rt, {"V103.GT1": 30.0})
            await _until(lambda: rt.recorder.down, 20, "the writer to find the database away")
            assert (
                await rt.act("acknowledge", ref("V102.GT1:gas.H"), Actor("alice", "t1", "operator"))
            ).record == "queued"
            # disk refuses too: an action is refused, not applied without a record
            spool_path = rt.recorder.spool.path
            rt.recorder.spool.path = tmp_path / "not-a-file"
            rt.recorder.spool.path.mkdir()
            with pytest.raises(RecordNotPossible):
                await rt.act("acknowledge", ref("V103.GT1:gas.H"), Actor("alice", "t1", "operator"))
            assert rt.engine is not None and rt.engine.get(ref("V103.GT1:gas.H")).state is AlarmState.ACTIVE_UNACK
            rt.recorder.spool.path = spool_path
        await proxy.come_up()
        async with run_runtime(settings) as rt:
            assert rt.engine is not None
            assert rt.engine.get(ref("V102.GT1:gas.H")).state is AlarmState.ACTIVE_ACK
    finally:
        await proxy.stop()
    conn = await asyncpg.connect(pg_url)
    try:
        acks = await conn.fetch("SELECT alarm_id, \"user\" FROM alarm_journal WHERE action = 'acknowledge'")
        audit = await conn.fetch(
            "SELECT actor, token_id, role, target FROM audit_log WHERE action = 'alarm.acknowledge'"
        )
        activated = await conn.fetchval("SELECT count(*) FROM alarm_journal WHERE alarm_id = $1", ref("V103.GT1:gas.H"))
    finally:
        await conn.close()
    assert [(r["alarm_id"], r["user"]) for r in acks] == [(ref("V102.GT1:gas.H"), "alice")]
    assert [tuple(r) for r in audit] == [("alice", "t1", "operator", ref("V102.GT1:gas.H"))]
    assert activated == 1


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_disk_that_refuses_the_spool_loses_no_event(pg_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE, rules=RULES)
    async with run_runtime(settings) as rt:
        rt.recorder.spool.path = tmp_path / "not-a-file"
        rt.recorder.spool.path.mkdir()  # every append now fails with an OSError
        await ingest(rt, {"V101.GT1": 30.0})
        ack = await rt.act("acknowledge", ref("V101.GT1:gas.H"), Actor("alice", "t1", "operator"))
        assert ack.record == "journaled"  # the database took it: applied and recorded
        await rt.flush_journal()
        assert rt.recorder.spool_errors >= 2 and rt.recorder.pending == 0
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT action FROM alarm_journal WHERE alarm_id = $1 ORDER BY id", ref("V101.GT1:gas.H")
        )
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == ["activate", "acknowledge"]


def test_a_pending_file_that_cannot_be_read_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "pending.jsonl").mkdir()  # reading it fails as a whole (here: a directory)
    spool = AlarmSpool(tmp_path / "pending.jsonl")
    assert spool.load() == [] and spool.moved_aside == 1
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["pending.jsonl.unreadable"]
    spool.append([Pending([_gas_event()])])  # a fresh file takes the new events
    assert [i.events for i in AlarmSpool(spool.path).load()] == [[_gas_event()]]


async def test_a_spool_written_before_site_scoped_ids_is_journaled_under_the_new_ids(
    pg_url: str, tmp_path: Path
) -> None:
    """An upgrade with alarm events still on disk (the database was away at the last stop of the old
    version): they are journaled under the ids the engine now gives the alarms, in their site, as
    migration 080 renamed the rows already journaled, and the alarm is restored standing."""
    old = AlarmEvent(
        "V101.GT1:gas.H", "V101.GT1", "gas.H", Priority.HIGH, AlarmState.NORMAL, AlarmState.ACTIVE_UNACK,
        30.0, 25.0, now_us() - 60_000_000, None, None, "activate",
    )  # fmt: skip
    AlarmSpool(tmp_path / ALARM_SPOOL_FILE).append([Pending([old])])
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE, rules=RULES)
    async with run_runtime(settings) as rt:
        assert rt.engine is not None
        restored = rt.engine.get(ref("V101.GT1:gas.H"))
        assert restored.state is AlarmState.ACTIVE_UNACK and restored.tag_id == ref("V101.GT1")
    assert not (tmp_path / ALARM_SPOOL_FILE).exists()
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT alarm_id, site_id, tag_id, action FROM alarm_journal WHERE tag_id = 'V101.GT1'")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [(ref("V101.GT1:gas.H"), SITE_ID, "V101.GT1", "activate")]
