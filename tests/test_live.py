"""The live hub: snapshot then transitions in order, coalesced values, slow clients dropped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api_helpers import SITE, Tokens, demo_runtime, ingest, make_tokens, ref, serve
from hazmon.alarms.alarm import Action, AlarmEvent, AlarmSnapshot, AlarmState, Priority
from hazmon.live import Follow, LiveHub, SlowClient
from hazmon.plant.tag import TagIndex
from hazmon.reading import US_PER_S, ReadingBatch
from hazmon.runtime import Runtime

# tags named by their reference site/tag; site-b has an A.LT of its own
TAGS = TagIndex(["site-a/A.LT", "site-a/A.PT", "site-b/B.LT", "site-b/A.LT"])
SITE_OF = {ref: ref.split("/")[0] for ref in TAGS.ids} | {"site-b/plc": "site-b"}
T0 = 1_790_000_000 * US_PER_S
OUTAGE_S = float(os.environ.get("HAZMON_OUTAGE_S", "30"))


def _event(tag: str, new: AlarmState, ts: int, prev: AlarmState = AlarmState.NORMAL) -> AlarmEvent:
    """``tag``: the tag's reference (site/tag); the alarm is named site/tag:level.HH."""
    return AlarmEvent(
        f"{tag}:level.HH", tag, "level.HH", Priority.HIGH, prev, new, 9.5, 9.0, ts, action=Action.ACTIVATE
    )


def _snap(tag: str, state: AlarmState) -> AlarmSnapshot:
    return AlarmSnapshot(f"{tag}:level.HH", tag, "level.HH", Priority.HIGH, state, True, False, 9.5, 9.0, T0)


def _decode(msgs: list[str]) -> list[dict[str, Any]]:
    return [json.loads(m) for m in msgs]


def test_snapshot_then_only_followed_transitions_in_order() -> None:
    hub = LiveHub()
    snapshot = [_snap("site-a/A.LT", AlarmState.ACTIVE_UNACK), _snap("site-b/A.LT", AlarmState.ACTIVE_UNACK)]
    sub, alarms = hub.subscribe(Follow(sites=frozenset({"site-a"})), snapshot, SITE_OF.get, tags=TAGS)
    # site-b's A.LT is another tag: its alarm is not site-a's
    assert [(a["alarm_id"], a["site"], a["tag"]) for a in alarms] == [("site-a/A.LT:level.HH", "site-a", "A.LT")]
    hub.publish_events(
        [
            _event("site-a/A.PT", AlarmState.ACTIVE_UNACK, T0 + 1),
            _event("site-b/B.LT", AlarmState.ACTIVE_ACK, T0 + 2),
            _event("site-b/A.LT", AlarmState.ACTIVE_ACK, T0 + 3, AlarmState.ACTIVE_UNACK),
            _event("site-a/A.LT", AlarmState.ACTIVE_ACK, T0 + 4, AlarmState.ACTIVE_UNACK),
        ],
        SITE_OF.get,
    )
    (msg,) = _decode(sub.messages())
    assert msg["type"] == "events"
    events = msg["events"]
    assert isinstance(events, list)
    assert [(e["alarm_id"], e["site"], e["tag"], e["state"]) for e in events] == [
        ("site-a/A.PT:level.HH", "site-a", "A.PT", "active_unack"),
        ("site-a/A.LT:level.HH", "site-a", "A.LT", "active_ack"),
    ]
    assert sub.messages() == []


