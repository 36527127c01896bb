"""The readings store: columnar batches in by binary COPY, series and latest values out.

Writes are idempotent twice over. By ``batch_id``: the id is recorded in ``ingest_batches`` in the
same transaction as the rows, so a batch retried after an ambiguous failure is stored once. And by
(tag, time), across restarts, through the unique index ``readings_tag_time`` (migrations/040): a
batch is COPYed straight into ``readings``; if one of its (tag, time) is stored already (a value a
gateway sends again after a restart, like an OPC UA subscription's initial values), that transaction
is rolled back and the batch is COPYed into a per-connection staging table and inserted from it with
``ON CONFLICT DO NOTHING``, so only the new rows are stored. The usual path stays a single COPY.
Every asyncpg/OS error is translated here into ``StoreError`` (``StoreUnavailable`` when the
database cannot be reached and the write may be retried).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import asyncpg
import numpy as np

from hazmon.reading import Quality, ReadingBatch
from hazmon.storage.database import Capabilities

log = logging.getLogger(__name__)

T = TypeVar("T")

PG_EPOCH_OFFSET_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = b"\xff\xff"
_ROW = np.dtype(
    [
        ("nfields", ">i2"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("tag_len", ">i4"),
        ("tag", ">i4"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("quality_len", ">i4"),
        ("quality", ">i2"),
    ]
)
_ROW_TEMPLATE = np.array([(4, 8, 0, 4, 0, 8, 0.0, 2, 0)], dtype=_ROW)
# Per connection, emptied at each commit; created on first use (a no-op afterwards).
_STAGE = "readings_stage"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
    "(time timestamptz NOT NULL, tag integer NOT NULL, value double precision, quality smallint NOT NULL) "
    "ON COMMIT DELETE ROWS"
)
_INSERT_STAGED = (
    f"INSERT INTO readings (time, tag, value, quality) SELECT time, tag, value, quality FROM {_STAGE} "
    "ON CONFLICT DO NOTHING"
)


class StoreError(Exception):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The database could not be reached; the operation may be retried later."""


class StoreInvalid(StoreError):
    """The database refused a value (out of range, not representable): the caller's input is at fault,
    and trying again will not help."""


_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


