"""`hazmon serve` loads its configuration whole or not at all (issue 11, item 11): site, rules and
gateway files are validated completely before anything is written, the site is written with its
audit row in one transaction, and a configuration error is one message naming the file or
variable, with exit status 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from api_helpers import RULES, SITE, SITE_FILE, demo_runtime

ROOT = Path(__file__).resolve().parents[1]
GATEWAYS = [ROOT / "gateways" / f"demo-{p}.yaml" for p in ("opcua", "modbus", "mqtt")]


def _serve(url: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "HAZMON_DATABASE_URL": url,
        "HAZMON_DATA_DIR": str(data_dir),
        "HAZMON_API_PORT": "1",  # never reached: every case here fails before the API starts
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "hazmon", "serve"], capture_output=True, text=True, env=full, timeout=120
    )


async def _state(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "sites": await conn.fetchval("SELECT count(*) FROM sites"),
            "tags": await conn.fetchval("SELECT count(*) FROM tags"),
            "audit": [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY seq")],
        }
    finally:
        await conn.close()


def _write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _assert_clean_failure(r: subprocess.CompletedProcess[str], *names: str) -> None:
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr, r.stderr
    for name in names:
        assert name in r.stderr, r.stderr


EMPTY = {"sites": 0, "tags": 0, "audit": ["audit.genesis"]}


async def test_a_bad_rule_file_leaves_the_database_unchanged(pg_url: str, tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad-rules.yaml", {"rules": [{"select": {"tags": ["NO.SUCH.TAG"]}, "limits": {}}]})
    r = _serve(
        pg_url,
        tmp_path,
        HAZMON_SITE=str(SITE_FILE),
        HAZMON_RULES=json.dumps([str(RULES[0]), str(bad)]),
    )
    _assert_clean_failure(r, "HAZMON_RULES", "bad-rules.yaml", "NO.SUCH.TAG")
    assert await _state(pg_url) == EMPTY


async def test_a_bad_gateway_file_leaves_the_database_unchanged(pg_url: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(GATEWAYS[1].read_text(encoding="utf-8"))
    doc["protocol"] = "profibus"
    bad = _write(tmp_path / "bad-gateway.yaml", doc)
    r = _serve(
        pg_url,
        tmp_path,
        HAZMON_SITE=str(SITE_FILE),
        HAZMON_RULES=json.dumps([str(p) for p in RULES]),
        HAZMON_GATEWAYS=json.dumps([str(GATEWAYS[0]), str(bad)]),
    )
    _assert_clean_failure(r, "HAZMON_GATEWAYS", "bad-gateway.yaml", "protocol")
    assert await _state(pg_url) == EMPTY


async def test_every_bad_file_is_named_at_once(pg_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing-gateway.yaml"
    bad = _write(tmp_path / "bad-gateway.yaml", {"id": "x"})
    r = _serve(pg_url, tmp_path, HAZMON_SITE=str(SITE_FILE), HAZMON_GATEWAYS=json.dumps([str(missing), str(bad)]))
    _assert_clean_failure(r, "missing-gateway.yaml", "bad-gateway.yaml")
    assert await _state(pg_url) == EMPTY


async def test_a_site_that_cannot_be_graded_leaves_the_database_unchanged(pg_url: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))
    doc["installations"][0]["chemicals"][0] = {"name": "unobtainium", "quantity_t": 10}
    bad = _write(tmp_path / "ungradable.yaml", doc)
    r = _serve(pg_url, tmp_path, HAZMON_SITE=str(bad))
    _assert_clean_failure(r, "HAZMON_SITE", "ungradable.yaml", "installations[0].chemicals[0]")
    assert await _state(pg_url) == EMPTY


async def test_another_sites_tag_of_the_same_id_is_no_refusal(pg_url: str, tmp_path: Path) -> None:
    """Tag ids are unique within their site: another site's V101.LT does not stop the demo site from
    loading (it used to be refused), and each V101.LT keeps its own permanent key across restarts."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO enterprises VALUES ('other', 'Other', '91110000MA0123456P'); "
            "INSERT INTO sites (id, enterprise_id, name, doc) VALUES ('other', 'other', 'Other', '{}'); "
            "INSERT INTO tags (id, site_id, equipment_id, name, kind, period_s, doc) "
            "VALUES ('V101.LT', 'other', 'X', 'same id', 'level', 1, '{}')"
        )
        other_key = await conn.fetchval("SELECT key FROM tags WHERE site_id = 'other' AND id = 'V101.LT'")
    finally:
        await conn.close()
    async with demo_runtime(pg_url, tmp_path / "a") as rt:
        assert [s.id for s in rt.sites] == [SITE]
        demo_key = rt.tags.key(f"{SITE}/V101.LT")
        assert rt.tags.key("other/V101.LT") == other_key != demo_key
    state = await _state(pg_url)
    assert state["sites"] == 2 and state["audit"] == ["audit.genesis", "site.load"]
    async with demo_runtime(pg_url, tmp_path / "b") as rt:  # a restart: the same keys
        assert rt.tags.key(f"{SITE}/V101.LT") == demo_key and rt.tags.key("other/V101.LT") == other_key
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT site_id, name, active FROM tags WHERE id = 'V101.LT' ORDER BY site_id")
    finally:
        await conn.close()
    # the other site's tag is untouched: not renamed, not retired by the demo site's load
    assert [tuple(r) for r in rows] == [(SITE, "LPG sphere 1 level", True), ("other", "same id", True)]


async def test_serve_writes_the_site_with_one_audit_row_per_change(pg_url: str, tmp_path: Path) -> None:
    async with demo_runtime(pg_url, tmp_path / "a") as rt:
        assert [s.id for s in rt.sites] == [SITE]
    state = await _state(pg_url)
    assert state["sites"] == 1 and state["audit"] == ["audit.genesis", "site.load"]
    # a restart with the same file changes nothing, and says so by writing nothing to the trail
    async with demo_runtime(pg_url, tmp_path / "b"):
        pass
    assert (await _state(pg_url))["audit"] == ["audit.genesis", "site.load"]
    # a changed file is a configuration change: audited, with who and what
    doc = yaml.safe_load(SITE_FILE.read_text(encoding="utf-8"))
    doc["site"]["name"] = "Renamed tank farm"
    changed = _write(tmp_path / "renamed.yaml", doc)
    from hazmon.config import load_settings
    from hazmon.runtime import run_runtime

    settings = load_settings(database_url=pg_url, data_dir=tmp_path / "c", site=changed, rules=RULES, gateways=[])
    async with run_runtime(settings):
        pass
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow("SELECT actor, target, site_id, detail FROM audit_log ORDER BY seq DESC LIMIT 1")
        assert await conn.fetchval("SELECT name FROM sites WHERE id = $1", SITE) == "Renamed tank farm"
    finally:
        await conn.close()
    detail = json.loads(row["detail"])
    assert (row["actor"], row["target"], row["site_id"]) == ("hazmon serve", SITE, SITE)
    assert detail["file"].endswith("renamed.yaml") and len(detail["sha256"]) == 64


@pytest.mark.parametrize("variable", ["HAZMON_RULES", "HAZMON_GATEWAYS"])
async def test_a_list_variable_that_is_not_json_names_itself(pg_url: str, tmp_path: Path, variable: str) -> None:
    r = _serve(pg_url, tmp_path, **{variable: "gateways/demo-opcua.yaml"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{variable}: cannot be parsed" in r.stderr
