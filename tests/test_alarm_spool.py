"""Alarm events survive a database outage and a crash: kept on disk, replayed at the next start."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from api_helpers import ingest
from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority
from hazmon.alarms.pending import AlarmSpool
from hazmon.config import load_settings
from hazmon.runtime import ALARM_SPOOL_FILE, run_runtime
from tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "sites" / "demo-tank-farm.yaml"
RULES = sorted((ROOT / "alarm_rules").glob("*.yaml"))


def test_spool_round_trip_and_torn_line(tmp_path: Path) -> None:
    spool = AlarmSpool(tmp_path / "pending.jsonl")
    e = AlarmEvent(
        "V101.GT1:gas.H", "V101.GT1", "gas.H", Priority.HIGH, AlarmState.NORMAL, AlarmState.ACTIVE_UNACK,
        30.0, 25.0, 1_780_000_000_000_000, None, None, "activate",
    )  # fmt: skip
    ack = replace(
        e, prev_state=AlarmState.ACTIVE_UNACK, new_state=AlarmState.ACTIVE_ACK, action="acknowledge", user="op1"
    )
    spool.append([e])
    spool.append([ack])
    with spool.path.open("a") as f:
        f.write('{"alarm_id": "torn')  # a crash in the middle of a write
    assert spool.load() == [e, ack]
    spool.clear()
    assert spool.load() == []


async def test_alarm_raised_during_an_outage_reaches_the_journal_after_a_restart(pg_url: str, tmp_path: Path) -> None:
    u = urlsplit(pg_url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    url = urlunsplit(u._replace(netloc=f"{u.username}@127.0.0.1:{proxy.port}"))
    settings = load_settings(database_url=url, data_dir=tmp_path, site=SITE, rules=RULES)
    pending = tmp_path / ALARM_SPOOL_FILE
    try:
        async with run_runtime(settings) as rt:
            await proxy.go_down()
            await ingest(rt, {"V101.GT1": 30.0})  # a leak: gas.H activates while the database is down
            deadline = time.monotonic() + 20
            while not (pending.exists() and "V101.GT1:gas.H" in pending.read_text()):
                assert time.monotonic() < deadline, "the event never reached the disk spool"
                await asyncio.sleep(0.1)
            # the process ends here as if it crashed: the journal never got the event
        await proxy.come_up()
        async with run_runtime(settings) as rt:
            assert rt.engine is not None
            assert rt.engine.get("V101.GT1:gas.H").state is AlarmState.ACTIVE_UNACK  # restored, not forgotten
        assert not pending.exists()
    finally:
        await proxy.stop()
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT action FROM alarm_journal WHERE alarm_id = $1", "V101.GT1:gas.H")
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == ["activate"]
