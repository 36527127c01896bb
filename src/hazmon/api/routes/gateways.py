"""`GET /api/v1/gateways`: connection health per gateway and device."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import APIRouter

from hazmon.api.deps import Reader, RuntimeDep
from hazmon.runtime import Runtime

router = APIRouter(tags=["gateways"])


def gateway_site(gw: Any, site_of: dict[str, str]) -> str | None:
    config = getattr(gw, "config", None)
    site = getattr(config, "site", None)
    if isinstance(site, str):
        return site
    for device_id in gw.health().devices:
        if device_id in site_of:
            return site_of[device_id]
    return None


def _supervision(runtime: Runtime, gateway_id: str) -> dict[str, Any] | None:
    c = runtime.supervisor.get(f"gateway.{gateway_id}")
    if c is None:
        return None
    return {"state": c.state.value, "restarts": c.restarts, "failures": c.failures, "last_error": c.last_error}


@router.get("/gateways", summary="Health of every gateway and device of the token's sites")
async def get_gateways(runtime: RuntimeDep, user: Reader) -> list[dict[str, Any]]:
    out = []
    for gw in runtime.gateways:
        site = gateway_site(gw, runtime.site_of)
        if not user.sees(site):
            continue
        h = gw.health()
        devices = []
        for d in h.devices.values():
            item = asdict(d)
            item["state"] = d.state.value
            devices.append(item)
        out.append(
            {
                "id": h.id,
                "protocol": h.protocol,
                "site": site,
                "state": h.state.value,
                "connected": h.connected,
                "reconnects": h.reconnects,
                "quarantined": h.quarantined,
                "dropped_readings": h.dropped_readings,
                # its readings that did not reach the database, by reason (refused_by_store: set aside in
                # spool/rejected/; spool_unwritable: lost with the spool's disk and the database both failing)
                # its task, as the supervisor sees it: restarted after a crash, with the last error
                "supervision": _supervision(runtime, h.id),
                "storage_dropped_readings": (
                    runtime.forwarder.dropped_for(np.concatenate([*gw.devices().values(), np.zeros(0, np.int32)]))
                    if runtime.forwarder is not None
                    else {}
                ),
                "devices": devices,
            }
        )
    return out
