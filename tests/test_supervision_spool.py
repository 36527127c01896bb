"""Losses in the running service are never unseen: the spool's disk failing for real, and readings the
database refuses, raise `hazmon.storage:comm.LOSS` for the operators of the site, show on /healthz,
/metrics and /api/v1/gateways, and clear once the trouble is over. Real PostgreSQL; the disk failure is
a directory where the spool's cursor file goes (tests run as root, who ignores chmod)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import numpy as np

from api_helpers import RULES, SITE, SITE_FILE, demo_api, ingest, ref
from hazmon.alarms.alarm import AlarmState
from hazmon.api import create_app
from hazmon.backoff import BackoffConfig
from hazmon.config import load_settings
from hazmon.reading import ReadingBatch, now_us
from hazmon.runtime import Runtime, run_runtime
from hazmon.supervisor import Supervisor

STORAGE_ALARM = "hazmon.storage:comm.LOSS"
FORWARDER_ALARM = "hazmon.forwarder:comm.LOSS"


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def state(rt: Runtime, alarm_id: str) -> AlarmState:
    assert rt.engine is not None
    return rt.engine.get(alarm_id).state


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def alarm_ids(c: httpx.AsyncClient, token: str) -> set[str]:
    return {a["alarm_id"] for a in (await c.get("/api/v1/alarms", headers=h(token))).json()}


async def metric(c: httpx.AsyncClient, token: str, start: str) -> float | None:
    for line in (await c.get("/metrics", headers=h(token))).text.splitlines():
        if line.startswith(start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def stored_count(url: str, where: str = "") -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM readings {where}"))
    finally:
        await conn.close()


async def test_a_failing_spool_disk_is_alarmed_to_the_sites_operators_and_clears(pg_url: str, tmp_path: Path) -> None:
    async with demo_api(pg_url, tmp_path) as (rt, tokens, c):
        assert rt.forwarder is not None
        rt.data_loss_hold_us = 1_000_000
        cursor = tmp_path / "spool" / "cursor"
        cursor.unlink(missing_ok=True)
        cursor.mkdir()  # the spool can no longer record its progress
        await ingest(rt, {"T201.LT": 41.0, "T201.PT": 0.3})
        await until(lambda: state(rt, STORAGE_ALARM) is AlarmState.ACTIVE_UNACK, 20, "the storage alarm")
        assert await rt.forwarder.flush(10)
        assert await stored_count(pg_url) == 2  # delivery went on all the same

        assert STORAGE_ALARM in await alarm_ids(c, tokens.operator)  # scoped to the demo site: sees it
        assert STORAGE_ALARM not in await alarm_ids(c, tokens.operator_other)  # another site's operator
        one = (await c.get(f"/api/v1/alarms/{STORAGE_ALARM}", headers=h(tokens.operator))).json()
        assert one["site"] == SITE and one["state"] == "active_unack"
        assert (await c.get(f"/api/v1/alarms/{STORAGE_ALARM}", headers=h(tokens.operator_other))).status_code == 403
        health = await c.get("/healthz")
        assert health.status_code == 200  # degraded, not down: readings still reach the database
        fwd = health.json()["components"]["forwarder"]
        assert fwd["status"] == "degraded" and "disk spool errors" in fwd["detail"], fwd
        errors = await metric(c, tokens.engineer, "hazmon_spool_errors_total")
        assert errors is not None and errors >= 1

        cursor.rmdir()  # the disk is repaired
        await ingest(rt, {"T201.LT": 41.5})
        assert await rt.forwarder.flush(10)
        await until(lambda: state(rt, STORAGE_ALARM) is AlarmState.RTN_UNACK, 20, "the storage alarm to clear")
        assert (await c.get("/healthz")).json()["components"]["forwarder"]["status"] == "ok"
        assert cursor.is_file()


async def test_readings_the_database_refuses_are_counted_per_gateway_and_alarmed(pg_url: str, tmp_path: Path) -> None:
    """A Modbus reading with a time PostgreSQL refuses: that reading is set aside, the others of the
    batch are stored, and the loss shows on /api/v1/gateways (per gateway), /metrics and as an alarm."""
    async with demo_api(pg_url, tmp_path, with_modbus=True) as (rt, tokens, c):
        assert rt.forwarder is not None
        keys = np.array([rt.tags.key(ref(t)) for t in ("T201.LT", "T201.TT", "T201.PT")], dtype=np.int32)
        ts = np.full(3, now_us(), dtype=np.int64)
        ts[1] = -(1 << 62)  # before 4713 BC: out of PostgreSQL's range
        await rt.ingest(ReadingBatch.from_columns(keys, ts, np.array([41.0, 12.0, 0.3])))
        await until(lambda: rt.forwarder is not None and rt.forwarder.stats().rejected_readings == 1, 30, "refusal")
        await until(lambda: state(rt, STORAGE_ALARM) is AlarmState.ACTIVE_UNACK, 10, "the storage alarm")
        # what was decoded and accepted is kept (the gateway's own comm-loss readings aside)
        assert await stored_count(pg_url, "WHERE value IN (41.0, 0.3)") == 2

        gw = (await c.get("/api/v1/gateways", headers=h(tokens.operator))).json()[0]
        assert gw["id"] == "demo-modbus" and gw["storage_dropped_readings"]["refused_by_store"] == 1
        refused = await metric(c, tokens.engineer, 'hazmon_storage_dropped_readings_total{reason="refused_by_store"}')
        assert refused == 1.0
        assert STORAGE_ALARM in await alarm_ids(c, tokens.operator)
        assert list((tmp_path / "spool" / "rejected").glob("*.rec"))  # kept for a look, not gone


async def test_an_alarm_standing_from_before_a_restart_clears_when_all_is_well(pg_url: str, tmp_path: Path) -> None:
    """The system alarm raised in one run is restored at the next start: it must clear then (it used to
    stay active for ever, since the runtime assumed every system owner started healthy)."""
    async with demo_api(pg_url, tmp_path) as (rt, _tokens, _c):
        await _raise_storage_alarm(rt, tmp_path)
    async with demo_api(pg_url, tmp_path) as (rt2, _tokens2, _c2):
        assert state(rt2, STORAGE_ALARM) is AlarmState.ACTIVE_UNACK  # restored
        await until(lambda: state(rt2, STORAGE_ALARM) is AlarmState.RTN_UNACK, 20, "the restored alarm to clear")


async def _raise_storage_alarm(rt: Runtime, data_dir: Path) -> None:
    cursor = data_dir / "spool" / "cursor"
    cursor.unlink(missing_ok=True)
    cursor.mkdir()
    await ingest(rt, {"T201.LT": 40.0})
    await until(lambda: state(rt, STORAGE_ALARM) is AlarmState.ACTIVE_UNACK, 20, "the storage alarm")
    await rt.flush_journal()
    cursor.rmdir()


async def test_a_drain_stopped_by_the_disk_is_restarted_alarmed_and_recovers(pg_url: str, tmp_path: Path) -> None:
    """Refused readings that cannot be set aside (a file where spool/rejected/ goes): the drain keeps
    them in the spool and fails; the supervisor restarts it under `hazmon.forwarder:comm.LOSS`, /healthz
    answers 503 while it is down; once the disk is fixed they are set aside and everything else stored."""
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE_FILE, rules=RULES)
    sup = Supervisor(restart=BackoffConfig(initial_s=2.0, max_s=2.0, jitter=0.0), stable_s=1.0)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "rejected").write_text("a file where the directory goes")
    async with run_runtime(settings, supervisor=sup) as rt:
        assert rt.forwarder is not None
        rt.forwarder.retry = BackoffConfig(initial_s=0.05, max_s=0.1)
        app = create_app(runtime=rt)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as c:
            keys = np.array([rt.tags.key(ref("T201.LT")), rt.tags.key(ref("T201.TT"))], dtype=np.int32)
            ts = np.array([now_us(), -(1 << 62)], dtype=np.int64)
            await rt.ingest(ReadingBatch.from_columns(keys, ts, np.array([41.0, 12.0])))
            await ingest(rt, {"T201.PT": 0.3})
            await until(lambda: state(rt, FORWARDER_ALARM) is AlarmState.ACTIVE_UNACK, 20, "the forwarder's alarm")

            async def down() -> bool:
                r = await c.get("/healthz")
                return r.status_code == 503 and r.json()["components"]["forwarder"]["status"] == "down"

            deadline = time.monotonic() + 20
            while not await down():
                assert time.monotonic() < deadline, "timed out waiting for /healthz 503"
                await asyncio.sleep(0.05)
            assert rt.forwarder.stats().pending_batches >= 1  # kept, not dropped
            # what the database takes is stored meanwhile (written again at each restart: stored once)
            assert await stored_count(pg_url, "WHERE value IN (41.0, 0.3)") == 2

            (tmp_path / "spool" / "rejected").unlink()  # the disk is fixed
            await until(lambda: state(rt, FORWARDER_ALARM) is AlarmState.RTN_UNACK, 30, "the drain to recover")
            assert await rt.forwarder.flush(10)
            assert await stored_count(pg_url, "WHERE value IN (41.0, 0.3)") == 2
            st = rt.forwarder.stats()
            assert st.rejected_readings == 1 and st.pending_batches == 0
            assert (await c.get("/healthz")).status_code == 200
            assert state(rt, STORAGE_ALARM) is AlarmState.ACTIVE_UNACK  # the refused reading is a loss
