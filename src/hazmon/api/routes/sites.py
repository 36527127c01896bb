"""`GET /api/v1/sites`: the registered sites with their installations and GB 18218 grades."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hazmon.api.deps import Reader, RuntimeDep
from hazmon.storage.registry import list_sites
from hazmon.storage.store import guarded

router = APIRouter(tags=["sites"])


@router.get("/sites")
async def get_sites(runtime: RuntimeDep, user: Reader) -> list[dict[str, Any]]:
    async def op() -> list[dict[str, Any]]:
        async with runtime.db.pool.acquire() as conn:
            return [s for s in await list_sites(conn) if user.sees(s["id"])]

    return await guarded(op, "list sites")
