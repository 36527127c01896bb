"""Store-and-forward into a real PostgreSQL, with the database cut off by a TCP proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

from gateway_helpers import wait_for
from hazmon.reading import ReadingBatch
from hazmon.storage.database import Database, connect
from hazmon.storage.forwarder import Forwarder
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
