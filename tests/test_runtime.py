"""The wired runtime against the simulated plant: readings become alarms, journaled; a silent PLC is
one communication-loss alarm instead of a flood of stale alarms, and it clears when the PLC is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from hazmon.alarms.alarm import AlarmState
from hazmon.config import load_settings
from hazmon.gateways.config import ModbusGateway, load_gateway_config, tag_ids
from hazmon.plant.site import load_site
from hazmon.runtime import Runtime, run_runtime
from hazmon.sim import parse_scenario, serve

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "sites" / "demo-tank-farm.yaml"
SITE_ID = "demo-tank-farm"
RULES = [ROOT / "alarm_rules" / n for n in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def states(rt: Runtime) -> dict[str, AlarmState]:
    assert rt.engine is not None
    return {a.alarm_id: a.state for a in rt.engine.current()}


async def test_silent_plc_is_one_alarm_and_clears(pg_url: str, tmp_path: Path) -> None:
    site = load_site(SITE)
    scenario = parse_scenario(
        {
            "name": "silent-plc",
            "site": "demo-tank-farm",
            "start": "2026-07-15T09:00:00+08:00",
            "duration_s": 600,
            "events": [{"type": "comm_loss", "at_s": 3, "duration_s": 12, "target": "modbus/PLC-NH3"}],
        },
        site=site,
    )
    config = load_gateway_config(ROOT / "gateways" / "demo-modbus.yaml", site)
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE, rules=RULES)
    async with serve(site, [config], scenario, modbus_port=0) as sim:
        gw = sim.config("demo-modbus")
        assert isinstance(gw, ModbusGateway)
        gw = gw.model_copy(update={"poll_groups": {"default": 200.0, "slow": 1000.0}, "stale_after_s": 2.0})
        async with run_runtime(settings, gateway_configs=[gw]) as rt:
            loss = f"{SITE_ID}/demo-modbus.PLC-NH3:comm.LOSS"
            await until(lambda: states(rt).get(loss) == AlarmState.ACTIVE_UNACK, 20, "the comm-loss alarm")
            current = states(rt)
            # first-out: the PLC's tags are suppressed, not a flood of stale alarms
            assert not any(
                a.startswith(f"{SITE_ID}/T201.") and s == AlarmState.ACTIVE_UNACK for a, s in current.items()
            )
            assert not any(
                a.startswith(f"{SITE_ID}/demo-modbus.PLC-MEOH") for a in current
            )  # the other PLC still answers
            await until(lambda: states(rt).get(loss) == AlarmState.RTN_UNACK, 30, "communication restored")
            await rt.operate("acknowledge", loss, "op1", comment="PLC power supply replaced")
            assert loss not in states(rt)
            await rt.flush_journal()
    conn = await asyncpg.connect(pg_url)
    try:
        actions = [
            r["action"]
            for r in await conn.fetch("SELECT action FROM alarm_journal WHERE alarm_id = $1 ORDER BY id", loss)
        ]
        stored = await conn.fetchval("SELECT count(*) FROM readings")
    finally:
        await conn.close()
    assert actions == ["activate", "clear", "acknowledge"]
    assert stored > 0


async def test_quiet_tags_of_a_live_opcua_subscription_are_not_stale(pg_url: str, tmp_path: Path) -> None:
    """Discrete states (in service, SIS trip, valve open) rarely change; an OPC UA subscription then
    sends nothing. While the server is alive those tags must not raise stale alarms."""
    site = load_site(SITE)
    scenario = parse_scenario(
        {"name": "quiet", "site": "demo-tank-farm", "start": "2026-07-15T09:00:00+08:00", "duration_s": 600},
        site=site,
    )
    rules = tmp_path / "stale.yaml"
    rules.write_text("rules:\n- select: {}\n  quality:\n    stale: {after_s: 2}\n")
    config = load_gateway_config(ROOT / "gateways" / "demo-opcua.yaml", site)
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE, rules=[rules])
    async with (
        serve(site, [config], scenario, opcua_port=0) as sim,
        run_runtime(settings, gateway_configs=[sim.config("demo-opcua")]) as rt,
    ):
        assert rt.engine is not None
        await until(lambda: rt.stats.readings > 0, 20, "the first readings")
        start = time.monotonic()
        await until(lambda: time.monotonic() - start > 6, 10, "three stale periods")
        served = {f"{SITE_ID}/{t}" for t in tag_ids(config)}
        stale = [a for a, s in states(rt).items() if a.endswith(":quality.STALE") and a.split(":")[0] in served]
        assert stale == []
        # the Modbus and MQTT tags of the site have no gateway here: they do go stale
        assert states(rt).get(f"{SITE_ID}/T201.LT:quality.STALE") == AlarmState.ACTIVE_UNACK


async def test_silent_gas_detection_gateway_is_one_alarm(pg_url: str, tmp_path: Path) -> None:
    """A gas detection gateway behind the MQTT broker stops publishing: one communication-loss alarm
    for that device; the broker and the other devices stay healthy."""
    from gateway_helpers import Mosquitto

    site = load_site(SITE)
    scenario = parse_scenario(
        {
            "name": "silent-gds",
            "site": "demo-tank-farm",
            "start": "2026-07-15T09:00:00+08:00",
            "duration_s": 600,
            "events": [{"type": "comm_loss", "at_s": 3, "duration_s": 10, "target": "mqtt/gds-hi02"}],
        },
        site=site,
    )
    broker = Mosquitto(tmp_path / "mosquitto")
    await broker.start()
    try:
        config = load_gateway_config(ROOT / "gateways" / "demo-mqtt.yaml", site)
        settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=SITE, rules=RULES)
        async with serve(site, [config], scenario, mqtt_port=broker.port) as sim:
            gw = sim.config("demo-mqtt").model_copy(update={"stale_after_s": 2.0})
            async with run_runtime(settings, gateway_configs=[gw]) as rt:
                loss = f"{SITE_ID}/demo-mqtt.gds-hi02:comm.LOSS"
                await until(lambda: states(rt).get(loss) == AlarmState.ACTIVE_UNACK, 20, "the device's alarm")
                current = states(rt)
                assert f"{SITE_ID}/demo-mqtt.broker:comm.LOSS" not in current
                assert f"{SITE_ID}/demo-mqtt.gds-hi01:comm.LOSS" not in current
                assert not any(
                    a.startswith(f"{SITE_ID}/T201.AT") and s == AlarmState.ACTIVE_UNACK for a, s in current.items()
                )
                await until(lambda: states(rt).get(loss) == AlarmState.RTN_UNACK, 30, "the device back")
                health = rt.gateways[0].health().devices
                assert health["gds-hi02"].connected and not health["gds-hi02"].stale
    finally:
        await broker.stop()
