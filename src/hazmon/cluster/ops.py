"""Operator actions across processes: an api instance (``--role api``) sends an action to the engine shard
that owns the alarm's site, over NATS request/reply on ``<ns>.ops.<partition>``.

The shard applies it on its engine, journals its events and appends its audit-trail entry in one
transaction (as ``Runtime.act`` does in one process), publishes the events to ``<ns>.events.<site>``
(every api instance's mirror takes them from there), and replies with the events and the alarm before
and after. An action the shard refuses (unknown alarm, invalid transition) changes nothing and is
answered with the reason; one the database cannot record is undone and answered ``unavailable``.

Request: ``{"action", "alarm_id", "actor": {"name", "token_id", "role"}, "comment", "duration_s",
"site"}``. Reply: ``{"events": [...], "before": {...}, "after": {...}, "record": "journaled"}`` or
``{"error": "unknown"|"invalid"|"value"|"unavailable", "detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from hazmon import audit
from hazmon.alarms import journal
from hazmon.alarms.alarm import (
    AlarmEvent,
    AlarmSnapshot,
    AlarmState,
    InvalidTransition,
    Priority,
    UnknownAlarm,
    action_detail,
)
from hazmon.alarms.engine import OPERATOR_ACTIONS, AlarmEngine
from hazmon.plant.tag import SCOPE, local_id, tag_ref
from hazmon.reading import now_us

log = logging.getLogger("hazmon.cluster")

ACQUIRE_TIMEOUT_S = 5.0
# ---------------------------------------------------------------- wire format


def snapshot_to_dict(s: AlarmSnapshot) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d["state"], d["priority"] = str(s.state), str(s.priority)
    return d


def snapshot_from_dict(d: dict[str, Any]) -> AlarmSnapshot:
    fields = {f.name for f in dataclasses.fields(AlarmSnapshot)}
    values = {k: v for k, v in d.items() if k in fields}
    values["state"], values["priority"] = AlarmState(d["state"]), Priority(d["priority"])
    return AlarmSnapshot(**values)


def event_to_dict(e: AlarmEvent, site: str | None) -> dict[str, Any]:
    """An event as it goes on the bus (``roles.event_json``'s fields): the tag by its id within ``site``."""
    return {
        "alarm_id": e.alarm_id,
        "tag": local_id(e.tag_id) if e.tag_id is not None else None,
        "site": site,
        "condition": e.condition,
        "priority": str(e.priority),
        "action": e.action,
        "prev_state": str(e.prev_state),
        "state": str(e.new_state),
        "value": e.value,
        "limit": e.limit,
        "ts_us": e.ts_us,
        "user": e.user,
        "comment": e.comment,
        "shelved_until_us": e.shelved_until_us,
    }


def event_from_dict(d: dict[str, Any]) -> AlarmEvent:
    """The event of a bus message; KeyError/ValueError/TypeError for one that is not an alarm event.
    An event without a previous state (an uplinked raise or clear) is taken as coming from normal."""

    def number(v: Any) -> float | None:
        return None if v is None else float(v)

    alarm_id, condition = d["alarm_id"], d.get("condition")
    if not isinstance(alarm_id, str) or not alarm_id:
        raise ValueError("alarm_id: not a non-empty string")
    until = d.get("shelved_until_us")
    tag, site = d.get("tag"), d.get("site")
    if isinstance(tag, str) and isinstance(site, str) and site and SCOPE not in tag:
        tag = tag_ref(site, tag)  # the engine names a tag across sites
    return AlarmEvent(
        alarm_id=alarm_id,
        tag_id=tag,
        condition=condition if isinstance(condition, str) else alarm_id.rpartition(":")[2],
        priority=Priority(d["priority"]),
        prev_state=AlarmState(d.get("prev_state") or AlarmState.NORMAL),
        new_state=AlarmState(d["state"]),
        value=number(d.get("value")),
        limit=number(d.get("limit")),
        ts_us=int(d["ts_us"]),
        user=d.get("user"),
        comment=d.get("comment"),
        action=str(d.get("action") or "activate"),
        shelved_until_us=None if until is None else int(until),
    )


# ---------------------------------------------------------------- the shard's side


async def serve_operation(
    request: bytes,
    engine: AlarmEngine,
    lock: asyncio.Lock,
    pool: Any,
    site_of: dict[str, str],
    publish: Callable[[list[AlarmEvent]], Any],
) -> dict[str, Any]:
    """Apply one operator action on this shard's engine and record it, or refuse it; the reply."""
    try:
        req = json.loads(request)
        action, alarm_id, actor = req["action"], req["alarm_id"], req["actor"]
        if not isinstance(alarm_id, str) or not isinstance(actor, dict) or not isinstance(actor.get("name"), str):
            raise ValueError("alarm_id and actor.name are strings")
        comment, duration_s, site = req.get("comment"), req.get("duration_s"), req.get("site")
    except (ValueError, KeyError, TypeError) as e:
        return {"error": "value", "detail": f"malformed operation request: {e}"}
    if action not in OPERATOR_ACTIONS:
        return {"error": "value", "detail": f"unknown alarm action {action!r}"}
    async with lock:  # one batch, tick or action at a time through the engine and the journal
        try:
            before = engine.get(alarm_id)
            saved = engine.save(alarm_id)  # exactly as it is: put back if the action cannot be recorded
        except UnknownAlarm:
            return {"error": "unknown", "detail": f"unknown alarm {alarm_id!r}"}
        applied = False
        try:
            # the transaction is open before the engine changes: a database that is away refuses the
            # action before it is applied; one lost at the commit has it undone (engine.put_back)
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                try:
                    events = engine.operate(action, alarm_id, actor["name"], comment, duration_s, now_us())
                except UnknownAlarm:
                    return {"error": "unknown", "detail": f"unknown alarm {alarm_id!r}"}
                except InvalidTransition as e:
                    return {"error": "invalid", "detail": str(e)}
                except ValueError as e:
                    return {"error": "value", "detail": str(e)}
                applied = True
                after = engine.get(alarm_id)
                detail = action_detail(before, after, comment, duration_s)
                await journal.append_events(conn, events, site_of.get)
                await audit.append(
                    conn,
                    actor=actor["name"],
                    token_id=actor.get("token_id"),
                    role=actor.get("role"),
                    action=f"alarm.{action}",
                    target=alarm_id,
                    site_id=site,
                    detail=detail,
                )
        except Exception as e:  # not recorded: not applied
            if applied:
                engine.put_back(saved)
            log.warning(
                "engine shard: %s of %s by %s not recorded, not applied: %s", action, alarm_id, actor["name"], e
            )
            return {"error": "unavailable", "detail": f"the action could not be recorded and was not applied: {e}"}
        await publish(events)
    owner_site = site_of.get(after.tag_id or alarm_id.rpartition(":")[0])
    return {
        "events": [event_to_dict(e, owner_site) for e in events],
        "before": snapshot_to_dict(before),
        "after": snapshot_to_dict(after),
        "record": "journaled",
    }
