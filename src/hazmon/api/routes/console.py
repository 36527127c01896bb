"""The operator console.

- ``GET /console`` (and ``/console/{file}``: its script and style sheet): a single page that follows
  the live stream over the WebSocket and acts through the API with the token the operator pastes in.
  The page holds no data (like /docs), so it is served without a token; everything it shows needs one.
- ``GET /api/v1/console/context``: what the page needs once to draw the plant: the caller (role, may it
  act on alarms), and per site in scope its time zone and language, installations with their GB 18218
  grade, equipment, and tags with units, ranges, alarm limits and Chinese names.
"""

from __future__ import annotations

import math
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from hazmon.alarms.alarm import UnknownAlarm, split_alarm_id
from hazmon.alarms.compiler import load_rules
from hazmon.alarms.rules import COLUMNS, HH, LL, AlarmResponse, RuleSet, condition_key, responses_for
from hazmon.api.deps import Reader, RuntimeDep
from hazmon.api.where import place_of, qualified_alarm
from hazmon.auth import Permission
from hazmon.errors import InvalidFile
from hazmon.plant.site import Site, Tag
from hazmon.plant.tag import split_ref, tag_ref
from hazmon.regulator.gb18218 import GradingError, grade
from hazmon.runtime import Runtime

router = APIRouter(tags=["console"])

_ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}


def _asset(name: str) -> str:
    return files("hazmon.api").joinpath(f"console/{name}").read_text(encoding="utf-8")


@router.get("/console", include_in_schema=False)
async def console() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-cache"})


@router.get("/console/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    media = _ASSETS.get(name)
    if media is None:
        raise HTTPException(404, f"no console file {name!r}")
    return Response(_asset(name), media_type=media, headers={"Cache-Control": "no-cache"})


def _limits(runtime: Runtime) -> dict[str, tuple[dict[str, float], list[str]]]:
    """Per tag, from the compiled rules: its alarm limits (HH, H, L, LL) and the condition keys that
    latch (an operator resets them once the condition has cleared)."""
    engine = runtime.engine
    if engine is None:
        return {}
    rules = engine.rules
    out: dict[str, tuple[dict[str, float], list[str]]] = {}
    for row, tag_id in enumerate(rules.tag_ids):
        if tag_id is None:
            continue
        enabled = rules.priority[row] >= 0
        lim = {
            COLUMNS[col]: float(rules.limit[row, col])
            for col in range(HH, LL + 1)
            if enabled[col] and math.isfinite(rules.limit[row, col])
        }
        latched = [COLUMNS[col] for col in range(len(COLUMNS)) if enabled[col] and rules.latch[row, col]]
        if lim or latched:
            out[tag_id] = (lim, latched)
    return out


def _site_json(site: Site, limits: dict[str, tuple[dict[str, float], list[str]]]) -> dict[str, Any]:
    installations = []
    for inst in site.installations:
        try:
            g = grade(inst)
            grading: dict[str, Any] = {"level": g.level, "major": g.is_major, "r": round(g.r, 1), "s": round(g.s, 2)}
        except GradingError as e:
            grading = {"level": None, "major": None, "error": str(e)}
        installations.append(
            {"id": inst.id, "name": inst.name, "name_zh": inst.name_zh, "kind": inst.kind.value, "grade": grading}
        )
    return {
        "id": site.id,
        "name": site.site.name,
        "name_zh": site.site.name_zh,
        "timezone": site.site.timezone,
        "locale": site.site.locale,
        "enterprise": {"id": site.enterprise.id, "name": site.enterprise.name},
        "installations": installations,
        "equipment": [
            {
                "id": e.id,
                "name": e.name,
                "name_zh": e.name_zh,
                "type": e.type.value,
                "installation": e.installation,
            }
            for e in site.equipment
        ],
        "tags": [
            {
                "id": t.id,
                "name": t.name,
                "name_zh": t.name_zh,
                "kind": t.kind.value,
                "unit": t.unit,
                "equipment": t.equipment,
                "range": list(t.range) if t.range else None,
                "period_s": t.period_s,
                "states": {str(k): v for k, v in t.states.items()} if t.states else None,
                "limits": limits.get(tag_ref(site.id, t.id), ({}, []))[0],
                "latched": limits.get(tag_ref(site.id, t.id), ({}, []))[1],
            }
            for t in site.tags
        ],
    }


@router.get("/api/v1/console/context", summary="What the operator console needs to draw the plant")
async def console_context(runtime: RuntimeDep, user: Reader) -> dict[str, Any]:
    limits = _limits(runtime)
    engine = runtime.engine
    return {
        "user": {
            "name": user.name,
            "role": user.role.value,
            "may_operate": user.may(Permission.OPERATE),
        },
        "max_shelve_s": engine.max_shelve_us / 1e6 if engine is not None else None,
        "sites": [_site_json(s, limits) for s in runtime.sites if user.sees(s.id)],
    }


_RULES: dict[int, tuple[Runtime, RuleSet]] = {}  # the runtime's rule files, parsed once per runtime


def _rule_set(runtime: Runtime) -> RuleSet:
    hit = _RULES.get(id(runtime))
    if hit is not None and hit[0] is runtime:
        return hit[1]
    try:
        rule_set = load_rules(runtime.settings.rules, runtime.sites)
    except (InvalidFile, OSError):
        rule_set = RuleSet([])  # the engine started with these files; a later edit must not break the console
    _RULES.clear()
    _RULES[id(runtime)] = (runtime, rule_set)
    return rule_set


def _response_json(r: AlarmResponse | None) -> dict[str, Any] | None:
    return None if r is None else r.model_dump(exclude_none=True)


def _tag(runtime: Runtime, ref: str) -> Tag | None:
    """The tag named ``site/tag``."""
    site_id, tag_id = split_ref(ref)
    for site in runtime.sites:
        if site.id != site_id:
            continue
        for t in site.tags:
            if t.id == tag_id:
                return t
    return None


@router.get(
    "/api/v1/console/response/{alarm_id:path}",
    summary="An alarm's response (cause, consequence, operator action, time to respond) from its rule files",
)
async def alarm_response(runtime: RuntimeDep, user: Reader, alarm_id: str) -> dict[str, Any]:
    alarm_id = qualified_alarm(runtime, alarm_id, user.sees)
    try:
        owner, condition = split_alarm_id(alarm_id)
    except UnknownAlarm:
        raise HTTPException(404, f"unknown alarm {alarm_id!r}") from None
    place = place_of(runtime, owner)
    if place.site is None and not place.affects:  # a name that is no tag or device here
        raise HTTPException(404, f"unknown alarm {alarm_id!r}")
    if not place.seen_by(user.sees):
        raise HTTPException(403, f"alarm {alarm_id} is outside this token's scope")
    tag = _tag(runtime, owner)
    response = responses_for(_rule_set(runtime), tag).get(condition_key(condition)) if tag else None
    return {"alarm_id": alarm_id, "response": _response_json(response)}
