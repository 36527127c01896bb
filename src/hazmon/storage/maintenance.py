"""Periodic storage maintenance: 1-minute and 1-hour rollups, retention, and the batch ledger.

On a licensed TimescaleDB (the Community edition: compression and retention policies available)
``apply_edition_features`` enables compression of chunks older than a day, segmented by tag, and
hands retention to a TimescaleDB policy. Elsewhere — the Apache edition and plain PostgreSQL —
hazmon drops old chunks (TimescaleDB) or deletes old rows (PostgreSQL) on a schedule. The 1-minute
and 1-hour rollups are maintained by hazmon on every edition (same tables, same queries), so a
query never depends on which edition runs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from hazmon.config import MIN_RETENTION_DAYS
from hazmon.reading import Quality
from hazmon.storage.database import Capabilities, Database
from hazmon.storage.store import StoreError, guarded

log = logging.getLogger(__name__)

ROLLUPS = {"readings_1m": timedelta(minutes=1), "readings_1h": timedelta(hours=1)}
LATE_DATA = timedelta(minutes=2)  # raw data arriving up to this late is folded into the rollups
BATCH_LEDGER_KEEP = timedelta(days=7)


class RetentionError(ValueError):
    pass


def _bucket_sql(caps: Capabilities, width: timedelta, column: str = "time") -> str:
    seconds = int(width.total_seconds())
    if caps.timescaledb:
        return f"time_bucket(interval '{seconds} seconds', {column})"
    return f"date_bin(interval '{seconds} seconds', {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


async def refresh_rollup(
    conn: asyncpg.Connection, caps: Capabilities, table: str, start: datetime, end: datetime
) -> int:
    """Recompute the rollup buckets of ``table`` that fall in [start, end); returns buckets written.

    The 1-minute rollup is computed from raw readings (good and uncertain quality, NaN left out);
    the 1-hour rollup from the 1-minute rollup, so an hourly refresh never rescans raw data.
    """
    width = ROLLUPS[table]
    if table == "readings_1m":
        first = "first(value, time)" if caps.timescaledb else "(array_agg(value ORDER BY time))[1]"
        last = "last(value, time)" if caps.timescaledb else "(array_agg(value ORDER BY time DESC))[1]"
        select = f"""
            SELECT {_bucket_sql(caps, width)} AS b, tag, count(*), sum(value), min(value), max(value), {first}, {last}
            FROM readings
            WHERE time >= $1 AND time < $2 AND quality < {int(Quality.BAD)} AND value <> 'NaN'
            GROUP BY b, tag"""
    else:
        select = f"""
            SELECT {_bucket_sql(caps, width, "bucket")} AS b, tag, sum(n), sum(sum), min(min), max(max),
                   (array_agg(first ORDER BY bucket))[1], (array_agg(last ORDER BY bucket DESC))[1]
            FROM readings_1m
            WHERE bucket >= $1 AND bucket < $2
            GROUP BY b, tag"""
    sql = f"""
        INSERT INTO {table} (bucket, tag, n, sum, min, max, first, last)
        {select}
        ON CONFLICT (tag, bucket) DO UPDATE SET n = EXCLUDED.n, sum = EXCLUDED.sum, min = EXCLUDED.min,
            max = EXCLUDED.max, first = EXCLUDED.first, last = EXCLUDED.last
    """
    status = await conn.execute(sql, start, end)
    return int(status.rsplit(" ", 1)[-1])


def _floor(t: datetime, width: timedelta) -> datetime:
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // width) * width


async def refresh_rollups(conn: asyncpg.Connection, caps: Capabilities, now: datetime | None = None) -> None:
    """Bring both rollups up to the last complete bucket, recomputing recent buckets for late data."""
    now = now or datetime.now(UTC)
    for table, width in ROLLUPS.items():
        mark = await conn.fetchval("SELECT value FROM maintenance_state WHERE name = $1", table)
        end = _floor(now, width)
        if mark is None:
            source = "readings" if table == "readings_1m" else "readings_1m"
            column = "time" if table == "readings_1m" else "bucket"
            oldest = await conn.fetchval(f"SELECT min({column}) FROM {source}")
            if oldest is None:
                continue
            start = _floor(oldest, width)
        else:
            start = _floor(mark - max(LATE_DATA, width), width)
        if start >= end:
            continue
        await refresh_rollup(conn, caps, table, start, end)
        await conn.execute(
            "INSERT INTO maintenance_state (name, value) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            table,
            end,
        )


async def apply_retention(conn: asyncpg.Connection, caps: Capabilities, days: int) -> None:
    """Drop raw readings older than ``days`` (never fewer than the 30 days the regulation requires)."""
    if days < MIN_RETENTION_DAYS:
        raise RetentionError(f"retention must be >= {MIN_RETENTION_DAYS} days, got {days}")
    cutoff = datetime.now(UTC) - timedelta(days=days)
    if caps.timescaledb:
        await conn.execute("SELECT drop_chunks('readings', older_than => $1::timestamptz)", cutoff)
    else:
        await conn.execute("DELETE FROM readings WHERE time < $1", cutoff)
    await conn.execute("DELETE FROM ingest_batches WHERE written_at < $1", datetime.now(UTC) - BATCH_LEDGER_KEEP)


async def apply_edition_features(conn: asyncpg.Connection, caps: Capabilities, retention_days: int) -> list[str]:
    """On a licensed TimescaleDB: compression of chunks older than a day segmented by tag, and a
    retention policy. Returns what was enabled; nothing on the Apache edition or plain PostgreSQL,
    where ``Maintenance`` does the equivalent work."""
    if not caps.licensed:
        return []
    if retention_days < MIN_RETENTION_DAYS:
        raise RetentionError(f"retention must be >= {MIN_RETENTION_DAYS} days, got {retention_days}")
    await conn.execute("ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'tag')")
    await conn.execute("SELECT add_compression_policy('readings', interval '1 day', if_not_exists => true)")
    await conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
    await conn.execute(
        "SELECT add_retention_policy('readings', make_interval(days => $1), if_not_exists => true)",
        retention_days,
    )
    return ["compression", "retention_policy"]


class Maintenance:
    """Runs rollups and retention every ``interval_s`` seconds; failures are logged, counted, retried."""

    def __init__(self, db: Database, *, retention_days: int, interval_s: float = 60.0) -> None:
        if retention_days < MIN_RETENTION_DAYS:
            raise RetentionError(f"retention must be >= {MIN_RETENTION_DAYS} days, got {retention_days}")
        self.db = db
        self.retention_days = retention_days
        self.interval_s = interval_s
        self.failures = 0
        self.last_run: datetime | None = None

    async def run_once(self) -> None:
        async def op() -> None:
            async with self.db.pool.acquire() as conn:
                await refresh_rollups(conn, self.db.caps)
                await apply_retention(conn, self.db.caps, self.retention_days)

        await guarded(op, "maintenance")
        self.last_run = datetime.now(UTC)

    async def run(self) -> None:
        async with self.db.pool.acquire() as conn:
            try:
                enabled = await apply_edition_features(conn, self.db.caps, self.retention_days)
            except asyncpg.PostgresError as e:
                log.warning("TimescaleDB edition features not enabled: %s", e)
                enabled = []
        log.info("storage on %s; edition features: %s", self.db.caps.edition, enabled or "hazmon-maintained")
        while True:
            try:
                await self.run_once()
            except StoreError as e:
                self.failures += 1
                log.warning("maintenance failed (%d so far): %s", self.failures, e)
            await asyncio.sleep(self.interval_s)
