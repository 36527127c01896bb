"""Rollups and retention on both databases, and the regulatory retention floor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from hazmon.reading import US_PER_S, ReadingBatch
from hazmon.storage.database import Database, connect
from hazmon.storage.maintenance import Maintenance, RetentionError, apply_retention, refresh_rollups
from hazmon.storage.store import ReadingStore


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await connect(db_url, pool_size=2)
    yield database
    await database.close()


async def test_rollups_match_raw_aggregates(db: Database) -> None:
    store = ReadingStore(db.pool, db.caps)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    n = 7200  # two hours at 1 Hz
    values = np.arange(n, dtype=float)
    values[10] = np.nan
    await store.write(
        ReadingBatch.from_columns(np.full(n, 3), int(t0.timestamp()) * US_PER_S + np.arange(n) * US_PER_S, values)
    )
    async with db.pool.acquire() as conn:
        await refresh_rollups(conn, db.caps, now=t0 + timedelta(hours=2))
        m = await conn.fetch("SELECT * FROM readings_1m WHERE tag = 3 ORDER BY bucket")
        h = await conn.fetch("SELECT * FROM readings_1h WHERE tag = 3 ORDER BY bucket")
        assert len(m) == 120 and len(h) == 2
        assert m[0]["n"] == 59 and m[0]["first"] == 0 and m[0]["last"] == 59  # the NaN is left out
        assert m[1]["min"] == 60 and m[1]["max"] == 119 and m[1]["sum"] == sum(range(60, 120))
        assert h[1]["first"] == 3600 and h[1]["last"] == 7199 and h[1]["n"] == 3600
        # late data inside the recompute window is folded in on the next refresh (half a second after a
        # stored reading: a reading at a stored (tag, time) is a duplicate and is left out)
        late = ReadingBatch.from_columns(
            [3], [int((t0 + timedelta(hours=1, minutes=59)).timestamp()) * US_PER_S + US_PER_S // 2], [1e6]
        )
        await store.write(late)
        await refresh_rollups(conn, db.caps, now=t0 + timedelta(hours=2, minutes=5))
        assert await conn.fetchval("SELECT max FROM readings_1h WHERE tag = 3 ORDER BY bucket DESC LIMIT 1") == 1e6


async def test_retention_drops_old_data_and_keeps_recent(db: Database) -> None:
    store = ReadingStore(db.pool, db.caps)
    now_us = int(datetime.now(UTC).timestamp()) * US_PER_S
    old = now_us - 40 * 86_400 * US_PER_S
    await store.write(ReadingBatch.from_columns([1, 1], [old, now_us - 3600 * US_PER_S], [1.0, 2.0]))
    async with db.pool.acquire() as conn:
        await apply_retention(conn, db.caps, 30)
        values = [r["value"] for r in await conn.fetch("SELECT value FROM readings ORDER BY time")]
    assert values == [2.0]


async def test_retention_below_thirty_days_is_refused(db: Database) -> None:
    async with db.pool.acquire() as conn:
        with pytest.raises(RetentionError, match=">= 30 days"):
            await apply_retention(conn, db.caps, 7)
    with pytest.raises(RetentionError):
        Maintenance(db, retention_days=29)