def test_following_one_tag_of_another_site_and_device_alarms() -> None:
    hub = LiveHub()
    sub, _ = hub.subscribe(Follow(sites=frozenset(), tags=frozenset({"site-b/A.LT"})), [], SITE_OF.get, tags=TAGS)
    everything, _ = hub.subscribe(Follow(sites=None), [], SITE_OF.get, tags=TAGS)
    device = AlarmEvent(
        "site-b/plc:comm.LOSS", None, "comm.LOSS", Priority.HIGH, AlarmState.NORMAL, AlarmState.ACTIVE_UNACK,
        None, None, T0,
    )  # fmt: skip
    hub.publish_events(
        [
            _event("site-a/A.LT", AlarmState.ACTIVE_UNACK, T0),
            _event("site-b/A.LT", AlarmState.ACTIVE_UNACK, T0),
            _event("site-b/B.LT", AlarmState.ACTIVE_UNACK, T0),
            device,
        ],
        SITE_OF.get,
    )
    (msg,) = _decode(sub.messages())
    assert [(e["alarm_id"], e["site"], e["tag"]) for e in msg["events"]] == [("site-b/A.LT:level.HH", "site-b", "A.LT")]
    (msg,) = _decode(everything.messages())
    assert len(msg["events"]) == 4
    assert (msg["events"][3]["alarm_id"], msg["events"][3]["site"], msg["events"][3]["tag"]) == (
        "site-b/plc:comm.LOSS",
        "site-b",
        None,
    )


def _batch(keys: list[int], ts: list[int], values: list[float]) -> ReadingBatch:
    return ReadingBatch.from_columns(np.array(keys), np.array(ts, dtype=np.int64), np.array(values))


A_LT, A_PT, B_LT, B_A_LT = (TAGS.key(r) for r in ("site-a/A.LT", "site-a/A.PT", "site-b/B.LT", "site-b/A.LT"))


def test_values_of_a_slow_client_are_coalesced_to_the_newest() -> None:
    hub = LiveHub()
    sub, _ = hub.subscribe(Follow(sites=frozenset({"site-a"})), [], SITE_OF.get, value_keys=[A_LT, A_PT], tags=TAGS)
    for i in range(100):
        # several readings per tag per batch, out of order: the newest by time wins
        hub.publish_values(
            _batch(
                [A_LT, A_LT, A_PT, B_LT, B_A_LT],
                [T0 + i * 10 + 5, T0 + i * 10, T0 + i, T0 + i, T0 + i * 10 + 9],
                [i + 0.5, i, -i, 7.0, 1000 + i],
            ),
            TAGS,
        )
    (msg,) = _decode(sub.messages())
    assert msg["type"] == "values"
    got = {(v["site"], v["tag"]): v for v in msg["values"]}
    assert set(got) == {("site-a", "A.LT"), ("site-a", "A.PT")}  # site-b's tags are not followed
    assert got["site-a", "A.LT"]["value"] == 99.5 and got["site-a", "A.LT"]["ts_us"] == T0 + 995
    assert got["site-a", "A.PT"]["value"] == -99
    assert sub.messages() == []  # nothing new since
    # an older reading does not replace a newer one
    hub.publish_values(_batch([A_LT], [T0], [1e9]), TAGS)
    assert hub.latest_values([A_LT], TAGS)[0]["value"] == 99.5
    # the other site's A.LT kept its own value
    assert hub.latest_values([B_A_LT], TAGS) == [
        {"site": "site-b", "tag": "A.LT", "ts_us": T0 + 999, "value": 1099.0, "quality": 0}
    ]


def test_new_subscriber_gets_latest_values_and_nan_as_null() -> None:
    hub = LiveHub()
    hub.publish_values(_batch([A_LT, A_PT], [T0, T0], [float("nan"), 3.0]), TAGS)
    sub, _ = hub.subscribe(Follow(sites=frozenset({"site-a"})), [], SITE_OF.get, value_keys=[A_LT, A_PT], tags=TAGS)
    assert hub.latest_values(sub.value_keys, TAGS) == [
        {"site": "site-a", "tag": "A.LT", "ts_us": T0, "value": None, "quality": 0},
        {"site": "site-a", "tag": "A.PT", "ts_us": T0, "value": 3.0, "quality": 0},
    ]
    assert sub.messages() == []  # the snapshot carried them


def test_alarms_only_gets_no_values() -> None:
    hub = LiveHub()
    sub, _ = hub.subscribe(
        Follow(sites=frozenset({"site-a"}), alarms_only=True), [], SITE_OF.get, value_keys=[A_LT, A_PT], tags=TAGS
    )
    hub.publish_values(_batch([A_LT], [T0], [1.0]), TAGS)
    assert sub.messages() == []


