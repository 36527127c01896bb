"""`GET /metrics`: Prometheus text format with the figures an operator of hazmon watches."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from api_helpers import Tokens, demo_api, ingest
from hazmon.runtime import Runtime

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def canonical(sample: str) -> str:
    """'name{b="2",a="1"}' -> 'name{a="1",b="2"}': label order carries no meaning in the format."""
    name, _, rest = sample.partition("{")
    if not rest:
        return sample
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(LABEL.findall(rest))) + "}"


class Samples(dict[str, float]):
    def __getitem__(self, key: str) -> float:
        return super().__getitem__(canonical(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(canonical(key))


def parse(text: str) -> Samples:
    """Samples by 'name{labels}', checking every line against the exposition format."""
    samples = Samples()
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in {"counter", "gauge", "histogram"}
            assert name not in typed, f"family {name} declared twice"
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        family = re.sub(r"_(bucket|sum|count|total)$", "", m.group(1))
        assert m.group(1) in typed or family in typed, f"{m.group(1)} has no TYPE line"
        samples[canonical(line.rsplit(" ", 1)[0])] = float(m.group(4).replace("+Inf", "inf"))
    return samples


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    async with demo_api(pg_url, tmp_path, with_modbus=True) as (rt, tokens, client):
        yield rt, tokens, client


async def test_metrics_count_readings_alarms_devices_and_spool(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    rt, tokens, c = env
    h = {"Authorization": f"Bearer {tokens.engineer}"}
    before = parse((await c.get("/metrics", headers=h)).text)
    await ingest(rt, {"V101.GT1": 30.0, "V102.GT1": 55.0, "V101.LT": 5.0})
    r = await c.get("/metrics", headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse(r.text)
    assert m["hazmon_readings_total"] - before["hazmon_readings_total"] == 3
    assert m["hazmon_batch_readings_count"] - before["hazmon_batch_readings_count"] == 1
    assert m['hazmon_batch_readings_bucket{le="10.0"}'] - before['hazmon_batch_readings_bucket{le="10.0"}'] == 1
    assert m["hazmon_engine_batch_seconds_count"] > before["hazmon_engine_batch_seconds_count"]
    assert m['hazmon_alarms{state="active_unack",priority="high"}'] == 2  # V101.GT1 H, V102.GT1 H
    assert m['hazmon_alarms{state="active_unack",priority="critical"}'] == 1  # V102.GT1 HH
    assert m['hazmon_alarms{state="shelved",priority="low"}'] == 0
    assert m['hazmon_gateway_up{gateway="demo-modbus",protocol="modbus"}'] == 0
    assert m['hazmon_device_connected{gateway="demo-modbus",device="PLC-NH3"}'] == 0
    assert 'hazmon_device_stale{gateway="demo-modbus",device="PLC-MEOH"}' in m
    assert m["hazmon_store_available"] == 1
    assert "hazmon_spool_pending_readings" in m and "hazmon_spool_bytes" in m
    assert m["hazmon_engine_running"] == 1
    assert rt.forwarder is not None and await rt.forwarder.flush(10)
    after = parse((await c.get("/metrics", headers=h)).text)
    assert after["hazmon_db_write_seconds_count"] >= 1


async def test_metrics_need_a_system_role(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, c = env
    assert (await c.get("/metrics")).status_code == 401
    assert (await c.get("/metrics", headers={"Authorization": f"Bearer {tokens.operator}"})).status_code == 403
    assert (await c.get("/metrics", headers={"Authorization": f"Bearer {tokens.admin}"})).status_code == 200


def test_histogram_buckets_and_label_escaping() -> None:
    registry = CollectorRegistry()
    h = Histogram("t_seconds", "test", buckets=(0.1, 1), registry=registry)
    for v in (0.05, 0.1, 0.5, 3):
        h.observe(v)
    info = Gauge("t_info", 'a label with "quotes" and \\ and\nnewline', ["v"], registry=registry)
    info.labels('a"b\\c\nd').set(1)
    text = generate_latest(registry).decode()
    m = parse(text)
    assert m['t_seconds_bucket{le="0.1"}'] == 2  # le is inclusive
    assert m['t_seconds_bucket{le="1.0"}'] == 3
    assert m['t_seconds_bucket{le="+Inf"}'] == 4 and m["t_seconds_count"] == 4
    assert m["t_seconds_sum"] == pytest.approx(3.65)
    assert 't_info{v="a\\"b\\\\c\\nd"} 1.0' in text
