"""The uplink end to end: hazmon on the demo site sends to a real receiver process on loopback
(`python -m hazmon.hub receive`) that checks, decrypts and counts. Through a 30 s receiver outage and a
restart of hazmon in the middle of it, every message hazmon queued is received exactly once and in
order; the backlog raises `hazmon.uplink:comm.LOSS` while it ages and clears it once delivered."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_helpers import RULES, SITE, SITE_FILE, free_port, ingest, ref
from hazmon.api.exposition import render
from hazmon.config import load_settings
from hazmon.hub.receiver import UPLINK_PATH
from hazmon.plant.site import load_site
from hazmon.runtime import Runtime, run_runtime

KEY = "0123456789abcdeffedcba9876543210"
IV = "00112233445566778899aabbccddeeff"
SECRET = "issued-by-the-authority"
APP = "hz-320500-0001"
OUTAGE_S = 30.0
UPLINK_ALARM = "hazmon.uplink:comm.LOSS"
USCC = load_site(SITE_FILE).enterprise.uscc


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextmanager
def receiver_process(port: int, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "HAZMON_HUB_APP_SECRET": SECRET, "HAZMON_HUB_SM4_KEY": KEY, "HAZMON_HUB_SM4_IV": IV}
    cmd = [sys.executable, "-m", "hazmon.hub", "receive", "--port", str(port), "--app-id", APP, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"receiver exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("receiver did not start")
            time.sleep(0.1)
        yield proc
    finally:
        proc.kill()  # an outage is abrupt
        proc.wait(timeout=10)


def receiver_stats(port: int) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
    return stats


def alarm_active(rt: Runtime, alarm_id: str) -> bool:
    assert rt.engine is not None
    return bool(rt.engine.get(alarm_id).active)


@pytest.mark.slow
async def test_sent_equals_received_through_an_outage_and_a_restart(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "hub-received.jsonl"
    settings = load_settings(
        database_url=pg_url,
        data_dir=tmp_path / "hazmon",
        site=SITE_FILE,
        rules=RULES,
        uplink={
            "endpoint": f"http://127.0.0.1:{port}{UPLINK_PATH}",
            "app_id": APP,
            "app_secret": SECRET,
            "sm4_key": KEY,
            "sm4_iv": IV,
            "interval_s": 1.0,  # 10 s by default; 1 s gives the outage some thirty realtime messages
            "heartbeat_s": 2.0,
            "backlog_alarm_s": 5.0,
        },
    )
    gas = "V101.GT1"

    with receiver_process(port, out):
        async with run_runtime(settings) as rt:
            assert rt.uplink is not None
            await ingest(rt, {gas: 1.0, "T201.LT": 5.0})
            await wait_for(lambda: receiver_stats(port)["by_type"].get("realtime", 0) >= 2, 20, "realtime data")
            assert receiver_stats(port)["by_type"]["base"] == 1
            # the outage starts: the receiver is killed
            stop = receiver_stats(port)
    outage_start = time.monotonic()
    assert stop["received"] >= 3

    # hazmon keeps queueing: values, and an alarm raised during the outage
    async with run_runtime(settings) as rt:
        uplink = rt.uplink
        assert uplink is not None
        await ingest(rt, {gas: 62.0})
        await wait_for(lambda: uplink.stats.enqueued["alarm"] >= 1, 10, "the alarm to be queued at once")
        await wait_for(lambda: alarm_active(rt, UPLINK_ALARM), 20, "the backlog alarm")
        metrics = render(rt).decode()
        backlog = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("hazmon_uplink_backlog_messages")
        )
        assert backlog >= 5
        await asyncio.sleep(0)  # hazmon restarts in the middle of the outage
    async with run_runtime(settings) as rt:
        uplink = rt.uplink
        assert uplink is not None
        assert alarm_active(rt, UPLINK_ALARM)  # the backlog is still there, and still old
        await ingest(rt, {gas: 0.0})  # the leak is over; the latched gas alarms are reset: a clear, also queued
        await rt.flush_journal()
        for condition in ("gas.HH", "gas.H"):
            await rt.operate("reset", ref(f"{gas}:{condition}"), "alice", comment="area checked, detector reads 0")
        await wait_for(lambda: uplink.stats.enqueued["alarm"] >= 1, 10, "the clear to be queued")
        await wait_for(lambda: time.monotonic() - outage_start >= OUTAGE_S, OUTAGE_S + 5, "the outage to last")
        with receiver_process(port, out):  # the receiver is back, with what it had kept
            await wait_for(lambda: uplink.queue.backlog == 0, 60, "the backlog to drain")
            await wait_for(lambda: not alarm_active(rt, UPLINK_ALARM), 10, "the backlog alarm to clear")
            # realtime messages go on every second: wait for a moment when none is in flight (the
            # synchronous stats call holds hazmon's event loop, so the queue cannot move under it)
            await wait_for(
                lambda: uplink.queue.backlog == 0 and receiver_stats(port)["received"] == uplink.queue.last_seq,
                10,
                "the receiver to hold every message hazmon queued",
            )
            sent = uplink.queue.last_seq
            stats = receiver_stats(port)
            assert stats["received"] >= sent, (stats, sent)
            assert stats["out_of_order"] == 0 and stats["refused"] == {}
            await wait_for(lambda: receiver_stats(port)["by_type"].get("heartbeat", 0) >= 2, 10, "heartbeats")
            assert sum(uplink.stats.rejected.values()) == 0 and uplink.queue.dropped == {}
            assert stats["enterprises"] == [USCC]

    messages = [json.loads(line) for line in out.open(encoding="utf-8")]
    data = [m for m in messages if m["type"] != "heartbeat"]
    last = max(m["seq"] for m in data)  # messages queued after `sent` may have reached it too
    assert last >= sent
    assert sorted(m["seq"] for m in data) == list(range(1, last + 1))  # every one, once
    assert len({m["msg_id"] for m in data}) == last
    assert sum(m["type"] == "base" for m in data) == 3  # one per start
    events = [e for m in data if m["type"] == "alarm" for e in m["data"]["events"]]
    raised = [e for e in events if e["tag_code"] == gas and e["kind"] == "raise"]
    cleared = [e for e in events if e["tag_code"] == gas and e["kind"] == "clear"]
    assert raised and cleared and raised[0]["installation_code"] and raised[0]["priority"]
    # the message names the site; its alarms are named within it, as the platform knows the tag codes
    assert all(m["data"]["site_code"] == SITE for m in data if m["type"] == "alarm")
    assert all(e["alarm_id"] == f"{gas}:{e['condition']}" for e in raised), raised
    assert {e["alarm_id"] for e in raised} >= {f"{gas}:gas.H", f"{gas}:gas.HH"}
    base = next(m for m in data if m["type"] == "base")["data"]
    assert base["enterprise"]["code"] == USCC and base["installations"][0]["level"] in (1, 2, 3, 4)
    assert base["site"]["code"] == SITE and {t["code"] for t in base["tags"]} >= {gas}
    realtime = [m for m in data if m["type"] == "realtime"]
    assert len(realtime) >= OUTAGE_S * 0.5  # the values of the outage reached the platform afterwards
    assert any(v["tag_code"] == gas and v["value"] == 62.0 for m in realtime for v in m["data"]["values"])