def test_a_client_too_far_behind_is_dropped_and_others_are_not_slowed() -> None:
    hub = LiveHub(max_events=50)
    slow, _ = hub.subscribe(Follow(sites=None), [], SITE_OF.get, tags=TAGS)
    fast, _ = hub.subscribe(Follow(sites=None), [], SITE_OF.get, tags=TAGS)
    received = 0
    for i in range(200):
        hub.publish_events([_event("site-a/A.LT", AlarmState.ACTIVE_UNACK, T0 + i)], SITE_OF.get)
        for m in _decode(fast.messages()):
            received += len(m["events"])
        assert slow.pending() <= 50  # bounded: publishing never accumulates without limit
    assert received == 200
    with pytest.raises(SlowClient):
        slow.messages()
    slow.close()
    assert hub.stats.clients_dropped == 1 and hub.clients == 1


async def test_next_messages_waits_for_a_publish() -> None:
    hub = LiveHub()
    sub, _ = hub.subscribe(Follow(sites=None), [], SITE_OF.get, tags=TAGS)
    waiter = asyncio.create_task(sub.next_messages())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish_events([_event("site-a/A.LT", AlarmState.ACTIVE_UNACK, T0)], SITE_OF.get)
    msgs = await asyncio.wait_for(waiter, 5)
    assert json.loads(msgs[0])["events"][0]["alarm_id"] == "site-a/A.LT:level.HH"


# ---------------------------------------------------------------------- the WebSocket, on a real server


@pytest.fixture
async def served(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, str]]:
    async with demo_runtime(pg_url, tmp_path) as rt:
        await ingest(rt, {"V101.GT1": 30.0})
        tokens = await make_tokens(rt)
        async with serve(rt) as address:
            yield rt, tokens, address


async def _recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return msg


async def _closed_with(ws: ClientConnection) -> tuple[int | None, dict[str, Any] | None]:
    error = None
    with contextlib.suppress(ConnectionClosed):
        while True:
            msg = await _recv(ws)
            if msg["type"] == "error":
                error = msg
    return ws.close_code, error


async def test_ws_snapshot_then_transitions_and_values(served: tuple[Runtime, Tokens, str]) -> None:
    rt, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live?token={tokens.operator}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "tags": []}))
        snap = await _recv(ws)
        assert snap["type"] == "snapshot" and snap["sites"] == [SITE]
        assert [(a["alarm_id"], a["site"], a["tag"]) for a in snap["alarms"]] == [
            (f"{SITE}/V101.GT1:gas.H", SITE, "V101.GT1")
        ]
        assert {(v["site"], v["tag"]): v["value"] for v in snap["values"]}[SITE, "V101.GT1"] == 30.0
        await ingest(rt, {"V102.GT1": 55.0})
        seen: list[dict[str, Any]] = []
        values: dict[tuple[str, str], float] = {}
        raised = {ref("V102.GT1:gas.H"), ref("V102.GT1:gas.HH")}
        while not raised <= {e["alarm_id"] for e in seen} or (SITE, "V102.GT1") not in values:
            msg = await _recv(ws)
            if msg["type"] == "events":
                seen += msg["events"]
            elif msg["type"] == "values":
                values.update({(v["site"], v["tag"]): v["value"] for v in msg["values"]})
        assert values[SITE, "V102.GT1"] == 55.0
        assert all(e["state"] == "active_unack" and e["site"] == SITE and e["tag"] == "V102.GT1" for e in seen)
        # an acknowledgement through the API reaches the stream with the user's name
        async with httpx.AsyncClient(base_url=f"http://{address}") as c:
            r = await c.post(
                f"/api/v1/alarms/{SITE}/V101.GT1:gas.H/ack", headers={"Authorization": f"Bearer {tokens.operator}"}
            )
            assert r.status_code == 200
        while True:
            msg = await _recv(ws)
            if msg["type"] == "events":
                break
        (ack,) = msg["events"]
        assert (ack["alarm_id"], ack["state"], ack["user"]) == (f"{SITE}/V101.GT1:gas.H", "active_ack", "alice")
        await ws.send('{"type": "ping"}')
        while (await _recv(ws))["type"] != "pong":
            pass


