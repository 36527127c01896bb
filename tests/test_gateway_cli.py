"""`hazmon gateway check` and `hazmon gateway discover`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml

from gateway_helpers import Collector, OpcServer, wait_for
from hazmon.cli import main
from hazmon.gateways import open_gateway
from hazmon.gateways.config import OpcUaGateway, load_gateway_config
from hazmon.plant.tag import TagIndex

ROOT = Path(__file__).resolve().parents[1]


def test_check_accepts_the_demo_files_against_the_site(capsys: object) -> None:
    files = sorted(str(p) for p in (ROOT / "gateways").glob("demo-*.yaml"))
    assert main(["gateway", "check", *files, "--site", str(ROOT / "sites/demo-tank-farm.yaml")]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "demo-modbus" in out and "reads per cycle" in out


def test_check_lists_every_problem_with_its_path(tmp_path: Path, capsys: object) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "gateway": {
                    "id": "m",
                    "protocol": "modbus",
                    "site": "demo-tank-farm",
                    "devices": [
                        {
                            "id": "d",
                            "unit": 300,
                            "tags": [
                                {"tag": "T201.LT", "address": 0},
                                {"tag": "T201.TT", "address": 1, "type": "int16"},
                            ],
                        }
                    ],
                }
            }
        )
    )
    assert main(["gateway", "check", str(bad)]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "gateway.devices[0].unit: must be <= 255" in err
    bad.write_text(bad.read_text().replace("unit: 300", "unit: 3"))
    assert main(["gateway", "check", str(bad)]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "gateway.devices[0].tags[1].address: holding 1 already used by T201.LT" in err


async def test_discover_writes_a_skeleton_that_works(tmp_path: Path) -> None:
    server = OpcServer(devices=2, per_device=3)
    await server.start()
    out = tmp_path / "discovered.yaml"
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hazmon",
            "gateway",
            "discover",
            server.endpoint,
            "-o",
            str(out),
            "--site",
            "x",
            stderr=subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        cfg = load_gateway_config(out)
        assert isinstance(cfg, OpcUaGateway)
        assert cfg.namespace == "http://examples.freeopcua.github.io"
        assert sorted(t.node for t in cfg.tags) == sorted(f"s={n}" for n in server.names())
        assert sorted(t.tag for t in cfg.tags) == sorted(f"Dev{d}.Dev{d}.V{i}" for d in range(2) for i in range(3))
        index = TagIndex([t.tag for t in cfg.tags])
        gw = open_gateway(cfg, index, data_dir=None)
        async with gw, Collector(gw) as col:
            await server.write(9.0)
            await wait_for(lambda: all(col.latest(k) == 9.0 for _, k in index.items()), what="data via skeleton")
    finally:
        await server.stop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hazmon",
        "gateway",
        "discover",
        server.endpoint,
        "--timeout",
        "1",
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"cannot browse" in err


def test_check_shows_the_tags_a_template_expands_to(tmp_path: Path, capsys: object) -> None:
    f = tmp_path / "tanks.yaml"
    f.write_text(
        """
gateway:
  id: tank-gauges
  protocol: modbus
  site: x
  devices:
  - id: RTU-BRIDGE
    host: 10.0.0.7
    unit: 7
    word_order: little
    templates:
    - {tag: "T{n:03d}.LT", count: 100, address: 0, type: float32}
    tags:
    - {tag: GDS.CH03, address: 300, type: uint16, bit: 3}
    - {tag: FT1.FQ, address: 302, type: int32, scale: 0.01, word_order: big}
"""
    )
    assert main(["gateway", "check", str(f)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "102 tags in 3 reads per cycle" in out and "on 1 connection(s)" in out
    lines = out.splitlines()
    assert any(line.split()[:5] == ["T001.LT", "holding", "0", "float32", "CDAB"] for line in lines)
    assert any(line.split()[:4] == ["T100.LT", "holding", "198", "float32"] for line in lines)
    assert any(line.split()[:6] == ["GDS.CH03", "holding", "300", "uint16", "bit", "3"] for line in lines)
    assert any(line.split()[:6] == ["FT1.FQ", "holding", "302", "int32", "ABCD", "x0.01+0"] for line in lines)
