"""Storage benchmark: 1,000,000 readings in batches of 10,000, binary COPY against executemany, on
TimescaleDB and plain PostgreSQL in the same run; then one day of 1 Hz data of one tag in 1-minute
buckets. Prints one JSON object on its last line.

The store's write is idempotent on (tag, time) (COPY into a staging table, then INSERT … ON CONFLICT
DO NOTHING against the unique index): ``copy_rows_per_s`` is measured through that path, and
``replay_rows_per_s`` is the same data written again in new batches (a restart resending every value:
nothing is stored twice), and ``staged_rows_per_s`` new rows in batches that each hold one reading
stored before (every batch takes the staging path). The executemany baseline gets its rows prepared
before the clock starts (as COPY gets its numpy arrays), so it measures the database path only.

    python bench/storage.py [--rows 1000000] [--batch 10000] [--pg URL] [--tsdb URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from hazmon.reading import US_PER_S, ReadingBatch
from hazmon.storage.database import connect
from hazmon.storage.store import Aggregate, ReadingStore
from scratch_db import drop_db, fresh_db

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T0_US = int(T0.timestamp()) * US_PER_S


def make_batches(rows: int, batch: int, n_tags: int = 1000) -> list[ReadingBatch]:
    rng = np.random.default_rng(1)
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        i = np.arange(start, start + n)
        out.append(
            ReadingBatch.from_columns(
                (i % n_tags).astype(np.int32),
                T0_US + (i // n_tags) * US_PER_S,
                rng.normal(50, 5, n),
                np.zeros(n, dtype=np.uint8),
            )
        )
    return out


async def bench_one(admin_url: str, rows: int, batch: int) -> dict[str, Any]:
    url = await fresh_db(admin_url)
    db = await connect(url, pool_size=2, run_migrations=False)
    try:
        store = ReadingStore(db.pool, db.caps)
        batches = make_batches(rows, batch)
        t = time.perf_counter()
        for b in batches:
            await store.write(b)
        copy_s = time.perf_counter() - t
        stored = await store.count()
        assert stored == rows, f"{stored} rows stored of {rows}"
        # a restart that sends every value again, in new batches: nothing more is stored
        replay = make_batches(rows, batch)
        t = time.perf_counter()
        replayed = 0
        for b in replay:
            replayed += await store.write(b)
        replay_s = time.perf_counter() - t
        assert replayed == 0 and await store.count() == rows, "a replayed reading was stored twice"
        # the worst case: every batch is new but for one reading stored before, so each batch takes the
        # staging path (COPY into a temporary table, INSERT … ON CONFLICT DO NOTHING); two days later
        overlap_rows = min(rows, 200_000)
        shift = 2 * 86_400 * US_PER_S
        overlap = make_batches(overlap_rows, batch)
        for b in overlap:
            b.ts[1:] += shift
        t = time.perf_counter()
        overlap_stored = 0
        for b in overlap:
            overlap_stored += await store.write(b)
        overlap_s = time.perf_counter() - t
        assert overlap_stored == overlap_rows - len(overlap), "the staging path lost or duplicated rows"
        # executemany baseline on the same data, shifted one day so rows do not collide; its records are
        # converted to Python tuples before the clock starts, as COPY's input is ready in numpy arrays
        em_rows = min(rows, 200_000)
        prepared = [
            [
                (datetime.fromtimestamp((ts + 86_400 * US_PER_S) / US_PER_S, UTC), int(tag), float(v), int(q))
                for ts, tag, v, q in zip(
                    b.ts.tolist(), b.tag.tolist(), b.value.tolist(), b.quality.tolist(), strict=True
                )
            ]
            for b in make_batches(em_rows, batch)
        ]
        async with db.pool.acquire() as conn:
            t = time.perf_counter()
            for records in prepared:
                await conn.executemany(
                    "INSERT INTO readings (time, tag, value, quality) VALUES ($1, $2, $3, $4)", records
                )
            em_s = time.perf_counter() - t
        # one day of 1 Hz data for one tag, queried in 1-minute buckets
        day = 86_400
        tag = 5000
        one_day = ReadingBatch.from_columns(
            np.full(day, tag), T0_US + np.arange(day) * US_PER_S, np.sin(np.arange(day) / 600.0)
        )
        for part in np.array_split(np.arange(day), 9):
            await store.write(one_day.take(part))
        async with db.pool.acquire() as conn:
            await conn.execute("ANALYZE readings")
        times = []
        for _ in range(15):
            t = time.perf_counter()
            series = await store.downsampled_series(
                tag, T0, T0 + timedelta(days=1), timedelta(minutes=1), Aggregate.AVG
            )
            times.append((time.perf_counter() - t) * 1000)
        assert len(series.times) == 1440
        copy_rate = rows / copy_s
        em_rate = em_rows / em_s
        return {
            "edition": db.caps.edition,
            "server_version": db.caps.server_version,
            "rows": rows,
            "batch": batch,
            "copy_rows_per_s": round(copy_rate),
            "meets_200k_rows_per_s": copy_rate >= 200_000,
            "replay_rows_per_s": round(rows / replay_s),
            "replay_rows_stored": replayed,
            "staged_rows_per_s": round(overlap_stored / overlap_s),
            "executemany_rows_per_s": round(em_rate),
            "executemany_rows": em_rows,
            "copy_vs_executemany": round(copy_rate / em_rate, 2),
            "day_query_1m_buckets_ms_median": round(statistics.median(times), 2),
            "day_query_1m_buckets_ms_max": round(max(times), 2),
        }
    finally:
        await db.close()
        await drop_db(admin_url, url)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument(
        "--pg", default=os.environ.get("HAZMON_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument(
        "--tsdb", default=os.environ.get("HAZMON_TEST_TSDB_URL", "postgresql://postgres@127.0.0.1:5433/postgres")
    )
    args = p.parse_args()
    results = {}
    for name, url in (("timescaledb", args.tsdb), ("postgresql", args.pg)):
        results[name] = await bench_one(url, args.rows, args.batch)
        print(name, results[name], flush=True)
    print(json.dumps({"benchmark": "storage", "date": datetime.now(UTC).date().isoformat(), **results}))


if __name__ == "__main__":
    asyncio.run(main())
