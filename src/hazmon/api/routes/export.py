"""`GET /api/v1/tags/{tag_id}/export`: a tag's raw readings over a range, as CSV or JSON, streamed."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from hazmon.api.deps import Reader, RuntimeDep, visible_tag
from hazmon.api.routes.tags import time_range
from hazmon.storage.store import guarded

router = APIRouter(tags=["tags"])

CHUNK = 10_000


class ExportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@router.get("/tags/{tag_id:path}/export", summary="A tag's raw readings in a time range, as CSV or JSON")
async def export_series(
    runtime: RuntimeDep,
    user: Reader,
    tag_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    format: ExportFormat = ExportFormat.CSV,
) -> StreamingResponse:
    start, end = time_range(start, end, timedelta(days=1))

    tag = await visible_tag(runtime, user, tag_id)
    key = tag["key"]

    async def fetch(after: datetime, limit: int) -> list[Any]:
        async def op() -> list[Any]:
            async with runtime.db.pool.acquire() as conn:
                result: list[Any] = await conn.fetch(
                    "SELECT time, value, quality FROM readings WHERE tag = $1 AND time >= $2 AND time < $3 "
                    "ORDER BY time, value, quality LIMIT $4",
                    key,
                    after,
                    end,
                    limit,
                )
                return result

        return await guarded(op, "export")

    async def rows() -> AsyncIterator[list[Any]]:
        # Keyset pagination, one short query per chunk (no connection held while the client reads).
        # Rows sharing the boundary time are counted so that none is sent twice or skipped.
        after, seen_at_after = start, 0
        while True:
            chunk = (await fetch(after, CHUNK + seen_at_after))[seen_at_after:]
            if not chunk:
                return
            yield chunk
            if len(chunk) < CHUNK:
                return
            last = chunk[-1]["time"]
            tie = sum(1 for r in chunk if r["time"] == last)
            seen_at_after = tie + (seen_at_after if last == after else 0)
            after = last

    name = f"{tag['site']}_{tag['id']}_{start:%Y%m%dT%H%M%SZ}_{end:%Y%m%dT%H%M%SZ}"
    if format is ExportFormat.CSV:

        async def csv() -> AsyncIterator[bytes]:
            yield b"time,value,quality\n"
            async for chunk in rows():
                lines = []
                for r in chunk:
                    v = r["value"]
                    lines.append(
                        f"{_iso(r['time'])},{'' if v is None or not math.isfinite(v) else repr(v)},{r['quality']}\n"
                    )
                yield "".join(lines).encode()

        return StreamingResponse(
            csv(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}.csv"'}
        )

    async def js() -> AsyncIterator[bytes]:
        head = {"site": tag["site"], "tag": tag["id"], "unit": tag["unit"], "start": _iso(start), "end": _iso(end)}
        yield (json.dumps(head, ensure_ascii=False)[:-1] + ',"columns":["time","value","quality"],"points":[').encode()
        sep = ""
        async for chunk in rows():
            parts = []
            for r in chunk:
                v = r["value"]
                parts.append(
                    json.dumps([_iso(r["time"]), v if v is not None and math.isfinite(v) else None, r["quality"]])
                )
            yield (sep + ",".join(parts)).encode()
            sep = ","
        yield b"]}"

    return StreamingResponse(
        js(), media_type="application/json", headers={"Content-Disposition": f'attachment; filename="{name}.json"'}
    )