async def test_ws_follows_one_tag_alarms_only_with_token_in_first_message(
    served: tuple[Runtime, Tokens, str],
) -> None:
    rt, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live") as ws:
        await ws.send(
            json.dumps({"type": "subscribe", "token": tokens.regulator, "tags": ["V102.GT1"], "alarms_only": True})
        )
        snap = await _recv(ws)
        # the bare id names the one tag of that id the token sees: its reference
        assert snap["alarms"] == [] and snap["values"] == [] and snap["sites"] == []
        assert snap["tags"] == [f"{SITE}/V102.GT1"]
        await ingest(rt, {"V101.GT2": 60.0, "V102.GT1": 30.0})
        msg = await _recv(ws)
        assert msg["type"] == "events"
        assert {(e["alarm_id"], e["site"], e["tag"]) for e in msg["events"]} == {
            (f"{SITE}/V102.GT1:gas.H", SITE, "V102.GT1")
        }


async def test_ws_header_token(served: tuple[Runtime, Tokens, str]) -> None:
    _, tokens, address = served
    headers = {"Authorization": f"Bearer {tokens.engineer}"}
    async with connect(f"ws://{address}/api/v1/live", additional_headers=headers) as ws:
        await ws.send('{"type": "subscribe"}')
        snap = await _recv(ws)
        assert snap["sites"] == [SITE] and len(snap["alarms"]) == 1


@pytest.mark.parametrize("who", ["bad", "revoked"])
async def test_ws_bad_token_is_refused_at_the_handshake(served: tuple[Runtime, Tokens, str], who: str) -> None:
    _, tokens, address = served
    with pytest.raises(InvalidStatus) as e:
        async with connect(f"ws://{address}/api/v1/live?token={tokens.by_name(who)}"):
            pass
    assert e.value.response.status_code == 401


async def test_ws_without_token_is_closed_4401(served: tuple[Runtime, Tokens, str]) -> None:
    _, _, address = served
    async with connect(f"ws://{address}/api/v1/live") as ws:
        await ws.send(json.dumps({"type": "subscribe", "sites": [SITE]}))
        code, error = await _closed_with(ws)
    assert code == 4401 and error is not None and "token" in error["detail"]


@pytest.mark.parametrize(
    ("who", "subscribe"),
    [
        ("operator_other", {"sites": [SITE]}),
        ("regulator_other", {"tags": [f"{SITE}/V101.LT"]}),
        ("operator", {"sites": ["other-site"]}),
    ],
)
async def test_ws_outside_scope_is_closed_4403(
    served: tuple[Runtime, Tokens, str], who: str, subscribe: dict[str, Any]
) -> None:
    _, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live?token={tokens.by_name(who)}") as ws:
        await ws.send(json.dumps({"type": "subscribe", **subscribe}))
        code, error = await _closed_with(ws)
    assert code == 4403 and error is not None and "scope" in error["detail"]


async def test_ws_bare_tag_id_names_only_the_tokens_own_tags(served: tuple[Runtime, Tokens, str]) -> None:
    """A bare id is looked up among the sites the token sees: another enterprise's V101.LT is not found
    (and its existence not revealed); by its reference it is refused as outside the scope."""
    _, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live?token={tokens.regulator_other}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "tags": ["V101.LT"]}))
        code, error = await _closed_with(ws)
    assert code == 4404 and error is not None and "unknown" in error["detail"]


async def test_ws_scope_defaults_to_the_tokens_sites(served: tuple[Runtime, Tokens, str]) -> None:
    _, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live?token={tokens.operator_other}") as ws:
        await ws.send('{"type": "subscribe"}')
        snap = await _recv(ws)
    assert snap["sites"] == ["other-site"] and snap["alarms"] == []


