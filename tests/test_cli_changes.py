"""Configuration changes from the command line are applied and audited together (issue 11, item 12):
`hazmon site load` and `hazmon token create|revoke` each write their audit row in the transaction of
the change; a refused change writes neither. And `hazmon rules check` reports a selector that matches
no tag (item 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sites" / "demo-tank-farm.yaml"
RULES = sorted((ROOT / "alarm_rules").glob("*.yaml"))


def _hazmon(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"HAZMON_DATABASE_URL": url} if url else {})}
    return subprocess.run([sys.executable, "-m", "hazmon", *args], capture_output=True, text=True, env=env, timeout=60)


async def _trail(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT actor, action, target, site_id, detail FROM audit_log ORDER BY seq")
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
    finally:
        await conn.close()


async def test_site_load_is_audited_once_per_change(pg_url: str, tmp_path: Path) -> None:
    first = _hazmon("site", "load", str(DEMO), url=pg_url)
    assert first.returncode == 0, first.stderr
    trail = await _trail(pg_url)
    assert [e["action"] for e in trail] == ["audit.genesis", "site.load"]
    load = trail[-1]
    assert load["actor"].startswith("cli") and load["target"] == load["site_id"] == "demo-tank-farm"
    assert load["detail"]["file"] == str(DEMO) and "81 added" in load["detail"]["summary"]
    # the same file again changes nothing, and the trail says nothing more
    again = _hazmon("site", "load", str(DEMO), url=pg_url)
    assert again.returncode == 0, again.stderr
    assert len(await _trail(pg_url)) == 2
    # a changed file is audited
    doc = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    doc["tags"][0]["name"] = "renamed"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    r = _hazmon("site", "load", str(changed), url=pg_url)
    assert r.returncode == 0, r.stderr
    trail = await _trail(pg_url)
    assert [e["action"] for e in trail] == ["audit.genesis", "site.load", "site.load"]
    assert trail[-1]["detail"]["file"] == str(changed)


async def test_site_load_beside_another_sites_tag_of_the_same_id(pg_url: str) -> None:
    """Another site's V101.LT is no refusal (tag ids are unique within their site): the demo site is
    loaded and audited, the other site's tag is left as it was, with its key."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO enterprises VALUES ('other', 'Other', '91110000MA0123456P'); "
            "INSERT INTO sites (id, enterprise_id, name, doc) VALUES ('other', 'other', 'Other', '{}'); "
            "INSERT INTO tags (id, site_id, equipment_id, name, kind, period_s, doc) "
            "VALUES ('V101.LT', 'other', 'X', 'same id', 'level', 1, '{}')"
        )
        before = await conn.fetchrow("SELECT key, name, active FROM tags WHERE site_id = 'other'")
    finally:
        await conn.close()
    r = _hazmon("site", "load", str(DEMO), url=pg_url)
    assert r.returncode == 0, r.stderr
    trail = await _trail(pg_url)
    assert [e["action"] for e in trail] == ["audit.genesis", "site.load"]
    assert trail[-1]["site_id"] == "demo-tank-farm" and "81 added" in trail[-1]["detail"]["summary"]
    conn = await asyncpg.connect(pg_url)
    try:
        after = await conn.fetchrow("SELECT key, name, active FROM tags WHERE site_id = 'other'")
        demo_key = await conn.fetchval("SELECT key FROM tags WHERE site_id = 'demo-tank-farm' AND id = 'V101.LT'")
    finally:
        await conn.close()
    assert tuple(after) == tuple(before) and demo_key is not None and demo_key != before["key"]


async def test_token_changes_from_the_cli_are_audited(pg_url: str) -> None:
    made = _hazmon("token", "create", "--role", "regulator", "--enterprise", "ecs", "--name", "ruth", url=pg_url)
    assert made.returncode == 0, made.stderr
    token_id = made.stdout.strip().split("_")[1]
    revoked = _hazmon("token", "revoke", token_id, url=pg_url)
    assert revoked.returncode == 0, revoked.stderr
    trail = await _trail(pg_url)
    create, revoke = trail[-2], trail[-1]
    assert (create["action"], create["target"]) == ("token.create", token_id)
    assert create["detail"] == {"role": "regulator", "sites": [], "enterprises": ["ecs"], "name": "ruth"}
    assert (revoke["action"], revoke["target"]) == ("token.revoke", token_id)
    assert create["actor"].startswith("cli") and revoke["actor"] == create["actor"]
    # a refused creation (an operator without a scope) leaves neither a token nor an audit row
    bad = _hazmon("token", "create", "--role", "operator", url=pg_url)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(await _trail(pg_url)) == len(trail)


def test_rules_check_reports_a_match_that_selects_no_tag(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        yaml.safe_dump({"rules": [{"select": {"match": "V10?.LTT"}, "limits": {"HH": {"value": 95}}}]}),
        encoding="utf-8",
    )
    r = _hazmon("rules", "check", *map(str, RULES), str(typo), "--site", str(DEMO))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{typo}:rules[0].select.match" in r.stderr and "matches no tag of demo-tank-farm" in r.stderr


def test_rules_check_warns_of_a_preset_that_does_not_apply_to_the_site() -> None:
    r = _hazmon("rules", "check", *map(str, RULES), "--site", str(DEMO))
    assert r.returncode == 0, r.stderr
    assert "ok: " in r.stdout
    # the demo site has no hydrogen sulphide detector: the H2S preset selects nothing there
    assert "gas-detectors.yaml:rules[2].select {gas_class: toxic, substance: H2S} matches no tag" in r.stderr
