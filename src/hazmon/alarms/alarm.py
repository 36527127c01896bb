"""Alarm vocabulary shared by the rule engine, the journal and the API (ISA-18.2 / IEC 62682).

An *alarm* is one condition of one tag (``demo-tank-farm/V101.LT:level.HH``), of one gateway device
(``demo-tank-farm/plc-gw.plc-1:comm.LOSS``) or of the service itself (``hazmon.storage:comm.LOSS``, no
site): its owner's reference (``hazmon.plant.tag``), a colon, the condition. ``tag_id`` holds the tag's
reference ``site/tag``. Every change of its state is an :class:`AlarmEvent`; the engine's view of an
alarm at one moment is an :class:`AlarmSnapshot`.

Errors the API maps to HTTP statuses::

    KeyError
     └── UnknownAlarm          404: no such alarm id
    Exception
     └── InvalidTransition     409: the operation is not allowed in the alarm's current state
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class AlarmState(StrEnum):
    NORMAL = "normal"
    ACTIVE_UNACK = "active_unack"
    ACTIVE_ACK = "active_ack"
    RTN_UNACK = "rtn_unack"  # returned to normal (cleared), not yet acknowledged
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


# Compact codes used in the engine's arrays; the order is the order of the enums above.
STATE_CODES: tuple[AlarmState, ...] = tuple(AlarmState)
PRIORITY_CODES: tuple[Priority, ...] = tuple(Priority)


class Action(StrEnum):
    ACTIVATE = "activate"
    CLEAR = "clear"
    ACKNOWLEDGE = "acknowledge"
    RESET = "reset"
    REALARM = "realarm"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    SUPPRESS = "suppress"
    UNSUPPRESS = "unsuppress"
    REMOVE_FROM_SERVICE = "remove_from_service"
    RETURN_TO_SERVICE = "return_to_service"
    COMMENT = "comment"


class UnknownAlarm(KeyError):
    """No alarm has this id."""

    def __str__(self) -> str:
        return f"unknown alarm {self.args[0]!r}" if self.args else "unknown alarm"


class InvalidTransition(Exception):
    """The operation is not allowed in the alarm's current state."""


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    alarm_id: str
    tag_id: str | None
    condition: str
    priority: Priority
    prev_state: AlarmState
    new_state: AlarmState
    value: float | None
    limit: float | None
    ts_us: int
    user: str | None = None
    comment: str | None = None
    action: str = Action.ACTIVATE
    shelved_until_us: int | None = None  # set on "shelve" events


@dataclass(frozen=True, slots=True)
class AlarmSnapshot:
    """One alarm's state, enough to show it and to rebuild the engine after a restart.

    ``state`` is what an operator sees; ``active`` and ``acked`` are the underlying lifecycle
    flags (meaningful when the alarm is not masked by shelving, suppression or out-of-service).
    """

    alarm_id: str
    tag_id: str | None
    condition: str
    priority: Priority
    state: AlarmState
    active: bool
    acked: bool
    value: float | None
    limit: float | None
    since_us: int  # time of the last state change (an acknowledge, a comment, a shelve ...)
    # time the alarm last became active, kept through acknowledge, comment, shelve, suppression and
    # return to normal; None once the alarm is normal (or was never active since it last was)
    activated_us: int | None = None
    shelved_until_us: int | None = None
    out_of_service: bool = False
    suppressed: bool = False
    user: str | None = None
    comment: str | None = None


def action_detail(
    before: AlarmSnapshot, after: AlarmSnapshot, comment: str | None, duration_s: float | None
) -> dict[str, Any]:
    """What the audit trail records of an operator action: the states it went from and to, and its text."""
    detail: dict[str, Any] = {"from": str(before.state), "to": str(after.state)}
    if comment is not None:
        detail["comment"] = comment
    if duration_s is not None:
        detail["duration_s"] = duration_s
    return detail


def split_alarm_id(alarm_id: str) -> tuple[str, str]:
    """``"demo/V101.LT:level.HH"`` -> ``("demo/V101.LT", "level.HH")``; raises UnknownAlarm when malformed."""
    owner, sep, condition = alarm_id.rpartition(":")
    if not sep or not owner or not condition:
        raise UnknownAlarm(alarm_id)
    return owner, condition
