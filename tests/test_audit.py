"""The audit trail: append-only, hash-chained, and `hazmon audit verify` names the first bad row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from api_helpers import demo_api, ingest, ref
from conftest import create_database, drop_database
from hazmon import audit
from hazmon.cli import main
from hazmon.storage.migrate import discover, migrate

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_url)
    try:
        yield c
    finally:
        await c.close()


async def _fill(conn: asyncpg.Connection, n: int = 5) -> None:
    for i in range(n):
        await audit.append(
            conn,
            actor="alice",
            token_id="0123456789ab",
            role="operator",
            action="alarm.acknowledge",
            target=f"demo-tank-farm/V10{i}.LT:level.HH",
            site_id="demo-tank-farm",
            detail={"comment": f"checked tank {i}", "from": "active_unack", "to": "active_ack"},
        )


async def _tamper(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """What someone with superuser rights could do: get around the append-only triggers."""
    async with conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute(sql, *args)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def _cli_verify(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    monkeypatch.setenv("HAZMON_DATABASE_URL", pg_url)
    code = await asyncio.to_thread(main, ["audit", "verify", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_untouched_log_verifies(
    conn: asyncpg.Connection, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = await _cli_verify(pg_url, monkeypatch, capsys)
    assert code == 0 and "ok: 1 rows" in text, text  # the genesis row written by the migration
    genesis = (await audit.recent(conn))[0]
    assert (genesis.seq, genesis.action, genesis.prev_hash) == (1, audit.GENESIS_ACTION, audit.GENESIS)
    await _fill(conn)
    result = await audit.verify(conn)
    assert result.ok and result.rows == 6 and result.head_seq == 6
    code, text = await _cli_verify(pg_url, monkeypatch, capsys)
    assert code == 0, text
    assert "ok: 6 rows" in text
    head = text.strip().rsplit("head ", 1)[1]
    code, text = await _cli_verify(pg_url, monkeypatch, capsys, "--anchor", head)
    assert code == 0, text


async def test_rows_cannot_be_updated_or_deleted_normally(conn: asyncpg.Connection) -> None:
    await _fill(conn, 2)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("DELETE FROM audit_log WHERE seq = 2")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("TRUNCATE audit_log")
    assert (await audit.verify(conn)).ok


async def test_edited_row_is_named(
    conn: asyncpg.Connection, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await _fill(conn)
    await _tamper(conn, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    result = await audit.verify(conn)
    assert result.finding is not None
    assert (result.finding.seq, result.finding.kind) == (3, "edited")
    code, text = await _cli_verify(pg_url, monkeypatch, capsys)
    assert code == 1
    assert "seq 3" in text and "edited" in text


async def test_edited_detail_and_time_are_caught(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    detail = json.dumps({"comment": "nothing happened", "from": "active_unack", "to": "active_ack"})
    await _tamper(conn, "UPDATE audit_log SET detail = $1 WHERE seq = 4", detail)
    finding = (await audit.verify(conn)).finding
    assert finding is not None and finding.seq == 4


async def test_time_edit_is_caught(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    await _tamper(conn, "UPDATE audit_log SET at = at - interval '1 hour' WHERE seq = 2")
    finding = (await audit.verify(conn)).finding
    assert finding is not None and (finding.seq, finding.kind) == (2, "edited")


async def test_deleted_row_is_named(
    conn: asyncpg.Connection, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await _fill(conn)
    await _tamper(conn, "DELETE FROM audit_log WHERE seq = 3")
    finding = (await audit.verify(conn)).finding
    assert finding is not None and (finding.seq, finding.kind) == (3, "deleted")
    code, text = await _cli_verify(pg_url, monkeypatch, capsys)
    assert code == 1 and "seq 3" in text and "deleted" in text


async def test_deleted_last_rows_are_caught_against_the_head(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    await _tamper(conn, "DELETE FROM audit_log WHERE seq >= 4")
    finding = (await audit.verify(conn)).finding
    assert finding is not None and (finding.seq, finding.kind) == (4, "deleted")
    assert "seq 4..6" in finding.message


async def test_renumbered_deletion_is_caught(conn: asyncpg.Connection) -> None:
    """Delete row 3 and renumber the rest so the seq has no gap: the chain still breaks at row 3."""
    await _fill(conn)
    await _tamper(conn, "DELETE FROM audit_log WHERE seq = 3")
    await _tamper(conn, "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
    finding = (await audit.verify(conn)).finding
    assert finding is not None and finding.seq == 3


async def test_inserted_row_is_named(conn: asyncpg.Connection) -> None:
    """A forged row appended with a correctly computed hash still does not match the head."""
    await _fill(conn, 2)
    last = await conn.fetchrow("SELECT * FROM audit_log WHERE seq = 3")
    forged = dict(last)
    forged.update(seq=4, actor="mallory", prev_hash=last["hash"])
    forged["hash"] = audit.row_hash(
        forged["prev_hash"],
        4,
        forged["at"],
        "mallory",
        forged["token_id"],
        forged["role"],
        forged["action"],
        forged["target"],
        forged["site_id"],
        forged["detail"],
    )
    cols = list(forged)
    await conn.execute(
        f"INSERT INTO audit_log ({', '.join(cols)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
        *forged.values(),
    )
    finding = (await audit.verify(conn)).finding
    assert finding is not None and (finding.seq, finding.kind) == (4, "inserted")


async def test_rewritten_row_with_recomputed_hash_breaks_the_chain(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    r = await conn.fetchrow("SELECT * FROM audit_log WHERE seq = 2")
    new_hash = audit.row_hash(
        r["prev_hash"],
        2,
        r["at"],
        "mallory",
        r["token_id"],
        r["role"],
        r["action"],
        r["target"],
        r["site_id"],
        r["detail"],
    )
    await _tamper(conn, "UPDATE audit_log SET actor = 'mallory', hash = $1 WHERE seq = 2", new_hash)
    finding = (await audit.verify(conn)).finding
    assert finding is not None and finding.seq == 3
    assert "seq 2" in finding.message


async def test_concurrent_appends_build_one_chain(pg_url: str, conn: asyncpg.Connection) -> None:
    pool = await asyncpg.create_pool(pg_url, min_size=4, max_size=4)
    try:

        async def one(i: int) -> None:
            async with pool.acquire() as c:
                await audit.append(c, actor=f"user{i}", action="alarm.comment", detail={"i": i})

        await asyncio.gather(*(one(i) for i in range(40)))
    finally:
        await pool.close()
    result = await audit.verify(conn)
    assert result.ok and result.rows == 41  # and the genesis row
    rows = await audit.recent(conn, limit=5)
    assert [r.seq for r in rows] == [41, 40, 39, 38, 37]


async def test_emptied_log_with_its_head_deleted_is_tampering(
    conn: asyncpg.Connection, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11, item 12: deleting every row and the head used to verify as "ok: empty"."""
    await _fill(conn, 3)
    await _tamper(conn, "DELETE FROM audit_log")
    await conn.execute("DELETE FROM audit_head")
    result = await audit.verify(conn)
    assert result.finding is not None and (result.finding.seq, result.finding.kind) == (1, "deleted")
    code, text = await _cli_verify(pg_url, monkeypatch, capsys)
    assert code == 1 and "BROKEN" in text and "empty" in text and "ok" not in text.split("BROKEN")[0]