async def guarded(op: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a database operation, translating driver errors into StoreError/StoreUnavailable."""
    try:
        return await op()
    except asyncpg.DataError as e:
        raise StoreInvalid(f"{what}: invalid value: {e}") from e
    except asyncpg.InterfaceError as e:
        if isinstance(e, ValueError):  # asyncpg's own DataError: an argument it cannot encode
            raise StoreInvalid(f"{what}: invalid value: {e}") from e
        raise StoreUnavailable(f"{what}: database unavailable: {e}") from e
    except _UNAVAILABLE as e:
        raise StoreUnavailable(f"{what}: database unavailable: {e}") from e
    except asyncpg.PostgresError as e:
        raise StoreError(f"{what}: {e}") from e


def encode_copy(batch: ReadingBatch) -> bytes:
    """The batch as a PostgreSQL binary COPY stream for (time, tag, value, quality)."""
    rows = np.repeat(_ROW_TEMPLATE, len(batch))
    rows["time"] = batch.ts - PG_EPOCH_OFFSET_US
    rows["tag"] = batch.tag
    rows["value"] = batch.value
    rows["quality"] = batch.quality
    return b"".join((_COPY_HEADER, rows.tobytes(), _COPY_TRAILER))


class Aggregate(StrEnum):
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    FIRST = "first"
    LAST = "last"
    COUNT = "count"


@dataclass(frozen=True, slots=True)
class Series:
    """A time series: parallel lists of timezone-aware times and values (None where no value)."""

    times: list[datetime]
    values: list[float | None]
    qualities: list[int] | None = None


@dataclass(frozen=True, slots=True)
class LatestValue:
    tag: int
    time: datetime
    value: float | None
    quality: int


class ReadingStore:
    def __init__(self, pool: asyncpg.Pool, caps: Capabilities, *, acquire_timeout_s: float = 5.0) -> None:
        self.pool = pool
        self.caps = caps
        self.acquire_timeout_s = acquire_timeout_s

    # ------------------------------------------------------------------ write

    async def write(self, batch: ReadingBatch) -> int:
        """Store a batch; returns the rows stored: 0 when this batch_id was stored before, and rows
        whose (tag, time) is already stored are left out."""
        if len(batch) == 0:
            return 0
        payload = encode_copy(batch)

        async def source() -> AsyncIterator[bytes]:
            yield payload

        async def ledger(conn: asyncpg.Connection) -> bool:
            fresh = await conn.fetchval(
                "INSERT INTO ingest_batches (batch_id, rows) VALUES ($1, $2) "
                "ON CONFLICT (batch_id) DO NOTHING RETURNING true",
                batch.batch_id,
                len(batch),
            )
            return bool(fresh)

        async def op() -> int:
            async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
                # The usual case, readings never seen: one COPY straight into the table.
                try:
                    async with conn.transaction():
                        if not await ledger(conn):
                            return 0
                        await conn.copy_to_table(
                            "readings", source=source(), columns=["time", "tag", "value", "quality"], format="binary"
                        )
                        return len(batch)
                except asyncpg.UniqueViolationError:
                    pass  # some (tag, time) is stored already (a restart resending values): nothing was written
                # Through the staging table: the rows not stored yet are inserted, the others left out.
                async with conn.transaction():
                    if not await ledger(conn):
                        return 0
                    await conn.execute(_CREATE_STAGE)
                    await conn.copy_to_table(
                        _STAGE, source=source(), columns=["time", "tag", "value", "quality"], format="binary"
                    )
                    status = await conn.execute(_INSERT_STAGED)
                    return int(status.rsplit(" ", 1)[1])

        return await guarded(op, "write readings")

    # ------------------------------------------------------------------ queries

    async def _fetch(self, what: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def op() -> list[asyncpg.Record]:
            async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
                result: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return result

        return await guarded(op, what)

    async def raw_series(self, tag: int, start: datetime, end: datetime, *, limit: int = 100_000) -> Series:
        rows = await self._fetch(
            "raw series",
            "SELECT time, value, quality FROM readings WHERE tag = $1 AND time >= $2 AND time < $3 "
            "ORDER BY time LIMIT $4",
            tag,
            start,
            end,
            limit,
        )
        return Series([r["time"] for r in rows], [r["value"] for r in rows], [r["quality"] for r in rows])

    def _bucket_expr(self) -> str:
        if self.caps.timescaledb:
            return "time_bucket($4::interval, time)"
        return "date_bin($4::interval, time, TIMESTAMPTZ '2000-01-01 00:00:00+00')"

    def _agg_expr(self, agg: Aggregate) -> str:
        if agg is Aggregate.FIRST:
            return "first(value, time)" if self.caps.timescaledb else "(array_agg(value ORDER BY time))[1]"
        if agg is Aggregate.LAST:
            return "last(value, time)" if self.caps.timescaledb else "(array_agg(value ORDER BY time DESC))[1]"
        if agg is Aggregate.COUNT:
            return "count(*)::float8"
        return f"{agg.value}(value)"

    async def downsampled_series(
        self, tag: int, start: datetime, end: datetime, bucket: timedelta, agg: Aggregate
    ) -> Series:
        """Buckets of ``bucket`` width over good and uncertain readings (bad quality is left out)."""
        if bucket <= timedelta(0):
            raise ValueError("bucket must be positive")
        sql = (
            f"SELECT {self._bucket_expr()} AS bucket, {self._agg_expr(agg)} AS value FROM readings "
            f"WHERE tag = $1 AND time >= $2 AND time < $3 AND quality < {int(Quality.BAD)} AND value <> 'NaN' "
            "GROUP BY bucket ORDER BY bucket"
        )
        rows = await self._fetch("downsampled series", sql, tag, start, end, bucket)
        return Series([r["bucket"] for r in rows], [r["value"] for r in rows])

    async def latest(self, tags: list[int]) -> list[LatestValue]:
        """The newest reading of each tag (tags without readings are left out)."""
        rows = await self._fetch(
            "latest values",
            "SELECT k.tag, r.time, r.value, r.quality FROM unnest($1::int[]) AS k(tag) "
            "CROSS JOIN LATERAL (SELECT time, value, quality FROM readings WHERE readings.tag = k.tag "
            "ORDER BY time DESC LIMIT 1) r ORDER BY k.tag",
            tags,
        )
        return [LatestValue(r["tag"], r["time"], r["value"], r["quality"]) for r in rows]

    async def count(self, tag: int | None = None) -> int:
        if tag is None:
            rows = await self._fetch("count", "SELECT count(*) AS n FROM readings")
        else:
            rows = await self._fetch("count", "SELECT count(*) AS n FROM readings WHERE tag = $1", tag)
        return int(rows[0]["n"])