async def test_ws_bad_messages_are_refused(served: tuple[Runtime, Tokens, str]) -> None:
    _, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live?token={tokens.operator}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "tags": ["NOPE"]}))
        code, _ = await _closed_with(ws)
    assert code == 4404
    async with connect(f"ws://{address}/api/v1/live?token={tokens.operator}") as ws:
        await ws.send("not json")
        code, _ = await _closed_with(ws)
    assert code == 4400
    # a binary frame, and JSON nested deeper than can be decoded: a bad message, not a crash
    for bad in (b"\x00\x01binary", "[" * 100_000 + "]" * 100_000):
        async with connect(f"ws://{address}/api/v1/live", additional_headers=_bearer(tokens.operator)) as ws:
            await ws.send('{"type": "subscribe"}')
            assert (await _recv(ws))["type"] == "snapshot"
            await ws.send(bad)
            code, error = await _closed_with(ws)
        assert code == 4400 and error is not None


async def test_ws_closed_within_5_s_when_its_token_is_revoked(served: tuple[Runtime, Tokens, str]) -> None:
    from hazmon.auth import revoke_token

    rt, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live", additional_headers=_bearer(tokens.operator)) as ws:
        await ws.send('{"type": "subscribe"}')
        assert (await _recv(ws))["type"] == "snapshot"
        async with rt.db.pool.acquire() as conn:
            await revoke_token(conn, tokens.operator.split("_")[1])
        revoked = time.monotonic()
        code, error = await _closed_with(ws)
        closed_after = time.monotonic() - revoked
    assert code == 4401 and error is not None and "revoked" in error["detail"]
    assert closed_after < 5.0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_ws_auth_message_keeps_the_token_out_of_the_url(served: tuple[Runtime, Tokens, str]) -> None:
    rt, tokens, address = served
    async with connect(f"ws://{address}/api/v1/live") as ws:
        await ws.send(json.dumps({"type": "auth", "token": tokens.operator}))
        await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
        snap = await _recv(ws)
        assert snap["type"] == "snapshot" and [a["alarm_id"] for a in snap["alarms"]] == [ref("V101.GT1:gas.H")]
        await ingest(rt, {"V102.GT1": 30.0})
        msg = await _recv(ws)
        assert msg["type"] == "events" and msg["events"][0]["alarm_id"] == ref("V102.GT1:gas.H")
    async with connect(f"ws://{address}/api/v1/live") as ws:
        await ws.send(json.dumps({"type": "auth", "token": tokens.by_name("bad")}))
        code, error = await _closed_with(ws)
    assert code == 4401 and error is not None and "invalid" in error["detail"]


