"""The database verbs as a user runs them: `hazmon migrate` and `hazmon site load`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sites" / "demo-tank-farm.yaml"


def _hazmon(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAZMON_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "hazmon", *args], capture_output=True, text=True, env=env, timeout=60)


async def test_migrate_twice_is_a_no_op(pg_url: str) -> None:
    first = _hazmon("migrate", url=pg_url)
    second = _hazmon("migrate", url=pg_url)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "schema version" in second.stdout
    assert "applied migration" not in second.stderr


async def test_site_load_then_broken_file_changes_nothing(pg_url: str, tmp_path: Path) -> None:
    ok = _hazmon("site", "load", str(DEMO), url=pg_url)
    assert ok.returncode == 0, ok.stderr
    assert "81 added" in ok.stdout
    doc = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    doc["tags"][0]["name"] = "renamed"
    doc["tags"][1]["range"] = [10, 0]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    bad = _hazmon("site", "load", str(broken), url=pg_url)
    assert bad.returncode == 2
    assert "tags[1]" in bad.stderr
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT name FROM tags WHERE id = $1", doc["tags"][0]["id"]) != "renamed"
        assert await conn.fetchval("SELECT count(*) FROM tags") == 81
    finally:
        await conn.close()
