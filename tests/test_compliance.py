"""What a regulator sees at /api/v1/compliance: data arriving, alarms standing and for how long,
how fast they are acknowledged, and each installation's GB 18218 grade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api_helpers import SITE, Tokens, demo_api, ingest, ref
from hazmon.reading import now_us
from hazmon.runtime import Runtime


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    async with demo_api(pg_url, tmp_path) as (rt, tokens, client):
        yield rt, tokens, client


async def test_regulator_sees_data_alarms_handling_and_grades(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, client = env
    ammonia = [t.id for t in rt.sites[0].tags if t.equipment in ("T201", "K201")]
    t0 = now_us() - 30_000_000
    # HI-02 (ammonia) reports every tag; HI-01 only its detectors, one of them in a leak
    await ingest(rt, {t: 0.0 if t.endswith("AT1") else 1.0 for t in ammonia}, t0)
    await ingest(rt, {"V101.GT1": 60.0, "V101.GT2": 1.0}, t0)
    await ingest(rt, {"V101.GT1": 62.0, "V101.GT2": 1.0}, t0 + 20_000_000)
    await rt.flush_journal()
    acked_from = now_us()
    await rt.operate("acknowledge", ref("V101.GT1:gas.HH"), "alice", comment="evacuated the sphere area")
    acked_by = now_us()

    headers = {"Authorization": f"Bearer {tokens.regulator}"}
    r = await client.get("/api/v1/compliance", params={"enterprise": "ecs", "since": "1d"}, headers=headers)
    assert r.status_code == 200, r.text
    (site,) = r.json()
    assert site["site"] == SITE and site["enterprise"]["uscc"] == "91320500MA1XK7Q211"
    inst = {i["id"]: i for i in site["installations"]}
    g = inst["HI-02"]["gb18218"]
    assert (g["major_hazard"], g["r"], g["grade"], g["s"], g["alpha"]) == (True, 1440.0, 1, 600.0, 1.2)
    assert [c["beta_q_over_Q"] for c in g["chemicals"]] == [1200.0]
    assert inst["HI-03"]["gb18218"]["grade"] == 3
    assert inst["HI-02"]["data"]["share"] == 1.0 and inst["HI-02"]["data"]["status"] == "ok"
    assert inst["HI-03"]["data"]["reporting"] == 0 and inst["HI-03"]["data"]["status"] == "no_data"
    assert inst["HI-01"]["data"]["status"] == "degraded"
    alarms = inst["HI-01"]["alarms"]
    assert alarms["active"] >= 2 and alarms["active_by_priority"]["critical"] >= 1
    assert alarms["oldest_active_s"] >= 20
    handling = inst["HI-01"]["handling"]
    assert handling["acknowledged"] == 1 and handling["pending"] == handling["activations"] - 1
    # the HH alarm activated with the first reading above 50 %LEL (at t0) and was acknowledged just now
    # (reported to 0.1 s)
    low, high = (acked_from - t0) / 1e6 - 0.05, (acked_by - t0) / 1e6 + 0.05
    assert low <= handling["median_time_to_ack_s"] <= high, (low, high, handling)
    assert handling["p90_time_to_ack_s"] == handling["median_time_to_ack_s"]  # one acknowledgement


async def test_scope_of_the_compliance_view(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, client = env
    other = {"Authorization": f"Bearer {tokens.regulator_other}"}
    assert (await client.get("/api/v1/compliance", headers=other)).json() == []
    assert (await client.get("/api/v1/compliance", params={"site": SITE}, headers=other)).status_code == 403
    assert (await client.get("/api/v1/compliance")).status_code == 401
    bad = await client.get("/api/v1/compliance", params={"since": "lately"}, headers=other)
    assert bad.status_code == 422


def test_an_acknowledged_alarm_keeps_standing_from_its_activation() -> None:
    """A gas alarm raised 30 h ago and acknowledged an hour ago has stood 30 h: the acknowledge (the
    last change, ``since``) does not reset how long it has been in alarm."""
    from hazmon.alarms.alarm import AlarmSnapshot, AlarmState, Priority
    from hazmon.regulator.compliance import AlarmTally

    now = now_us()
    hour = 3_600_000_000
    tally = AlarmTally()
    tally.add(
        AlarmSnapshot(
            alarm_id=f"{SITE}/V103.GT1:gas.H", tag_id=f"{SITE}/V103.GT1", condition="gas.H", priority=Priority.HIGH,
            state=AlarmState.ACTIVE_ACK, active=True, acked=True, value=30.0, limit=25.0,
            since_us=now - hour, activated_us=now - 30 * hour,
        ),
        now,
    )  # fmt: skip
    assert tally.standing == 1 and tally.oldest_active_since_us == now - 30 * hour
