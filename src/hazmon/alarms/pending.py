"""Alarm events the journal could not take yet, kept on disk.

While the database is down the runtime appends each pending alarm event here (JSON lines, fsynced)
before retrying, so a crash during the outage loses no alarm and no operator action; at the next
start the file is replayed into the journal before the engine restores its state, then cleared.
A crash between the journal's commit and the clearing can journal those events twice (a window
of milliseconds, at the end of an outage); losing one is never possible.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority

log = logging.getLogger(__name__)


class AlarmSpool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, events: Sequence[AlarmEvent]) -> None:
        if not events:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in events)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> list[AlarmEvent]:
        """The spooled events in order; a line torn by a crash mid-write is skipped and logged."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        events = []
        for n, line in enumerate(lines, 1):
            try:
                d = json.loads(line)
                d["priority"] = Priority(d["priority"])
                d["prev_state"] = AlarmState(d["prev_state"])
                d["new_state"] = AlarmState(d["new_state"])
                events.append(AlarmEvent(**d))
            except (ValueError, KeyError, TypeError) as e:
                log.error("%s line %d: unreadable alarm event skipped (%s): %.200s", self.path, n, e, line)
        return events

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
