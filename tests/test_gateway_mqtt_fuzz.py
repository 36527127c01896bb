"""MQTT decoder hardening: payloads that used to stop the gateway, and a fuzz run through a real broker.

Invariant: whatever arrives, the gateway keeps running, and every message is either stored (at least
one reading) or quarantined with a reason (or recognised as a repeat); later good messages arrive.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_helpers import Collector, Mosquitto, wait_for
from hazmon.gateways import Gateway, open_gateway
from hazmon.gateways.config import MqttGateway, MqttPayloadFormat, parse_gateway_config
from hazmon.gateways.mqtt import MqttGatewayImpl, PayloadDecoder
from hazmon.gateways.quarantine import Quarantine, Reason
from hazmon.plant.tag import TagIndex

TAGS = ["V101.LT", "V101.TT", "V102.LT", "GD01.GAS", "GD02.GAS"]
POINTS = {"one/V101.LT": "V101.LT", "V101.TT": "V101.TT", "V102.LT": "V102.LT", "rack/GD01": "GD01.GAS"}
MAX_PAYLOAD = 200_000


def config(port: int = 1883) -> MqttGateway:
    doc = {
        "gateway": {
            "id": "fz",
            "protocol": "mqtt",
            "site": "x",
            "broker": {"port": port, "client_id": "hazmon-fuzz"},
            "backoff": {"initial_s": 0.05, "max_s": 0.3},
            "max_payload_bytes": MAX_PAYLOAD,
            "topics": [
                {"filter": "one/#", "format": "single"},
                {"filter": "batch/#", "format": "batch"},
                {"filter": "env/#", "format": "envelope"},
            ],
            "points": POINTS,
        }
    }
    cfg = parse_gateway_config(doc)
    assert isinstance(cfg, MqttGateway)
    return cfg


@pytest.fixture
def decoder(tmp_path: Path) -> PayloadDecoder:
    return PayloadDecoder(config(), TagIndex(TAGS), Quarantine("fz", tmp_path))


def test_deeply_nested_json_is_quarantined_not_raised(decoder: PayloadDecoder) -> None:
    deep = b"[" * 90_000 + b"]" * 90_000
    for fmt in MqttPayloadFormat:
        assert decoder.decode("batch/x", fmt, deep) is None
    nested_values = json.dumps({"points": ["V101.TT"], "values": [[[[[1]]]]]}).encode()
    assert decoder.decode("batch/x", MqttPayloadFormat.BATCH, nested_values) is None
    counts = decoder.quarantine.counts()
    assert counts[Reason.TOO_DEEP] == 3 and counts[Reason.WRONG_TYPE] == 1
    # and the decoder goes on decoding
    b = decoder.decode("batch/x", MqttPayloadFormat.BATCH, b'{"points": ["V101.TT"], "values": [4.5]}')
    assert b is not None and b.value.tolist() == [4.5]


def test_empty_oversized_and_odd_payloads_each_get_a_reason(decoder: PayloadDecoder) -> None:
    cases: list[tuple[MqttPayloadFormat, bytes, str]] = [
        (MqttPayloadFormat.BATCH, b"[]", Reason.EMPTY),
        (MqttPayloadFormat.BATCH, b'{"points": [], "values": []}', Reason.EMPTY),
        (MqttPayloadFormat.ENVELOPE, b'{"device": "rack", "readings": {}}', Reason.EMPTY),
        (MqttPayloadFormat.BATCH, b"[" + b"1," * MAX_PAYLOAD + b"1]", Reason.TOO_LARGE),
        (MqttPayloadFormat.SINGLE, b"\xff\xfe\x00garbage", Reason.MALFORMED),
        (MqttPayloadFormat.SINGLE, b"1" * 500, Reason.WRONG_TYPE),  # an int beyond float
        (MqttPayloadFormat.BATCH, b'{"points": ["V101.TT"], "values": [[2, 3]]}', Reason.WRONG_TYPE),
        (MqttPayloadFormat.BATCH, b'{"ts": 1e300, "points": ["V101.TT"], "values": [1]}', Reason.BAD_TIMESTAMP),
        (
            MqttPayloadFormat.BATCH,
            b'{"ts": [[1], [2, 3]], "points": ["a", "b"], "values": [1, 2]}',
            Reason.BAD_TIMESTAMP,
        ),
        (MqttPayloadFormat.BATCH, b'{"points": ["V101.TT"], "values": [1], "quality": [[0]]}', Reason.WRONG_TYPE),
        (MqttPayloadFormat.SINGLE, b'{"value": 1, "ts": "9999-12-31T23:59:59+00:00"}', Reason.BAD_TIMESTAMP),
    ]
    for fmt, payload, reason in cases:
        before = decoder.quarantine.counts().get(reason, 0)
        assert decoder.decode("one/V101.LT" if fmt is MqttPayloadFormat.SINGLE else "batch/x", fmt, payload) is None
        assert decoder.quarantine.counts().get(reason, 0) == before + 1, (payload[:80], reason)
    assert decoder.outcomes == {"stored": 0, "quarantined": len(cases), "repeated": 0}
    reasons = {r["reason"] for r in decoder.quarantine.records()}
    assert {Reason.EMPTY, Reason.TOO_LARGE, Reason.MALFORMED} <= reasons


# ------------------------------------------------------------------ fuzz through the real broker

_serial = itertools.count(1)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_any = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
point = st.sampled_from([*POINTS, "NOPE", "rack/GD02", ""])
row = st.fixed_dictionaries(
    {"point": point, "value": json_any},
    optional={"ts": json_any | st.integers(0, 2_000_000_000_000), "quality": json_any | st.integers(0, 255)},
)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def bad_message(draw: st.DrawFn) -> tuple[str, bytes]:
    """A message as a broken or hostile publisher might send it: (topic, payload)."""
    kind = draw(st.sampled_from(["columnar", "rows", "envelope", "single", "any", "truncated", "deep", "bytes"]))
    if kind == "columnar":
        n = draw(st.integers(0, 6))
        doc: Any = {
            "points": draw(st.lists(point | json_leaf, min_size=n, max_size=n)),
            "values": draw(st.lists(json_any, min_size=n, max_size=n + draw(st.integers(0, 1)))),
        }
        if draw(st.booleans()):
            doc["ts"] = draw(json_any | st.lists(st.integers(0, 2_000_000_000_000), min_size=n, max_size=n))
        if draw(st.booleans()):
            doc["quality"] = draw(json_any | st.lists(st.integers(-1, 300), min_size=n, max_size=n))
        return "batch/c", _dump(doc)
    if kind == "rows":
        return "batch/r", _dump(draw(st.lists(row | json_any, max_size=6)))
    if kind == "envelope":
        readings = draw(st.lists(row, max_size=5) | st.dictionaries(st.sampled_from(["GD01", "GD02", "x"]), json_any))
        doc = {"device": draw(st.sampled_from(["rack", "other"]) | json_leaf), "readings": readings}
        if draw(st.booleans()):
            doc["ts"] = draw(json_any)
        return "env/rack", _dump(doc)
    if kind == "single":
        return "one/" + draw(st.sampled_from(["V101.LT", "V101.TT"])), _dump(draw(json_any))
    if kind == "any":
        return draw(st.sampled_from(["batch/a", "env/a", "one/V101.TT"])), _dump(draw(json_any))
    if kind == "truncated":
        whole = _dump({"points": ["V101.TT", "V102.LT"], "values": [1.5, 2.5], "ts": 1767225600000})
        return "batch/t", whole[: draw(st.integers(0, len(whole) - 1))]
    if kind == "deep":
        depth = draw(st.sampled_from([50, 1_000, 100_000]))
        return draw(st.sampled_from(["batch/d", "env/d", "one/V101.TT"])), b"[" * depth + b"1" + b"]" * depth
    if draw(st.booleans()):  # huge: past the gateway's limit
        return "batch/h", b'{"points": [], "values": [' + b"0," * MAX_PAYLOAD + b"0]}"
    return draw(st.sampled_from(["batch/b", "one/V101.TT"])), draw(st.binary(max_size=64))


@st.composite
def good_message(draw: st.DrawFn) -> tuple[str, bytes, float]:
    """A valid reading with a value no other message has: (topic, payload, value)."""
    value = float(next(_serial)) + 0.25
    fmt = draw(st.sampled_from(["columnar", "rows", "envelope", "single"]))
    if fmt == "columnar":
        return "batch/g", _dump({"points": ["V101.TT"], "values": [value]}), value
    if fmt == "rows":
        return "batch/g", _dump([{"point": "V101.TT", "value": value}]), value
    if fmt == "envelope":
        return "env/rack", _dump({"device": "rack", "readings": {"GD01": value}}), value
    return "one/V101.LT", _dump(value), value


@pytest.fixture(scope="module")
async def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Gateway, Collector, int]]:
    broker = Mosquitto(tmp_path_factory.mktemp("fuzz-mosquitto"))
    await broker.start()
    gw = open_gateway(config(broker.port), TagIndex(TAGS), data_dir=tmp_path_factory.mktemp("fuzz-data"))
    async with gw, Collector(gw) as col:
        await wait_for(lambda: gw.health().devices["broker"].connected, what="connected")
        yield gw, col, broker.port
    await broker.stop()


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bad=st.lists(bad_message(), min_size=1, max_size=8), good=st.lists(good_message(), min_size=1, max_size=3))
async def test_fuzzed_payloads_never_stop_the_gateway_and_none_vanishes(
    fuzz_gateway: tuple[Gateway, Collector, int],
    bad: list[tuple[str, bytes]],
    good: list[tuple[str, bytes, float]],
) -> None:
    gw, col, port = fuzz_gateway
    assert isinstance(gw, MqttGatewayImpl)
    decoder = gw.decoder
    messages_before = gw.messages
    outcomes_before = sum(decoder.outcomes.values())
    # the bad ones first, then the good ones: after anything, good readings still arrive
    async with aiomqtt.Client("127.0.0.1", port, identifier="fuzz-publisher") as pub:
        for topic, payload in bad:
            await pub.publish(topic, payload=payload, qos=1)
        for topic, payload, _ in good:
            await pub.publish(topic, payload=payload, qos=1)
    sent = len(bad) + len(good)
    await wait_for(lambda: gw.messages - messages_before >= sent, timeout=20, what=f"{sent} messages received")
    assert gw.messages - messages_before == sent
    # every message accounted for: stored, or quarantined with a reason, or a repeat
    assert sum(decoder.outcomes.values()) - outcomes_before == sent
    assert set(gw.health().quarantined) <= {str(r) for r in Reason}
    # the gateway is still running and every good value arrived
    h = gw.health()
    assert h.state == "connected" and h.devices["broker"].errors.get("crash") is None
    await wait_for(lambda: all(_arrived(col, v) for _, _, v in good), timeout=10, what="the good readings")


def _arrived(col: Collector, value: float) -> bool:
    return any(bool(((b.value == value) & (b.quality < 128)).any()) for b in col.batches if len(b))


def test_non_finite_numbers_in_floats_strategy_are_counted(decoder: PayloadDecoder) -> None:
    payload = _dump({"points": ["V101.TT", "V102.LT"], "values": [math.inf, 3.0]})
    b = decoder.decode("batch/x", MqttPayloadFormat.BATCH, payload)
    assert b is not None and b.value.tolist() == [3.0]
    assert decoder.quarantine.counts() == {Reason.NON_FINITE: 1}
