"""OPC UA gateway against an asyncua server built here in the style of asyncua's examples."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway_helpers import EXAMPLE_NS, Collector, OpcServer, make_certificates, wait_for
from hazmon.gateways import open_gateway
from hazmon.gateways.config import OpcUaGateway, parse_gateway_config
from hazmon.gateways.opcua import OpcUaGatewayImpl, status_to_quality
from hazmon.plant.tag import TagIndex
from hazmon.reading import Quality
from tcpproxy import TcpProxy


def config(server: OpcServer, **over: Any) -> OpcUaGateway:
    doc: dict[str, Any] = {
        "id": "ua",
        "protocol": "opcua",
        "site": "x",
        "endpoint": server.endpoint,
        "namespace": EXAMPLE_NS,
        "publishing_interval_ms": 100,
        "sampling_interval_ms": 0,
        "poll_interval_ms": 100,
        "backoff": {"initial_s": 0.1, "max_s": 0.5},
        "timeout_s": 2,
        "tags": [{"tag": n, "node": f"s={n}"} for n in server.names()],
    }
    doc.update(over)
    cfg = parse_gateway_config({"gateway": doc})
    assert isinstance(cfg, OpcUaGateway)
    return cfg


def test_status_codes_map_to_quality() -> None:
    codes = [0, 0x00A70000, 0x40900000, 0x80000000, 0x80050000, 0x808C0000, 0x80340000, 0x808D0000, 0x800A0400]
    assert status_to_quality(codes).tolist() == [
        Quality.GOOD,
        Quality.GOOD,
        Quality.UNCERTAIN,
        Quality.BAD,
        Quality.BAD_COMM,
        Quality.BAD_SENSOR,
        Quality.BAD_CONFIG,
        Quality.BAD_OUT_OF_SERVICE,
        Quality.BAD_COMM,  # info bits ignored
    ]


async def test_subscription_in_chunks_over_several_subscriptions(tmp_path: Path) -> None:
    server = OpcServer(devices=4, per_device=300)
    await server.start()
    try:
        cfg = config(server, max_items_per_subscription=500, create_chunk=200)
        idx = TagIndex(server.names())
        gw = open_gateway(cfg, idx, data_dir=tmp_path)
        assert isinstance(gw, OpcUaGatewayImpl)
        async with gw, Collector(gw) as col:
            await wait_for(lambda: gw.health().devices["server"].connected, what="subscribed")
            assert gw.subscriptions == 3 and gw.monitored_items == 1200
            await server.write(42.0)
            await wait_for(lambda: len(np.unique(col.all().tag[col.all().value == 42.0])) == 1200, what="every change")
            await server.write([float(i) for i in range(1200)])
            await wait_for(
                lambda: all(col.latest(idx.key(n)) == float(i) for i, n in enumerate(server.names())),
                what="per-node values",
            )
            assert gw.health().quarantined == {}
    finally:
        await server.stop()


async def test_deadband_absolute_suppresses_small_changes(tmp_path: Path) -> None:
    server = OpcServer(per_device=2)
    await server.start()
    try:
        cfg = config(server, deadband={"type": "absolute", "value": 1.0})
        idx = TagIndex(server.names())
        gw = open_gateway(cfg, idx, data_dir=tmp_path)
        key = idx.key("Dev0.V0")
        async with gw, Collector(gw) as col:
            await wait_for(lambda: col.latest(key) == 0.0, what="initial value")
            for v in (0.3, 0.6, 5.0):
                await server.write(v)
            await wait_for(lambda: col.latest(key) == 5.0, what="the large change")
            assert col.values(key).tolist() == [0.0, 5.0]  # 0.3 and 0.6 are within the deadband
    finally:
        await server.stop()


async def test_poll_mode_and_unknown_node(tmp_path: Path) -> None:
    server = OpcServer(per_device=5)
    await server.start()
    try:
        names = server.names()
        doc_tags = [{"tag": n, "node": f"s={n}"} for n in names] + [{"tag": "GHOST", "node": "s=NoSuchNode"}]
        cfg = config(server, mode="poll", tags=doc_tags)
        idx = TagIndex([*names, "GHOST"])
        gw = open_gateway(cfg, idx, data_dir=tmp_path)
        async with gw, Collector(gw) as col:
            await server.write(7.5)
            await wait_for(lambda: all(col.latest(idx.key(n)) == 7.5 for n in names), what="polled values")
            ghost = col.all()
            ghost_q = ghost.quality[ghost.tag == idx.key("GHOST")]
            assert len(ghost_q) and set(ghost_q.tolist()) == {Quality.BAD_CONFIG}  # BadNodeIdUnknown
            n = col.rows()
            await wait_for(lambda: col.rows() >= n + 3 * 6, what="polling every 100 ms")
    finally:
        await server.stop()


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_basic256sha256_with_certificates_and_password(tmp_path: Path, mode: str, monkeypatch: Any) -> None:
    certs = await make_certificates(tmp_path)
    server = OpcServer(per_device=3, security=(certs["server_cert"], certs["server_key"]), users={"op": "s3cret"})
    await server.start()
    monkeypatch.setenv("HAZMON_TEST_UA_PASSWORD", "s3cret")
    try:
        security = {
            "policy": "Basic256Sha256",
            "mode": mode,
            "certificate": str(certs["client_cert"]),
            "private_key": str(certs["client_key"]),
            "server_certificate": str(certs["server_cert"]),
            "username": "op",
            "password_env": "HAZMON_TEST_UA_PASSWORD",
        }
        idx = TagIndex(server.names())
        gw = open_gateway(config(server, security=security), idx, data_dir=tmp_path)
        async with gw, Collector(gw) as col:
            await server.write(3.0)
            await wait_for(lambda: col.latest(idx.key("Dev0.V2")) == 3.0, what="secure data")
        # a wrong password is a configuration error: counted, reported, retried with backoff
        monkeypatch.setenv("HAZMON_TEST_UA_PASSWORD", "wrong")
        gw = open_gateway(config(server, security=security), idx, data_dir=tmp_path)
        async with gw:
            await wait_for(lambda: gw.health().devices["server"].errors.get("config", 0) >= 1, what="rejected")
            assert not gw.health().devices["server"].connected
    finally:
        await server.stop()


async def test_server_restart_recreates_subscriptions(tmp_path: Path) -> None:
    server = OpcServer(per_device=20)
    await server.start()
    idx = TagIndex(server.names())
    gw = open_gateway(config(server), idx, data_dir=tmp_path)
    key = idx.key("Dev0.V7")
    try:
        async with gw, Collector(gw) as col:
            await server.write(1.0)
            await wait_for(lambda: col.latest(key) == 1.0, what="first value")
            await server.stop()
            await wait_for(lambda: not gw.health().devices["server"].connected, what="loss detected")
            server = OpcServer(server.port, per_device=20)
            await server.start(initial=2.0)
            await server.write(3.0)
            await wait_for(lambda: col.latest(key) == 3.0, timeout=15, what="data after restart")
            h = gw.health().devices["server"]
            assert h.connected and h.reconnects == 1
            b = col.all()
            assert Quality.BAD_COMM in b.quality[b.tag == key].tolist()
    finally:
        await server.stop()


async def test_quiet_values_are_not_a_lost_device_and_samples_are_not_repeated(tmp_path: Path) -> None:
    """Nothing changes for several stale periods: keep-alives (subscribe) and answered reads (poll)
    keep the device fresh, and an unchanged sample is stored once."""
    server = OpcServer(per_device=3)
    await server.start()
    try:
        idx = TagIndex(server.names())
        await server.write(4.0)
        for mode in ("subscribe", "poll"):
            gw = open_gateway(config(server, mode=mode, stale_after_s=1.0), idx, data_dir=tmp_path)
            async with gw, Collector(gw) as col:
                await wait_for(lambda: col.rows() == 3, what="the current values")
                deadline = asyncio.get_running_loop().time() + 3.0
                while asyncio.get_running_loop().time() < deadline:
                    assert not gw.health().devices["server"].stale, mode
                    await asyncio.sleep(0.1)
                assert col.rows() == 3, f"{mode}: an unchanged value was stored again"
    finally:
        await server.stop()


async def test_network_glitch_resubscribes_without_repeating_the_current_value(tmp_path: Path) -> None:
    server = OpcServer(per_device=5)
    await server.start()
    proxy = TcpProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        cfg = config(server, endpoint=f"opc.tcp://127.0.0.1:{proxy.port}/freeopcua/server/")
        idx = TagIndex(server.names())
        gw = open_gateway(cfg, idx, data_dir=tmp_path)
        async with gw, Collector(gw) as col:
            await server.write(1.0)
            await wait_for(lambda: col.rows() >= 5 and col.latest(0) == 1.0, what="first values")
            proxy.cut()  # the network drops the session; the server keeps running
            await wait_for(lambda: gw.health().reconnects >= 1 and gw.health().connected, 15, "re-subscribed")
            await server.write(2.0)
            await wait_for(lambda: all(col.latest(k) == 2.0 for _, k in idx.items()), what="new values")
            b = col.all()
            good = b.quality < 128
            pairs = list(zip(b.tag[good].tolist(), b.ts[good].tolist(), strict=True))
            assert len(pairs) == len(set(pairs)), "a sample was delivered twice"
            values = col.values(0).tolist()
            assert values[-2:] == [1.0, 2.0] and len(values) == len(set(values))
    finally:
        await proxy.stop()
        await server.stop()
