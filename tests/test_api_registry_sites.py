"""An api instance (`hazmon serve --role api`) serves the sites the hub registers, not only its own files.

Real NATS JetStream and PostgreSQL. The api instance starts with the demo site's file; then a second
enterprise's site — the same plant, so the same tag ids — is registered as the hub registers uplinked
base data, and one of its alarms arrives on the events stream as the hub publishes uplinked alarms.
Within seconds that enterprise's token sees its site, its alarm (site-scoped, its tag by its own id)
and its plant in the console; the demo enterprise's token sees none of it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from api_helpers import RULES, SITE, SITE_FILE
from conftest import NATS_URL
from hazmon.alarms.alarm import Action, AlarmEvent, AlarmState, Priority
from hazmon.api import create_app
from hazmon.auth import Role, create_token
from hazmon.cluster.api import api_runtime
from hazmon.cluster.bus import Bus
from hazmon.cluster.roles import event_json, event_msg_id
from hazmon.config import load_settings
from hazmon.plant.site import load_site
from hazmon.reading import now_us
from hazmon.storage.registry import upsert_site
from test_cluster import _until
from test_site_scoped_ids import NORTH, _twin_site

GAS = "V101.GT1"


async def test_an_api_instance_serves_the_sites_the_hub_registers(pg_url: str, tmp_path: Path, namespace: str) -> None:
    settings = load_settings(
        database_url=pg_url, data_dir=tmp_path / "api", site=SITE_FILE, rules=RULES,
        nats_url=NATS_URL, nats_namespace=namespace, partitions=4,
    )  # fmt: skip
    bus = await Bus.connect(NATS_URL, namespace)
    try:
        async with api_runtime(settings, bus) as rt:
            async with rt.db.pool.acquire() as conn:
                north = (await create_token(conn, Role.OPERATOR, enterprises=["ntc"], name="nina")).secret
                demo = (await create_token(conn, Role.OPERATOR, sites=[SITE], name="alice")).secret
                # what the hub does with an enterprise's base data
                await upsert_site(conn, load_site(_twin_site(tmp_path / "north.yaml")))
            # and with one of its uplinked alarms
            alarm_id = f"{NORTH}/{GAS}:gas.HH"
            event = AlarmEvent(
                alarm_id=alarm_id, tag_id=f"{NORTH}/{GAS}", condition="gas.HH", priority=Priority.CRITICAL,
                prev_state=AlarmState.NORMAL, new_state=AlarmState.ACTIVE_UNACK, value=62.0, limit=50.0,
                ts_us=now_us(), action=Action.ACTIVATE,
            )  # fmt: skip
            await bus.publish(bus.subjects.events(NORTH), event_json(event, NORTH), event_msg_id(event))

            transport = httpx.ASGITransport(app=create_app(runtime=rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://hazmon") as client:
                as_north = {"Authorization": f"Bearer {north}"}

                async def north_sees_its_alarm() -> bool:
                    r = await client.get("/api/v1/alarms", headers=as_north)
                    return r.status_code == 200 and any(a["alarm_id"] == alarm_id for a in r.json())

                await _until(north_sees_its_alarm, 30, "the registered site's alarm to be served")
                r = await client.get("/api/v1/alarms", headers=as_north)
                (a,) = [a for a in r.json() if a["alarm_id"] == alarm_id]
                assert (a["site"], a["tag"], a["equipment"], a["state"]) == (NORTH, GAS, "V101", "active_unack")
                r = await client.get("/api/v1/console/context", headers=as_north)
                assert [s["id"] for s in r.json()["sites"]] == [NORTH]
                assert GAS in {t["id"] for t in r.json()["sites"][0]["tags"]}
                r = await client.get(f"/api/v1/alarms/{GAS}:gas.HH", headers=as_north)  # its one site
                assert r.status_code == 200 and r.json()["alarm_id"] == alarm_id, r.text

                as_demo = {"Authorization": f"Bearer {demo}"}
                r = await client.get("/api/v1/alarms", headers=as_demo)
                assert r.status_code == 200 and not [a for a in r.json() if a["site"] == NORTH]
                r = await client.get(f"/api/v1/alarms/{alarm_id}", headers=as_demo)
                assert r.status_code == 403, r.text
    finally:
        await bus.close()
