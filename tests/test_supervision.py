"""Supervision: a long-running task that ends is restarted, raises its `hazmon.<component>` alarm until
it runs again, is counted on /metrics, and turns /healthz to 503 while it is down.

Against the real plant: the demo Modbus PLCs served by the simulator (pymodbus), real PostgreSQL.
The gateway that crashes is the real Modbus gateway with a bug planted in its first run; the
forwarder's drain fails through its store seam (the writer raises what a bug would raise), with the
database itself up. A forwarder whose spool disk fails for real is in tests/test_supervision_spool.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
from websockets.asyncio.client import connect

from api_helpers import Tokens, make_tokens, serve
from hazmon.alarms.alarm import AlarmState
from hazmon.api import create_app
from hazmon.backoff import BackoffConfig
from hazmon.config import load_settings
from hazmon.gateways import Gateway
from hazmon.gateways.config import ModbusGateway, load_gateway_config
from hazmon.gateways.modbus import ModbusGatewayImpl
from hazmon.gateways.quarantine import Quarantine
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex
from hazmon.reading import ReadingBatch
from hazmon.runtime import Runtime, run_runtime
from hazmon.sim import parse_scenario
from hazmon.sim import serve as serve_plant
from hazmon.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
SITE_FILE = ROOT / "sites" / "demo-tank-farm.yaml"
RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]
SITE = "demo-tank-farm"
GATEWAY_ALARM = "hazmon.gateway.demo-modbus:comm.LOSS"
FORWARDER_ALARM = "hazmon.forwarder:comm.LOSS"


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def until_async(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def state(rt: Runtime, alarm_id: str) -> AlarmState:
    assert rt.engine is not None
    return rt.engine.get(alarm_id).state


class CrashingModbus(ModbusGatewayImpl):
    """The real Modbus gateway; its first run polls for a while, then hits a planted bug."""

    budget = 1  # crashes left (shared by every instance the runtime opens)

    async def _run(self) -> None:
        if CrashingModbus.budget > 0:
            CrashingModbus.budget -= 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.5):
                    await super()._run()
            raise IndexError("planted decoder bug: index 7 is out of bounds")
        await super()._run()


def crashing_modbus(config: object, tags: TagIndex, *, data_dir: Path | None) -> Gateway:
    """A gateway factory, as open_gateway: the Modbus gateway with the planted bug."""
    assert isinstance(config, ModbusGateway) and data_dir is not None
    return CrashingModbus(config, tags, Quarantine(config.id, data_dir / "quarantine"))


async def metric(client: httpx.AsyncClient, token: str, line_start: str) -> float | None:
    text = (await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def journal_actions(url: str, alarm_id: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT action, site_id FROM alarm_journal WHERE alarm_id = $1 ORDER BY id", alarm_id)
    finally:
        await conn.close()
    assert {r["site_id"] for r in rows} <= {SITE}  # journaled under the site it affects
    return [r["action"] for r in rows]


async def test_a_crashed_gateway_is_restarted_alarmed_counted_and_seen_by_its_operators(
    pg_url: str, tmp_path: Path
) -> None:
    site = load_site(SITE_FILE)
    scenario = parse_scenario(
        {"name": "steady", "site": SITE, "start": "2026-07-15T09:00:00+08:00", "duration_s": 600}, site=site
    )
    config = load_gateway_config(ROOT / "gateways" / "demo-modbus.yaml", site)
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE_FILE, rules=RULES)
    CrashingModbus.budget = 1
    sup = Supervisor(restart=BackoffConfig(initial_s=2.0, max_s=4.0, jitter=0.0), stable_s=1.5)
    async with serve_plant(site, [config], scenario, modbus_port=0) as sim:
        gw_config = sim.config("demo-modbus")
        assert isinstance(gw_config, ModbusGateway)
        gw_config = gw_config.model_copy(update={"poll_groups": {"default": 200.0, "slow": 1000.0}})
        async with run_runtime(
            settings, gateway_configs=[gw_config], supervisor=sup, gateway_factory=crashing_modbus
        ) as rt:
            tokens = await make_tokens(rt)
            app = create_app(runtime=rt)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as client:
                assert (await client.get("/healthz")).status_code == 200
                await until(lambda: rt.stats.readings > 0, 20, "readings from the PLCs")
                # the planted bug ends the gateway's run: the supervisor sees its stream end
                await until(
                    lambda: state(rt, GATEWAY_ALARM) is AlarmState.ACTIVE_UNACK, 20, "the gateway's supervision alarm"
                )
                down = await client.get("/healthz")
                assert down.status_code == 503
                part = down.json()["components"]["gateway.demo-modbus"]
                assert part["status"] == "down" and "planted decoder bug" in part["detail"], part
                assert down.json()["components"]["journal-writer"]["status"] == "ok"

                # the operator of the site sees it in the API, and so would the console
                alice = {"Authorization": f"Bearer {tokens.operator}"}
                listed = (await client.get("/api/v1/alarms", headers=alice)).json()
                mine = [a for a in listed if a["alarm_id"] == GATEWAY_ALARM]
                assert mine and mine[0]["site"] == SITE, listed
                bob = {"Authorization": f"Bearer {tokens.operator_other}"}
                assert GATEWAY_ALARM not in {
                    a["alarm_id"] for a in (await client.get("/api/v1/alarms", headers=bob)).json()
                }

                # restarted: a new gateway polls again, the alarm clears once it has run stably
                before = rt.stats.readings
                await until(lambda: state(rt, GATEWAY_ALARM) is AlarmState.RTN_UNACK, 30, "the alarm to clear")
                await until(lambda: rt.stats.readings > before, 10, "readings after the restart")
                ok = await client.get("/healthz")
                assert ok.status_code == 200, ok.json()
                assert ok.json()["components"]["gateway.demo-modbus"]["restarts"] == 1
                sup_gw = (await client.get("/api/v1/gateways", headers=alice)).json()[0]["supervision"]
                assert sup_gw["restarts"] == 1 and sup_gw["state"] == "running"
                assert "planted decoder bug" in sup_gw["last_error"]
                assert (
                    await metric(
                        client, tokens.engineer, 'hazmon_component_restarts_total{component="gateway.demo-modbus"}'
                    )
                    == 1.0
                )
                assert (
                    await metric(
                        client, tokens.engineer, 'hazmon_component_failures_total{component="gateway.demo-modbus"}'
                    )
                    == 1.0
                )
                assert (
                    await metric(client, tokens.engineer, 'hazmon_component_up{component="gateway.demo-modbus"}') == 1.0
                )
                # an operator of the site acknowledges it: it is theirs to act on
                r = await client.post(f"/api/v1/alarms/{GATEWAY_ALARM}/ack", headers=alice, json={"comment": "seen"})
                assert r.status_code == 200, r.text
            await rt.flush_journal()
    assert await journal_actions(pg_url, GATEWAY_ALARM) == ["activate", "clear", "acknowledge"]


class FailingWrites:
    """The forwarder's store seam: the first ``n`` writes raise what a bug in the write path would."""

    def __init__(self, inner: object, n: int) -> None:
        self.inner = inner
        self.n = n

    async def write(self, batch: ReadingBatch) -> int:
        if self.n > 0:
            self.n -= 1
            raise RuntimeError("planted bug in the write path")
        n: int = await self.inner.write(batch)  # type: ignore[attr-defined]
        return n


