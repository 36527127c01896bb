"""Store-and-forward into a real PostgreSQL, with the database cut off by a TCP proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

from gateway_helpers import wait_for
from hazmon.backoff import BackoffConfig
from hazmon.reading import ReadingBatch
from hazmon.storage.database import Database, connect
from hazmon.storage.forwarder import Forwarder
from hazmon.storage.spool import Spool, decode_payload, encode_record
from hazmon.storage.store import ReadingStore
from tcpproxy import TcpProxy


def via(url: str, port: int) -> str:
    u = urlsplit(url)
    return urlunsplit(u._replace(netloc=f"{u.username}@127.0.0.1:{port}"))


def batch(i: int, n: int = 50) -> ReadingBatch:
    # one tag per position, timestamps unique per (batch, position): duplicates would show in SQL
    return ReadingBatch.from_columns(np.arange(n), 1_767_225_600_000_000 + i * 1000, np.full(n, float(i)), 0)


async def stored(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        total = await conn.fetchval("SELECT count(*) FROM readings")
        distinct = await conn.fetchval("SELECT count(*) FROM (SELECT DISTINCT tag, time FROM readings) d")
        return int(total), int(distinct)
    finally:
        await conn.close()


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[TcpProxy, Database]]:
    u = urlsplit(pg_url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    db = await connect(via(pg_url, proxy.port), pool_size=2, run_migrations=False)
    yield proxy, db
    await proxy.come_up()
    await db.close()
    await proxy.stop()


async def test_batches_reach_the_store_in_order_once(pg_url: str, tmp_path: Path) -> None:
    db = await connect(pg_url, pool_size=2, run_migrations=False)
    try:
        async with Forwarder(ReadingStore(db.pool, db.caps), tmp_path / "spool") as fwd:
            for i in range(200):
                await fwd.put(batch(i))
            assert await fwd.flush(30)
            st = fwd.stats()
        assert st.stored_readings == 200 * 50 and st.pending_batches == 0 and st.dropped_readings == 0
        assert st.writes < 200  # consecutive batches were merged while writes were in flight
        assert await stored(pg_url) == (10_000, 10_000)
        # a crash before the cursor was saved: everything is replayed, the same merged groups
        # under the same batch ids, and the store keeps nothing twice
        (tmp_path / "spool" / "cursor").write_text("0")
        async with Forwarder(ReadingStore(db.pool, db.caps), tmp_path / "spool") as fwd:
            assert fwd.stats().pending_batches == 200
            assert await fwd.flush(30)
            st = fwd.stats()
        assert st.stored_readings == 0 and st.already_stored_readings == 10_000
        assert await stored(pg_url) == (10_000, 10_000)
    finally:
        await db.close()


async def test_database_outage_spools_then_replays_without_loss_or_duplicates(
    proxied: tuple[TcpProxy, Database], pg_url: str, tmp_path: Path
) -> None:
    proxy, db = proxied
    store = ReadingStore(db.pool, db.caps, acquire_timeout_s=1.0)
    fwd = Forwarder(store, tmp_path / "spool", write_timeout_s=2.0)
    async with fwd:
        for i in range(50):
            await fwd.put(batch(i))
        await proxy.go_down()
        for i in range(50, 150):
            await fwd.put(batch(i))
            await asyncio.sleep(0.005)
        await wait_for(lambda: not fwd.stats().store_available, what="outage noticed")
        assert fwd.stats().pending_batches > 0
        await proxy.come_up()
        assert await fwd.flush(30)
        st = fwd.stats()
        assert st.outages == 1 and st.store_available
    assert await stored(pg_url) == (150 * 50, 150 * 50)


async def test_kill_9_then_restart_stores_everything_once(pg_url: str, tmp_path: Path) -> None:
    """A process puts batches with the database unreachable, is killed; a new one replays."""
    spool = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        import numpy as np
        from hazmon.storage.forwarder import Forwarder
        from hazmon.reading import ReadingBatch
        from hazmon.storage.store import StoreUnavailable

        class Down:
            async def write(self, batch):
                raise StoreUnavailable("down")

        async def main():
            fwd = Forwarder(Down(), __import__("pathlib").Path({str(spool)!r}))
            await fwd.start()
            for i in range(300):
                await fwd.put(ReadingBatch.from_columns(
                    np.arange(50), 1_767_225_600_000_000 + i * 1000, np.full(50, float(i)), 0))
            print("put", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    p = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == -signal.SIGKILL and "put" in p.stdout, p.stderr
    db = await connect(pg_url, pool_size=2, run_migrations=False)
    try:
        async with Forwarder(ReadingStore(db.pool, db.caps), spool) as fwd:
            assert fwd.stats().pending_batches == 300
            assert await fwd.flush(30)
        # and once more: a replay of an already stored spool stores nothing twice
        assert await stored(pg_url) == (300 * 50, 300 * 50)
    finally:
        await db.close()
    assert not any(os.scandir(spool / "rejected")) if (spool / "rejected").exists() else True


def poisoned(i: int, bad: int, n: int = 20) -> ReadingBatch:
    """A batch whose reading ``bad`` has a time PostgreSQL refuses (before 4713 BC: out of its range)."""
    b = batch(i, n)
    b.ts[bad] = -(1 << 62)
    return b


async def test_refused_readings_are_set_aside_alone_counted_and_the_rest_stored(pg_url: str, tmp_path: Path) -> None:
    db = await connect(pg_url, pool_size=2, run_migrations=False)
    fast = BackoffConfig(initial_s=0.01, max_s=0.05)
    try:
        async with Forwarder(ReadingStore(db.pool, db.caps), tmp_path / "spool", retry=fast, max_refusals=2) as fwd:
            await fwd.put(poisoned(0, bad=7))
            await fwd.put(batch(1, 20))
            assert await fwd.flush(30)
            st = fwd.stats()
            assert st.dropped_by_reason["refused_by_store"] == 1 and st.dropped_readings == 1
            assert (st.rejected_batches, st.rejected_readings) == (1, 1)
            assert st.stored_readings == 39
            assert fwd.dropped_for([7])["refused_by_store"] == 1
            assert fwd.dropped_for([6, 8]) == {"refused_by_store": 0, "spool_unwritable": 0}
        assert await stored(pg_url) == (39, 39)
        kept = list((tmp_path / "spool" / "rejected").glob("*.rec"))
        assert len(kept) == 1
        rec = decode_payload(kept[0].read_bytes()[8:])
        assert rec.batch.tag.tolist() == [7] and rec.batch.ts.tolist() == [-(1 << 62)]
    finally:
        await db.close()


async def test_refused_readings_that_cannot_be_set_aside_stay_in_the_spool(pg_url: str, tmp_path: Path) -> None:
    """Nothing is acknowledged that is not kept somewhere: with spool/rejected unusable (a file where
    the directory goes), the refused batch stays in the spool and the drain fails and is restarted;
    once the disk is fixed, it is set aside and the pipeline goes on."""
    db = await connect(pg_url, pool_size=2, run_migrations=False)
    fast = BackoffConfig(initial_s=0.01, max_s=0.05)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "rejected").write_text("not a directory")
    try:
        async with Forwarder(ReadingStore(db.pool, db.caps), tmp_path / "spool", retry=fast, max_refusals=2) as fwd:
            await fwd.put(poisoned(0, bad=3))
            await fwd.put(batch(1, 20))
            await wait_for(lambda: fwd.drain_failures >= 1, what="the drain to fail")
            st = fwd.stats()
            assert st.pending_batches == 2 and st.rejected_batches == 0
            assert st.last_error is not None and "cannot keep refused readings" in st.last_error
            (tmp_path / "spool" / "rejected").unlink()
            assert await fwd.flush(30)
            st = fwd.stats()
            assert st.rejected_readings == 1 and st.dropped_readings == 1 and st.pending_batches == 0
        assert await stored(pg_url) == (39, 39)
    finally:
        await db.close()


async def test_a_spool_that_cannot_be_written_sends_batches_straight_to_the_store(
    proxied: tuple[TcpProxy, Database], pg_url: str, tmp_path: Path
) -> None:
    """A directory where the next spool segment goes: batches are written to the store directly; with
    the database away too they are lost, and counted (per tag) as spool_unwritable."""
    proxy, db = proxied
    one = len(encode_record(0, uuid.uuid4(), batch(0)))
    spool = tmp_path / "spool"
    async with Forwarder(
        ReadingStore(db.pool, db.caps, acquire_timeout_s=1.0), spool, segment_bytes=one * 10, write_timeout_s=2.0
    ) as fwd:
        for i in range(10):
            await fwd.put(batch(i))
        (spool / f"{10:020d}.seg").mkdir()
        await fwd.put(batch(10))  # the spool cannot take it: stored directly
        assert fwd.stats().bypassed_readings == 50
        await proxy.go_down()
        await fwd.put(batch(11))  # neither can the store: lost, and counted
        st = fwd.stats()
        assert st.dropped_by_reason["spool_unwritable"] == 50 and st.dropped_readings == 50
        assert fwd.dropped_for(range(50))["spool_unwritable"] == 50
        (spool / f"{10:020d}.seg").rmdir()
        await proxy.come_up()
        await fwd.put(batch(12))
        assert await fwd.flush(30)
    assert await stored(pg_url) == (12 * 50, 12 * 50)


async def test_a_drain_that_fails_on_a_broken_segment_is_restarted_and_loses_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    """A real disk failure under the drain (a directory where a segment was): the drain fails, is
    restarted with backoff, and once the segment is back everything is stored, once."""
    one = len(encode_record(0, uuid.uuid4(), batch(0)))
    spool = tmp_path / "spool"
    sp = Spool(spool, segment_bytes=one * 10)
    for i in range(30):
        sp.append(batch(i))
    sp.close()
    db = await connect(pg_url, pool_size=2, run_migrations=False)
    try:
        fwd = Forwarder(ReadingStore(db.pool, db.caps), spool)
        second = sorted(spool.glob("*.seg"))[1]
        second.rename(tmp_path / "aside")
        second.mkdir()
        async with fwd:
            await wait_for(lambda: fwd.drain_failures >= 1, what="the drain to fail")
            assert fwd.stats().pending_batches >= 20  # stopped at the broken segment, nothing skipped
            second.rmdir()
            (tmp_path / "aside").rename(second)
            assert await fwd.flush(30)
            assert fwd.stats().dropped_readings == 0
        assert await stored(pg_url) == (30 * 50, 30 * 50)
    finally:
        await db.close()
