"""`GET /healthz`: is the database reachable, is each component running, and which versions run.

For a load balancer or a systemd watchdog: HTTP 503 when the database cannot be reached or an
essential component is **down** (a gateway, the journal writer, the forwarder or the clock ended and
waits for its restart, or the journal cannot be written); 200 otherwise. Each component is ``ok``,
``degraded`` (running, with what is wrong: a device not answering, readings lost, a restart not yet
proven stable) or ``down``, with a ``detail`` in words.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from hazmon import __version__
from hazmon.api.deps import RuntimeDep
from hazmon.runtime import STORAGE_OWNER, Runtime
from hazmon.storage.store import StoreError, guarded
from hazmon.supervisor import Component, ComponentState

router = APIRouter(tags=["health"])

OK, DEGRADED, DOWN = "ok", "degraded", "down"
_RANK = {OK: 0, DEGRADED: 1, DOWN: 2}


def _supervised(c: Component) -> tuple[str, list[str]]:
    """The component's own state, as the supervisor sees it."""
    detail = c.describe()
    if c.state is not ComponentState.RUNNING:
        return DOWN, [detail or c.state.value]
    if not c.ok:
        return DEGRADED, [detail or "recovering"]
    return OK, []


def _gateway(runtime: Runtime, gateway_id: str) -> list[str]:
    gw = next((g for g in runtime.gateways if g.id == gateway_id), None)
    if gw is None:
        return []
    problems = []
    for d in gw.health().devices.values():
        if not d.connected:
            problems.append(f"device {d.id}: {d.state.value}" + (f" ({d.last_error})" if d.last_error else ""))
        elif d.stale:
            problems.append(f"device {d.id}: no data")
    return problems


def _forwarder(runtime: Runtime) -> list[str]:
    if runtime.forwarder is None:
        return []
    f = runtime.forwarder.stats()
    problems = []
    if not f.store_available:
        problems.append(f"database unavailable: {f.pending_readings} readings kept in the disk spool")
    if runtime.system_alarm_active(STORAGE_OWNER):  # raised by a loss or a disk error, held a while after
        lost = {k: v for k, v in f.dropped_by_reason.items() if v}
        if lost:
            problems.append("readings not stored: " + ", ".join(f"{k} {v}" for k, v in sorted(lost.items())))
        if f.spool_errors:
            problems.append(f"disk spool errors: {f.spool_errors} ({f.last_error})")
        if len(problems) == (0 if f.store_available else 1):
            problems.append("readings lost or the disk spool failing recently")
    return problems


def components(runtime: Runtime) -> tuple[dict[str, dict[str, Any]], bool]:
    """Each component's status and detail; and whether the service is down (an essential one is)."""
    out: dict[str, dict[str, Any]] = {}
    down = False
    for c in runtime.supervisor.components():
        status, problems = _supervised(c)
        extra: list[str] = []
        if c.name.startswith("gateway."):
            extra = _gateway(runtime, c.name.removeprefix("gateway."))
        elif c.name == "forwarder":
            extra = _forwarder(runtime)
        elif c.name == "journal-writer" and runtime.recorder.down:
            status = DOWN
            problems.append(
                f"the journal cannot be written ({runtime.recorder.last_error}); "
                f"{runtime.recorder.pending} items kept on disk"
            )
        if extra and status == OK:
            status = DEGRADED
        problems += extra
        down |= c.essential and status == DOWN
        out[c.name] = {
            "status": status,
            "detail": "; ".join(problems) or None,
            "essential": c.essential,
            "restarts": c.restarts,
            "failures": c.failures,
            "last_error": c.last_error,
        }
    return out, down


@router.get("/healthz")
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    caps = runtime.db.caps

    async def ping() -> Any:
        async with runtime.db.pool.acquire(timeout=2) as conn:
            return await conn.fetchval("SELECT 1")

    try:
        reachable = await guarded(ping, "health check") == 1
        error = None
    except StoreError as e:
        reachable, error = False, str(e)
    parts, down = components(runtime)
    worst = max((p["status"] for p in parts.values()), key=_RANK.__getitem__, default=OK)
    healthy = reachable and not down
    body = {
        "status": OK if healthy and worst == OK else DEGRADED,
        "hazmon": __version__,
        "database": {
            "reachable": reachable,
            "error": error,
            "server_version": caps.server_version,
            "timescaledb": caps.timescaledb,
            "license": caps.license,
            "edition": caps.edition,
            "embedded": runtime.db.embedded is not None,
        },
        "components": parts,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)