async def test_a_failed_forwarder_drain_is_restarted_and_its_alarm_reaches_the_site_websocket(
    pg_url: str, tmp_path: Path
) -> None:
    """The drain dies (before supervision, readings then piled up in the spool while /healthz said ok):
    it is restarted, resumes from the oldest unacknowledged batch, and nothing is lost or doubled."""
    from api_helpers import ingest

    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE_FILE, rules=RULES)
    sup = Supervisor(restart=BackoffConfig(initial_s=2.0, max_s=4.0, jitter=0.0), stable_s=1.0)
    async with run_runtime(settings, supervisor=sup) as rt:
        tokens: Tokens = await make_tokens(rt)
        assert rt.forwarder is not None
        app = create_app(runtime=rt)
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as client,
            serve(rt) as base,
            connect(f"ws://{base}/api/v1/live?token={tokens.operator}") as ws,
        ):
            await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
            snapshot = json.loads(await ws.recv())
            assert snapshot["type"] == "snapshot"
            rt.forwarder.store = FailingWrites(rt.forwarder.store, 1)
            await ingest(rt, {"T201.LT": 41.0, "T201.PT": 0.3})
            await until(lambda: state(rt, FORWARDER_ALARM) is AlarmState.ACTIVE_UNACK, 20, "the forwarder's alarm")
            h = await client.get("/healthz")
            assert h.status_code == 503 and h.json()["components"]["forwarder"]["status"] == "down", h.json()
            assert "planted bug in the write path" in h.json()["components"]["forwarder"]["detail"]

            # the operator's WebSocket, subscribed to the site, gets the system alarm
            events = await _ws_events(ws, FORWARDER_ALARM, "ACTIVE_UNACK", 10)
            assert events[-1]["site"] == SITE  # the one site this runtime serves
            # a new subscription's snapshot carries it too
            async with connect(f"ws://{base}/api/v1/live?token={tokens.operator}") as ws2:
                await ws2.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
                snap = json.loads(await ws2.recv())
                assert FORWARDER_ALARM in {a["alarm_id"] for a in snap["alarms"]}
            # and the operator of another site does not
            async with connect(f"ws://{base}/api/v1/live?token={tokens.operator_other}") as ws3:
                await ws3.send(json.dumps({"type": "subscribe", "alarms_only": True}))
                snap = json.loads(await ws3.recv())
                assert FORWARDER_ALARM not in {a["alarm_id"] for a in snap["alarms"]}

            await until(lambda: state(rt, FORWARDER_ALARM) is AlarmState.RTN_UNACK, 30, "the drain to recover")
            await _ws_events(ws, FORWARDER_ALARM, "RTN_UNACK", 10)
            assert await rt.forwarder.flush(10)
            assert (await client.get("/healthz")).status_code == 200
            st = rt.forwarder.stats()
            assert st.dropped_readings == 0 and st.pending_batches == 0
            assert (
                await metric(client, tokens.engineer, 'hazmon_component_restarts_total{component="forwarder"}') == 1.0
            )
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 2  # stored once, after the restart
    finally:
        await conn.close()