async def test_ws_loses_no_transition_during_a_slow_token_check(
    served: tuple[Runtime, Tokens, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hazmon.api import deps
    from hazmon.api.routes import live as live_route

    rt, tokens, address = served
    real = deps.principal_for
    checks = 0

    async def slow_check(runtime: Runtime, token: str | None, **kwargs: Any) -> Any:
        nonlocal checks
        checks += 1
        await asyncio.sleep(0.3)  # a slow database: transitions keep arriving meanwhile
        return await real(runtime, token, **kwargs)

    monkeypatch.setattr(live_route, "REAUTH_S", 0.05)
    monkeypatch.setattr(live_route, "principal_for", slow_check)
    async with connect(f"ws://{address}/api/v1/live", additional_headers=_bearer(tokens.operator)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
        assert (await _recv(ws))["type"] == "snapshot"
        sent = [f"note {i}" for i in range(40)]
        for text in sent:
            await rt.operate("comment", ref("V101.GT1:gas.H"), "alice", comment=text)
            await asyncio.sleep(0.02)  # spread over several token checks
        got: list[str] = []
        while len(got) < len(sent):
            msg = await _recv(ws)
            got += [e["comment"] for e in msg.get("events", [])]
    assert got == sent  # every transition, in order: a console shows the right state
    assert checks >= 2


async def test_ws_console_keeps_working_through_a_database_outage(pg_url: str, tmp_path: Path) -> None:
    """A console-like client through a 30 s outage (HAZMON_OUTAGE_S): the alarm list is served, the
    WebSocket stays open and gets every transition, an acknowledgement made during the outage is
    journaled and audited afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    from tcpproxy import TcpProxy

    u = urlsplit(pg_url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    url = urlunsplit(u._replace(netloc=f"{u.username}@127.0.0.1:{proxy.port}"))
    try:
        async with demo_runtime(url, tmp_path) as rt:
            await ingest(rt, {"V101.GT1": 30.0})
            tokens = await make_tokens(rt)
            h = _bearer(tokens.operator)
            async with serve(rt) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
                assert (await http.get("/api/v1/alarms", headers=h)).status_code == 200  # the token is known
                async with connect(f"ws://{address}/api/v1/live", additional_headers=h) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "sites": [SITE], "alarms_only": True}))
                    assert [a["alarm_id"] for a in (await _recv(ws))["alarms"]] == [ref("V101.GT1:gas.H")]
                    events: list[dict[str, Any]] = []

                    async def read() -> None:
                        async for text in ws:
                            events.extend(json.loads(text).get("events", []))

                    reader = asyncio.create_task(read())

                    async def seen(alarm_id: str, state: str) -> None:
                        deadline = time.monotonic() + 10
                        while not any(e["alarm_id"] == alarm_id and e["state"] == state for e in events):
                            assert not reader.done(), f"the WebSocket closed: {ws.close_code} {ws.close_reason}"
                            assert time.monotonic() < deadline, f"{alarm_id} -> {state} never arrived"
                            await asyncio.sleep(0.05)

                    await proxy.go_down()
                    down = time.monotonic()
                    await ingest(rt, {"V102.GT1": 30.0})  # a new alarm during the outage
                    await seen(ref("V102.GT1:gas.H"), "active_unack")
                    r = await http.post(
                        f"/api/v1/alarms/{SITE}/V101.GT1:gas.H/ack",
                        headers=h,
                        json={"comment": "seen during the outage"},
                    )
                    assert r.status_code == 200, r.text
                    assert r.json()["record"] == "queued" and r.json()["alarm"]["state"] == "active_ack"
                    await seen(ref("V101.GT1:gas.H"), "active_ack")
                    while time.monotonic() - down < OUTAGE_S:
                        r = await http.get("/api/v1/alarms", headers=h, params={"site": SITE})
                        assert r.status_code == 200, r.text
                        states = {a["alarm_id"]: a["state"] for a in r.json()}
                        assert states[ref("V101.GT1:gas.H")] == "active_ack" and ref("V102.GT1:gas.H") in states
                        assert not reader.done(), f"the WebSocket closed: {ws.close_code} {ws.close_reason}"
                        await asyncio.sleep(1.0)  # the outage lasts; keep asking like a console would
                    await proxy.come_up()
                    await ingest(rt, {"V103.GT1": 30.0})
                    await seen(ref("V103.GT1:gas.H"), "active_unack")
                    await rt.flush_journal(30)
                    assert not reader.done()
                    reader.cancel()
    finally:
        await proxy.stop()
    conn = await asyncpg.connect(pg_url)
    try:
        acks = await conn.fetch(
            "SELECT alarm_id, site_id, tag_id, \"user\", comment FROM alarm_journal WHERE action = 'acknowledge'"
        )
        audit = await conn.fetch("SELECT actor, role, target FROM audit_log WHERE action = 'alarm.acknowledge'")
        raised = {
            r["alarm_id"] for r in await conn.fetch("SELECT alarm_id FROM alarm_journal WHERE action = 'activate'")
        }
    finally:
        await conn.close()
    assert [tuple(r) for r in acks] == [(ref("V101.GT1:gas.H"), SITE, "V101.GT1", "alice", "seen during the outage")]
    assert [tuple(r) for r in audit] == [("alice", "operator", ref("V101.GT1:gas.H"))]
    assert {ref("V101.GT1:gas.H"), ref("V102.GT1:gas.H"), ref("V103.GT1:gas.H")} <= raised