async def test_genesis_row_deleted_with_the_rest_renumbered_is_caught(conn: asyncpg.Connection) -> None:
    await _fill(conn, 2)
    await _tamper(conn, "DELETE FROM audit_log WHERE seq = 1")
    finding = (await audit.verify(conn)).finding
    assert finding is not None and (finding.seq, finding.kind) == (1, "deleted")


async def test_a_log_with_rows_before_the_genesis_migration_keeps_them(pg_admin_url: str, tmp_path: Path) -> None:
    """A database whose trail already has rows when migration 041 runs gets no genesis row in the middle."""
    url = await create_database(pg_admin_url, migrated=False)
    c = await asyncpg.connect(url)
    try:
        for mig in discover():
            if mig.version < 41:
                (tmp_path / f"{mig.version:03d}_{mig.name}.sql").write_text(mig.sql, encoding="utf-8")
        await migrate(c, tmp_path)
        await _fill(c, 2)
        await migrate(c)
        result = await audit.verify(c)
        assert result.ok and result.rows == 2
        assert await c.fetchval("SELECT count(*) FROM audit_log WHERE action = $1", audit.GENESIS_ACTION) == 0
    finally:
        await c.close()
        await drop_database(pg_admin_url, url)


async def test_a_failed_operator_action_is_audited_as_refused(pg_url: str, tmp_path: Path) -> None:
    """Issue 11, item 12: an operator action that fails leaves a trace in the audit trail, with why."""
    async with demo_api(pg_url, tmp_path) as (rt, tokens, client):
        await ingest(rt, {"V101.GT1": 30.0})
        op = {"Authorization": f"Bearer {tokens.operator}"}
        alarm = ref("V101.GT1:gas.H")  # audited by its site-scoped id, however the operator named it
        assert (await client.post(f"/api/v1/alarms/{alarm}/ack", headers=op)).status_code == 200
        assert (await client.post("/api/v1/alarms/V101.GT1:gas.H/ack", headers=op)).status_code == 409
        assert (await client.post("/api/v1/alarms/NO.SUCH:gas.H/ack", headers=op)).status_code == 404
        too_long = {"reason": "maintenance", "duration_s": 10 * 86_400}
        r = await client.post("/api/v1/alarms/V101.GT1:gas.H/shelve", headers=op, json=too_long)
        assert r.status_code == 422, r.text
        trail = (await client.get("/api/v1/audit", headers={"Authorization": f"Bearer {tokens.admin}"})).json()
        refused = [e for e in trail if e["action"].endswith(".refused")]
        assert [(e["action"], e["target"], e["detail"]["status"]) for e in refused] == [
            ("alarm.shelve.refused", alarm, 422),
            ("alarm.acknowledge.refused", "NO.SUCH:gas.H", 404),
            ("alarm.acknowledge.refused", alarm, 409),
        ]
        assert all(e["actor"] == "alice" and e["role"] == "operator" for e in refused)
        assert refused[0]["site"] == "demo-tank-farm" and refused[0]["detail"]["duration_s"] == 864_000
        assert "acknowledged" in refused[2]["detail"]["reason"] and refused[2]["site"] == "demo-tank-farm"
        # the successful acknowledgement is audited as before, once
        assert [e["action"] for e in trail].count("alarm.acknowledge") == 1
        async with rt.db.pool.acquire() as conn:
            assert (await audit.verify(conn)).ok