async def _ws_events(ws: object, alarm_id: str, new_state: str, timeout: float) -> list[dict[str, object]]:
    """Events of ``alarm_id`` received until one goes to ``new_state``."""
    seen: list[dict[str, object]] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())  # type: ignore[attr-defined]
            for e in msg.get("events", []):
                if e["alarm_id"] == alarm_id:
                    seen.append(e)
                    if e["state"] == new_state.lower():
                        return seen


async def test_a_failure_of_the_hot_path_is_counted_and_the_same_gateway_pumped_again(
    pg_url: str, tmp_path: Path
) -> None:
    """A bug after the gateway (here planted in the live hub) fails one batch: counted, alarmed, the pump
    restarted on the same gateway — still connected, its buffered readings kept — not a new one."""
    site = load_site(SITE_FILE)
    scenario = parse_scenario(
        {"name": "steady", "site": SITE, "start": "2026-07-15T09:00:00+08:00", "duration_s": 600}, site=site
    )
    config = load_gateway_config(ROOT / "gateways" / "demo-modbus.yaml", site)
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE_FILE, rules=RULES)
    sup = Supervisor(restart=BackoffConfig(initial_s=0.5, max_s=1.0, jitter=0.0), stable_s=1.0)
    async with serve_plant(site, [config], scenario, modbus_port=0) as sim:
        gw_config = sim.config("demo-modbus")
        assert isinstance(gw_config, ModbusGateway)
        gw_config = gw_config.model_copy(update={"poll_groups": {"default": 200.0, "slow": 1000.0}})
        async with run_runtime(settings, gateway_configs=[gw_config], supervisor=sup) as rt:
            await until(lambda: rt.stats.readings > 0, 20, "readings from the PLCs")
            gw = rt.gateways[0]
            publish = rt.hub.publish_values
            planted = {"left": 1}

            def buggy(batch: ReadingBatch, tags: object = None) -> None:
                if planted["left"]:
                    planted["left"] -= 1
                    raise ZeroDivisionError("planted bug after the gateway")
                publish(batch, tags)  # type: ignore[arg-type]

            rt.hub.publish_values = buggy  # type: ignore[method-assign]
            await until(lambda: state(rt, GATEWAY_ALARM) is AlarmState.ACTIVE_UNACK, 20, "the pump's alarm")
            assert rt.stats.ingest_failures == 1 and rt.stats.ingest_failed_readings > 0
            await until(lambda: state(rt, GATEWAY_ALARM) is AlarmState.RTN_UNACK, 20, "the pump to recover")
            before = rt.stats.readings
            await until(lambda: rt.stats.readings > before, 10, "readings again")
            assert rt.gateways[0] is gw and gw.health().connected  # the same gateway, never stopped
            c = rt.supervisor.get("gateway.demo-modbus")
            assert (
                c is not None and c.restarts == 1 and c.last_error == "ZeroDivisionError: planted bug after the gateway"
            )
