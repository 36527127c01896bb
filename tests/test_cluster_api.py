"""`hazmon serve --role api` (issue 14): API instances that read alarm state from the events stream.

Real NATS JetStream, real PostgreSQL, role processes as in tests/test_cluster.py: one engine shard and two
api instances. An alarm caused by readings published to the bus shows in both instances' alarm list and
on a WebSocket client of each; an acknowledge through instance 1 is journaled once, audited, and seen
acknowledged through instance 2 and on both WebSockets; refusals answer as one process does (409, 404);
an api instance killed and started again has lost nothing; with no shard up an action is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from api_helpers import free_port
from conftest import NATS_URL
from hazmon.auth import Role, create_token
from hazmon.cluster.bus import Bus
from hazmon.cluster.codec import encode_batch
from hazmon.reading import ReadingBatch, now_us
from hazmon.storage.registry import tag_index
from test_cluster import _until

ROOT = Path(__file__).resolve().parents[1]
SITE_FILE = ROOT / "sites" / "demo-tank-farm.yaml"
SITE = "demo-tank-farm"
RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]
PARTITIONS = 4
GAS = f"{SITE}/V103.GT1:gas.H"  # alarm ids name their site
GAS2 = f"{SITE}/V104.GT1:gas.H"


class ApiProcess:
    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.port = name, free_port()
        self.env = {**env, "HAZMON_API_HOST": "127.0.0.1", "HAZMON_API_PORT": str(self.port)}
        self.env["HAZMON_DATA_DIR"] = str(Path(env["HAZMON_DATA_DIR"]) / name)
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, token: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hazmon", "serve", "--role", "api",
            env=self.env, stdout=self.log.open("a"), stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

        async def up() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    r = await c.get(f"{self.base}/api/v1/alarms", headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError:
                return False
            return r.status_code == 200

        await _until(up, 60, f"api instance {self.name} to serve")


async def _spawn(role: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "serve", "--role", role,
        env=env, stdout=log.open("a"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process | None) -> int | None:
    if proc is None:
        return None
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -9
    return proc.returncode


class Live:
    """A WebSocket client of an api instance: the snapshot, then every event it is sent."""

    def __init__(self, ws: ClientConnection, snapshot: dict[str, Any]) -> None:
        self.ws, self.snapshot = ws, snapshot
        self.events: list[dict[str, Any]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, base: str, token: str) -> AsyncIterator[Live]:
        async with connect(base.replace("http", "ws", 1) + "/api/v1/live") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert snapshot["type"] == "snapshot"
            live = cls(ws, snapshot)
            reader = asyncio.create_task(live._read())
            try:
                yield live
            finally:
                reader.cancel()

    async def _read(self) -> None:
        async for text in self.ws:
            msg = json.loads(text)
            self.events += msg.get("events", [])

    def saw(self, alarm_id: str, state: str) -> bool:
        return any(e["alarm_id"] == alarm_id and e["state"] == state for e in self.events)


async def _alarms(api: ApiProcess, token: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(
            f"{api.base}/api/v1/alarms", params={"site": SITE}, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    return {a["alarm_id"]: a for a in r.json()}


async def _post(api: ApiProcess, token: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as c:
        return await c.post(f"{api.base}/api/v1/alarms/{path}", json=body, headers={"Authorization": f"Bearer {token}"})


async def test_api_instances_follow_the_stream_and_send_actions_to_the_owning_shard(
    pg_url: str,
    tmp_path: Path,
    namespace: str,
) -> None:
    env = {
        **os.environ,
        "HAZMON_DATABASE_URL": pg_url,
        "HAZMON_DATA_DIR": str(tmp_path / "data"),
        "HAZMON_SITE": str(SITE_FILE),
        "HAZMON_RULES": json.dumps([str(r) for r in RULES]),
        "HAZMON_NATS_URL": NATS_URL,
        "HAZMON_NATS_NAMESPACE": namespace,
        "HAZMON_PARTITIONS": str(PARTITIONS),
        "HAZMON_ENGINE_CLOCK": "false",  # readings from the test only: no stale-data alarms from the clock
        "HAZMON_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "roles.log"
    bus = await Bus.connect(NATS_URL, namespace)
    conn = await asyncpg.connect(pg_url)
    shard: asyncio.subprocess.Process | None = None
    apis = [ApiProcess(f"api-{i}", env, log) for i in (1, 2)]
    try:
        shard = await _spawn("engine", {**env, "HAZMON_SHARD": "0/1"}, log)

        async def registered() -> bool:  # the shard wrote the site (its tags have keys)
            try:
                return f"{SITE}/V104.GT1" in (await tag_index(conn))
            except asyncpg.UndefinedTableError:
                return False

        await _until(registered, 60, "the engine shard to register the site")
        token = (await create_token(conn, Role.OPERATOR, sites=[SITE], name="alice")).secret
        for api in apis:
            await api.start(token)
        async with httpx.AsyncClient(timeout=5) as c:
            health = (await c.get(f"{apis[0].base}/healthz")).json()
        assert health["status"] == "ok", health
        assert {"events-follower", "values-follower", "journal-writer"} <= set(health["components"])
        keys = await tag_index(conn)

        async def publish(values: dict[str, float]) -> None:
            tags = [keys.key(f"{SITE}/{t}") for t in values]
            batch = ReadingBatch.from_columns(tags, now_us(), list(values.values()))
            from hazmon.cluster.bus import partition_of

            subject = bus.subjects.readings(partition_of(SITE, PARTITIONS))
            await bus.publish(subject, encode_batch(batch), str(batch.batch_id))

        async with Live.open(apis[0].base, token) as live1, Live.open(apis[1].base, token) as live2:
            assert GAS not in {a["alarm_id"] for a in live1.snapshot["alarms"]}
            await publish({"V103.GT1": 30.0})  # over 25 %LEL: the first-level alarm, no on-delay

            async def raised_everywhere() -> bool:
                listed = [await _alarms(api, token) for api in apis]
                return all(GAS in a and a[GAS]["state"] == "active_unack" for a in listed) and all(
                    live.saw(GAS, "active_unack") for live in (live1, live2)
                )

            await _until(raised_everywhere, 30, f"{GAS} in both instances' lists and WebSockets")
            shown = (await _alarms(apis[1], token))[GAS]
            assert (shown["site"], shown["tag"], shown["condition"]) == (SITE, "V103.GT1", "gas.H")

            # the readings' values too (WebSocket values, "data arriving"), from the readings stream
            async def value_shown() -> bool:
                async with connect(apis[1].base.replace("http", "ws", 1) + "/api/v1/live") as ws:
                    await ws.send(json.dumps({"type": "auth", "token": token}))
                    await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "tags": ["V103.GT1"]}))
                    values = json.loads(await asyncio.wait_for(ws.recv(), 10))["values"]
                return [(v["site"], v["tag"], v["value"]) for v in values] == [(SITE, "V103.GT1", 30.0)]

            await _until(value_shown, 30, "V103.GT1's value in instance 2's WebSocket snapshot")

            r = await _post(apis[0], token, f"{GAS}/ack", {"comment": "field operator sent"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["alarm"]["state"] == "active_ack" and body["record"] == "journaled"
            assert [e["action"] for e in body["events"]] == ["acknowledge"]
            # instance 1 answers once it shows the action itself
            assert (await _alarms(apis[0], token))[GAS]["state"] == "active_ack"

            async def acked_everywhere() -> bool:
                return (await _alarms(apis[1], token))[GAS]["state"] == "active_ack" and all(
                    live.saw(GAS, "active_ack") for live in (live1, live2)
                )

            await _until(acked_everywhere, 30, "the acknowledge through instance 2 and both WebSockets")
            # the bare id names the one alarm of that id the token sees: already acknowledged
            again = await _post(apis[1], token, "V103.GT1:gas.H/ack")
            assert again.status_code == 409, again.text
            unknown = await _post(apis[1], token, f"{SITE}/V103.GT1:nothing.H/ack")
            assert unknown.status_code == 404, unknown.text

        journaled = await conn.fetch(
            "SELECT \"user\", comment FROM alarm_journal WHERE alarm_id = $1 AND action = 'acknowledge'", GAS
        )
        assert [(j["user"], j["comment"]) for j in journaled] == [("alice", "field operator sent")]
        audited = await conn.fetch("SELECT action, actor, site_id FROM audit_log WHERE target = $1 ORDER BY seq", GAS)
        assert [(a["action"], a["actor"], a["site_id"]) for a in audited] == [
            ("alarm.acknowledge", "alice", SITE),
            ("alarm.acknowledge.refused", "alice", SITE),
        ]

        # instance 1 killed; meanwhile another alarm; started again, it has both
        assert apis[0].proc is not None
        apis[0].proc.send_signal(signal.SIGKILL)
        await apis[0].proc.wait()
        await publish({"V104.GT1": 35.0})

        async def second_on_two() -> bool:
            return GAS2 in await _alarms(apis[1], token)

        await _until(second_on_two, 30, f"{GAS2} through instance 2")
        await apis[0].start(token)
        listed = await _alarms(apis[0], token)
        assert listed[GAS]["state"] == "active_ack" and listed[GAS2]["state"] == "active_unack"
        assert listed[GAS]["activated_at"] == (await _alarms(apis[1], token))[GAS]["activated_at"]
        async with Live.open(apis[0].base, token) as live:
            states = {a["alarm_id"]: a["state"] for a in live.snapshot["alarms"]}
            assert states[GAS] == "active_ack" and states[GAS2] == "active_unack"

        # no shard: an action is refused with 503 and changes nothing
        assert await _stop(shard) == 0, log.read_text()[-3000:]
        r = await _post(apis[0], token, f"{GAS2}/ack")
        assert r.status_code == 503, r.text
        assert (await _alarms(apis[1], token))[GAS2]["state"] == "active_unack"
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM alarm_journal WHERE alarm_id = $1 AND action = 'acknowledge'", GAS2
            )
            == 0
        )
    finally:
        codes = {api.name: await _stop(api.proc) for api in apis}
        await _stop(shard)
        await conn.close()
        await bus.close()
    assert all(c == 0 for c in codes.values()), f"{codes}\n{log.read_text()[-3000:]}"


async def test_the_mirror_sets_aside_what_is_not_an_alarm_event_counts_it_and_goes_on(
    pg_url: str,
    tmp_path: Path,
    namespace: str,
) -> None:
    """Whatever is on the events stream (a hub's raise has no previous state), the mirror applies the
    alarm events and counts the rest; nothing stops it. /metrics shows the count."""
    from hazmon.cluster.api import AlarmMirror, api_runtime
    from hazmon.config import load_settings

    settings = load_settings(
        database_url=pg_url, data_dir=tmp_path, site=SITE_FILE, rules=RULES, nats_namespace=namespace,
        partitions=PARTITIONS,
    )  # fmt: skip
    bus = await Bus.connect(NATS_URL, namespace)
    try:
        async with api_runtime(settings, bus) as rt:
            mirror = rt.engine
            assert isinstance(mirror, AlarmMirror)
            subject = bus.subjects.events(SITE)
            bad = [
                b"not json",
                b"[]",
                json.dumps({"alarm_id": GAS}).encode(),
                json.dumps({"alarm_id": GAS, "priority": "high", "state": "bogus", "ts_us": 1}).encode(),
                json.dumps({"alarm_id": 7, "priority": "high", "state": "normal", "ts_us": 1}).encode(),
            ]
            for i, payload in enumerate(bad):
                await bus.publish(subject, payload, f"bad-{i}")
            raise_ = {"alarm_id": GAS, "tag": "V103.GT1", "site": SITE, "condition": "gas.H", "priority": "high",
                      "action": "activate", "prev_state": None, "state": "active_unack", "value": 30.0,
                      "limit": 25.0, "ts_us": now_us(), "user": None}  # fmt: skip
            await bus.publish(subject, json.dumps(raise_).encode(), "good")

            async def applied() -> bool:
                return GAS in {s.alarm_id for s in mirror.current()}

            await _until(applied, 10, "the good event behind five bad ones")
            snap = mirror.get(GAS)
            assert snap.state == "active_unack" and snap.activated_us == raise_["ts_us"] and not snap.acked
            assert snap.tag_id == f"{SITE}/V103.GT1"  # the bus names the tag within its site
            assert mirror.stats["mirror_rejected"] == len(bad)
            assert mirror.get(GAS2).state == "normal"  # defined by the rules, no event yet
            with pytest.raises(KeyError):
                mirror.get(f"{SITE}/V104.GT1:nothing.H")
    finally:
        await bus.close()
