"""`GET /api/v1/installations` and `/installations/{id}`: GB 18218 identification and grading per
installation (S, R, α, the level, each chemical's βq/Q) and the required monitoring it lacks — the
same figures as `hazmon hazard grade --json`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from hazmon.api.deps import Reader, RuntimeDep
from hazmon.regulator.installations import installation_grades

router = APIRouter(tags=["installations"])


def _visible(runtime: RuntimeDep, user: Reader, site: str | None, enterprise: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in runtime.sites:
        if not user.sees(s.id) or (site is not None and s.id != site):
            continue
        if enterprise is not None and s.enterprise.id != enterprise:
            continue
        out += installation_grades(s, runtime.settings.retention_days)
    return out


@router.get("/installations", summary="Every installation in scope with its GB 18218 grade and monitoring gaps")
async def get_installations(
    runtime: RuntimeDep, user: Reader, site: str | None = None, enterprise: str | None = None
) -> list[dict[str, Any]]:
    return _visible(runtime, user, site, enterprise)


@router.get("/installations/{installation_id}", summary="One installation's GB 18218 grade and monitoring gaps")
async def get_installation(
    runtime: RuntimeDep, user: Reader, installation_id: str, site: str | None = None
) -> dict[str, Any]:
    found = [i for i in _visible(runtime, user, site, None) if i["id"] == installation_id]
    if not found:
        if any(
            i.id == installation_id and (site is None or s.id == site) for s in runtime.sites for i in s.installations
        ):
            raise HTTPException(403, f"installation {installation_id!r} is outside this token's scope")
        raise HTTPException(404, f"no installation {installation_id!r}")
    if len(found) > 1:
        sites = ", ".join(i["site"] for i in found)
        raise HTTPException(409, f"installation {installation_id!r} exists in several sites ({sites}): add ?site=")
    return found[0]
