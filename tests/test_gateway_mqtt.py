"""MQTT gateway: payload formats and bad input, then a private Mosquitto fed by mosquitto_pub."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway_helpers import Collector, Mosquitto, wait_for
from hazmon.gateways import open_gateway
from hazmon.gateways.config import MqttGateway, MqttPayloadFormat, parse_gateway_config
from hazmon.gateways.mqtt import PayloadDecoder
from hazmon.gateways.quarantine import Quarantine
from hazmon.plant.tag import TagIndex
from hazmon.reading import Quality

TAGS = ["V101.LT", "V101.TT", "V102.LT", "GD01.GAS", "GD02.GAS"]
POINTS = {
    "plant/V101/LT": "V101.LT",
    "V101.TT": "V101.TT",
    "V102.LT": "V102.LT",
    "gd-rack-1/GD01": "GD01.GAS",
    "gd-rack-1/GD02": "GD02.GAS",
}


def config(port: int = 1883, client_id: str = "hazmon-test") -> MqttGateway:
    doc = {
        "gateway": {
            "id": "mq",
            "protocol": "mqtt",
            "site": "x",
            "broker": {"port": port, "client_id": client_id},
            "backoff": {"initial_s": 0.05, "max_s": 0.3},
            "topics": [
                {"filter": "plant/+/LT", "format": "single"},
                {"filter": "batch/#", "format": "batch"},
                {"filter": "env/+", "format": "envelope"},
            ],
            "points": POINTS,
        }
    }
    cfg = parse_gateway_config(doc)
    assert isinstance(cfg, MqttGateway)
    return cfg


@pytest.fixture
def decoder(tmp_path: Path) -> PayloadDecoder:
    return PayloadDecoder(config(), TagIndex(TAGS), Quarantine("mq", tmp_path))


def test_three_formats_decode(decoder: PayloadDecoder) -> None:
    idx = TagIndex(TAGS)
    b = decoder.decode("plant/V101/LT", MqttPayloadFormat.SINGLE, b"3.5")
    assert b is not None and b.tag.tolist() == [idx.key("V101.LT")] and b.value.tolist() == [3.5]
    b = decoder.decode(
        "plant/V101/LT", MqttPayloadFormat.SINGLE, b'{"value": 4, "ts": "2026-01-01T00:00:00Z", "quality": 64}'
    )
    assert b is not None and b.ts.tolist() == [1767225600_000_000] and b.quality.tolist() == [Quality.UNCERTAIN]
    b = decoder.decode(
        "batch/a",
        MqttPayloadFormat.BATCH,
        json.dumps({"ts": 1767225600000, "points": ["V101.TT", "V102.LT"], "values": [20.5, 7]}).encode(),
    )
    assert b is not None and b.value.tolist() == [20.5, 7.0] and set(b.ts.tolist()) == {1767225600_000_000}
    b = decoder.decode(
        "batch/a",
        MqttPayloadFormat.BATCH,
        b'[{"point": "V101.TT", "value": 1.5, "ts": 1767225600500}, {"point": "V102.LT", "value": true}]',
    )
    assert b is not None and b.value.tolist() == [1.5, 1.0] and b.ts[0] == 1767225600_500_000
    env = {"enterprise": "e1", "device": "gd-rack-1", "ts": 1767225600000, "readings": {"GD01": 12, "GD02": 0}}
    b = decoder.decode("env/gd-rack-1", MqttPayloadFormat.ENVELOPE, json.dumps(env).encode())
    assert b is not None and b.tag.tolist() == [idx.key("GD01.GAS"), idx.key("GD02.GAS")]
    assert decoder.quarantine.counts() == {}


def test_bad_readings_are_quarantined_by_reason_and_good_ones_kept(decoder: PayloadDecoder) -> None:
    future = (time.time() + 3600) * 1000
    payload = json.dumps(
        [
            {"point": "V101.TT", "value": 21.0},
            {"point": "NOPE", "value": 1.0},
            {"point": "V102.LT", "value": "high"},
            {"point": "gd-rack-1/GD01", "value": float("nan")},
            {"point": "plant/V101/LT", "value": 2.0, "ts": future},
        ]
    ).encode()
    b = decoder.decode("batch/x", MqttPayloadFormat.BATCH, payload)
    assert b is not None and b.value.tolist() == [21.0]
    assert decoder.decode("batch/x", MqttPayloadFormat.BATCH, b"{not json") is None
    assert decoder.decode("env/x", MqttPayloadFormat.ENVELOPE, b'{"readings": []}') is None
    columnar = {"points": ["V101.TT", "V102.LT", "gd-rack-1/GD02"], "values": [1, None, float("inf")]}
    b = decoder.decode("batch/y", MqttPayloadFormat.BATCH, json.dumps(columnar).encode())
    assert b is not None and b.value.tolist() == [1.0]
    assert decoder.quarantine.counts() == {
        "unmapped": 1,
        "wrong_type": 2,
        "non_finite": 2,
        "future_timestamp": 1,
        "malformed": 2,
    }
    records = decoder.quarantine.records()
    assert {r["reason"] for r in records} == {"unmapped", "wrong_type", "non_finite", "future_timestamp", "malformed"}
    assert all(r["gateway"] == "mq" and r["source"] for r in records)


def test_a_redelivered_message_is_not_stored_twice(decoder: PayloadDecoder) -> None:
    payload = json.dumps({"ts": 1767225600000, "points": ["V101.TT", "V102.LT"], "values": [1.0, 2.0]}).encode()
    assert decoder.decode("batch/a", MqttPayloadFormat.BATCH, payload) is not None
    assert decoder.decode("batch/a", MqttPayloadFormat.BATCH, payload) is None  # QoS 1 sent it again
    assert decoder.repeated == 2
    later = payload.replace(b"1767225600000", b"1767225601000")
    b = decoder.decode("batch/a", MqttPayloadFormat.BATCH, later)
    assert b is not None and len(b) == 2
    # without a source time every message is new: nothing to compare
    plain = json.dumps({"points": ["V101.TT"], "values": [1.0]}).encode()
    assert decoder.decode("batch/a", MqttPayloadFormat.BATCH, plain) is not None
    assert decoder.decode("batch/a", MqttPayloadFormat.BATCH, plain) is not None


def test_large_columnar_batch_decodes_vectorized(decoder: PayloadDecoder) -> None:
    n = 20_000
    points = (["V101.TT", "V102.LT"] * n)[:n]
    payload = json.dumps({"ts": 1767225600000, "points": points, "values": np.arange(n).tolist()}).encode()
    b = decoder.decode("batch/big", MqttPayloadFormat.BATCH, payload)
    assert b is not None and len(b) == n and b.value[-1] == n - 1


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    m = Mosquitto(tmp_path / "mosquitto")
    await m.start()
    yield m
    await m.stop()


async def test_mosquitto_pub_messages_arrive_bad_ones_quarantined(broker: Mosquitto, tmp_path: Path) -> None:
    idx = TagIndex(TAGS)
    gw = open_gateway(config(broker.port), idx, data_dir=tmp_path)
    async with gw, Collector(gw) as col:
        await wait_for(lambda: gw.health().devices["broker"].connected, what="connected")
        await broker.publish("plant/V101/LT", "7.25")
        await broker.publish("batch/r1", json.dumps({"points": ["V101.TT", "V102.LT"], "values": [30.5, 1.5]}))
        env = {"enterprise": "e1", "device": "gd-rack-1", "readings": [{"point": "GD01", "value": 25}]}
        await broker.publish("env/gd-rack-1", json.dumps(env))
        await broker.publish("batch/r1", "garbage")
        await wait_for(lambda: col.latest(idx.key("GD01.GAS")) == 25.0, what="envelope reading")
        assert col.latest(idx.key("V101.LT")) == 7.25
        assert col.latest(idx.key("V101.TT")) == 30.5
        await wait_for(lambda: gw.health().quarantined.get("malformed") == 1, what="garbage quarantined")
        h = gw.health()
        assert h.devices["broker"].readings_total == 4 and h.devices["broker"].errors == {}
    assert (tmp_path / "quarantine" / "mq.jsonl").exists()


async def test_broker_restart_persistent_session_delivers_what_was_sent_meanwhile(
    broker: Mosquitto, tmp_path: Path
) -> None:
    idx = TagIndex(TAGS)
    gw = open_gateway(config(broker.port, client_id="hazmon-restart"), idx, data_dir=tmp_path)
    key = idx.key("V101.TT")
    async with gw, Collector(gw) as col:
        await wait_for(lambda: gw.health().devices["broker"].connected, what="connected")
        sent = [json.dumps({"points": ["V101.TT"], "values": [i]}) for i in range(200)]
        await broker.publish_lines("batch/seq", sent[:100])
        await broker.restart()
        await broker.publish_lines("batch/seq", sent[100:])  # perhaps before the gateway is back
        await wait_for(lambda: len(col.values(key)) >= 200, timeout=15, what="all 200 readings")
        got = col.values(key).tolist()
        assert sorted(got) == [float(i) for i in range(200)]  # none lost, none twice
        h = gw.health().devices["broker"]
        assert h.connected and h.reconnects >= 1
        bad: Any = col.all()
        assert Quality.BAD_COMM in bad.quality[bad.tag == key].tolist()
