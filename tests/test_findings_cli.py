"""`hazmon findings` as a user runs it: record, list, close with evidence, summary; bad input is a
clear error that records nothing; every change is in the audit trail under --by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sites" / "demo-tank-farm.yaml"


def _hazmon(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAZMON_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "hazmon", *args], capture_output=True, text=True, env=env, timeout=60)


async def test_findings_cli_record_close_summary(pg_url: str) -> None:
    assert _hazmon("site", "load", str(DEMO), url=pg_url).returncode == 0
    deadline = (date.today() + timedelta(days=7)).isoformat()
    add = _hazmon(
        "findings", "add", "--site", "demo-tank-farm", "--equipment", "T201", "--grade", "重大",
        "--description", "氨罐T201安全阀未按期校验", "--found-by", "王工", "--deadline", deadline,
        "--action", "送检安全阀", "--responsible", "设备科", "--by", "wang", url=pg_url,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    f = json.loads(add.stdout)
    assert f["installation"] == "HI-02" and f["grade"] == "major" and f["status"] == "open"

    bad = _hazmon("findings", "add", "--site", "demo-tank-farm", "--grade", "general", "--description", "x\x07",
                  "--found-by", "w", "--deadline", deadline, url=pg_url)  # fmt: skip
    assert bad.returncode == 2 and "control character" in bad.stderr
    unknown = _hazmon("findings", "add", "--site", "nowhere", "--grade", "general", "--description", "x",
                      "--found-by", "w", "--deadline", deadline, url=pg_url)  # fmt: skip
    assert unknown.returncode == 1 and "unknown site 'nowhere'" in unknown.stderr

    listed = _hazmon("findings", "list", url=pg_url)
    assert listed.returncode == 0 and "氨罐T201" in listed.stdout
    summary = json.loads(_hazmon("findings", "summary", "--json", url=pg_url).stdout)
    assert summary[0]["major_open"] == 1 and summary[0]["open"] == 1

    no_evidence = _hazmon("findings", "update", str(f["id"]), "--status", "closed", url=pg_url)
    assert no_evidence.returncode == 2 and "evidence" in no_evidence.stderr
    closed = _hazmon("findings", "close", str(f["id"]), "--evidence", "校验合格证 No. 123", "--by", "li", url=pg_url)
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["status"] == "closed"
    shown = json.loads(_hazmon("findings", "show", str(f["id"]), url=pg_url).stdout)
    assert [(h["action"], h["actor"]) for h in shown["history"]] == [
        ("finding.create", "wang"),
        ("finding.update", "li"),
    ]
    summary = json.loads(_hazmon("findings", "summary", "--json", url=pg_url).stdout)
    assert summary[0]["open"] == 0 and summary[0]["closed"] == 1
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM hazard_findings") == 1
    finally:
        await conn.close()
