"""Alarm events on their way to the journal, kept on disk until the journal has them.

Every alarm event and every operator action is written here (JSON lines, fsynced) *before* it is
queued for the journal: the file is a write-ahead log. A line is a :class:`Pending` item — the
events of one engine step or one operator action, with the action's audit-trail entry — under a
sequence number; once the journal has committed items, a marker line ``{"journaled": [seq, ...]}``
says so, and the file is removed when nothing is left to write. At the next start the items not
marked are replayed into the journal before the engine restores its state.

What a crash can do, exactly:

- an event or action is on disk before anything else sees it (the live hub, the API's answer), so a
  crash at any moment loses none of them;
- a crash between the journal's commit and its marker journals those items twice (milliseconds);
- a line torn by a crash mid-write, or any line that cannot be read back, is moved to the
  dead-letter file with the reason (``move_aside``), never silently dropped and never a reason for
  start-up to fail;
- only if the disk itself refuses the write (full, read-only) is an item held in memory alone: the
  runtime logs it, retries the disk, and refuses operator actions it cannot record (see
  ``hazmon.runtime``).

Items the database refuses for their content (not for an outage) go to the dead-letter file
(``dead_letter``) with the database's reason, instead of being retried forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hazmon.alarms.alarm import AlarmEvent, AlarmState, Priority

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Pending:
    """What the journal takes in one go: the events of one step, and an audit-trail entry (the
    keyword arguments of ``hazmon.audit.append``) when they come from an operator action."""

    events: list[AlarmEvent]
    audit: dict[str, Any] | None = None
    seq: int | None = None  # its line in the spool; None while not on disk
    outcome: str | None = None  # "journaled" or "dead-letter", once settled
    waiters: list[Any] = field(default_factory=list)  # futures resolved with the outcome

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "events": [asdict(e) for e in self.events], "audit": self.audit}


def _dumps(doc: Any) -> str:
    # ASCII only: a lone surrogate or a control character in an operator's text is escaped, so any
    # event can be written and read back.
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), default=str)


def event_from_dict(d: dict[str, Any]) -> AlarmEvent:
    d = dict(d)
    d["priority"] = Priority(d["priority"])
    d["prev_state"] = AlarmState(d["prev_state"])
    d["new_state"] = AlarmState(d["new_state"])
    return AlarmEvent(**d)


def _item(doc: Any) -> Pending:
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    if "alarm_id" in doc:  # the format before items: one event per line
        return Pending([event_from_dict(doc)])
    events = doc["events"]
    audit = doc.get("audit")
    seq = doc.get("seq")
    if not isinstance(events, list) or not (audit is None or isinstance(audit, dict)):
        raise TypeError("events must be a list and audit an object")
    if seq is not None and not isinstance(seq, int):
        raise TypeError("seq must be an integer")
    return Pending([event_from_dict(e) for e in events], audit, seq)


class AlarmSpool:
    def __init__(self, path: Path, dead_letter_path: Path | None = None) -> None:
        self.path = path
        self.dead_letter_path = dead_letter_path or path.with_name(path.name.split(".")[0] + ".dead-letter.jsonl")
        self._seq = 0
        self.moved_aside = 0  # unreadable lines moved to the dead-letter file by the last load()

    # ------------------------------------------------------------------ writing

    def _write(self, path: Path, lines: Iterable[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        if not text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        with path.open("a", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if created:  # the new file's directory entry too, so that a power cut does not lose the file
            with contextlib.suppress(OSError):
                fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def append(self, items: Sequence[Pending]) -> None:
        """Write the items not on disk yet (fsynced) and number them; raises OSError when the disk refuses."""
        todo = [i for i in items if i.seq is None]
        if not todo:
            return
        lines = []
        for n, item in enumerate(todo, self._seq + 1):
            doc = item.to_json()
            doc["seq"] = n
            lines.append(_dumps(doc))
        self._write(self.path, lines)
        for n, item in enumerate(todo, self._seq + 1):
            item.seq = n
        self._seq += len(todo)

    def probe(self) -> None:
        """Raise OSError unless the spool file can be written (opened for append and synced)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="ascii") as f:
            os.fsync(f.fileno())

    def mark_journaled(self, items: Sequence[Pending]) -> None:
        """Record that these items are settled (journaled or dead-lettered): not replayed."""
        seqs = [i.seq for i in items if i.seq is not None]
        if seqs and self.path.exists():
            self._write(self.path, [_dumps({"journaled": seqs})])

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def dead_letter(self, items: Sequence[Pending], reason: str) -> None:
        """Keep items the journal refused, with the reason; raises OSError when the disk refuses."""
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._write(self.dead_letter_path, [_dumps({"at": at, "reason": reason, **i.to_json()}) for i in items])

    def move_aside(self, line: str, reason: str) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._write(self.dead_letter_path, [_dumps({"at": at, "reason": reason, "line": line})])

    # ------------------------------------------------------------------ reading back

    def load(self) -> list[Pending]:
        """The items not yet journaled, in order. A line that cannot be read (torn by a crash, edited)
        is moved to the dead-letter file and counted in ``moved_aside``; nothing here raises for the
        file's content."""
        self.moved_aside = 0
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:  # unreadable as a whole (permissions, I/O error): kept aside, start-up goes on
            aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            log.critical("%s cannot be read (%s): moved to %s, start-up goes on", self.path, e, aside)
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            self.moved_aside += 1
            return []
        items: list[Pending] = []
        done: set[int] = set()
        for n, line in enumerate(raw.decode("utf-8", errors="surrogateescape").splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                if isinstance(doc, dict) and "journaled" in doc:
                    done.update(int(s) for s in doc["journaled"])
                    continue
                items.append(_item(doc))
            except Exception as e:  # whatever the line holds: moved aside, not fatal
                reason = f"{self.path} line {n}: unreadable ({type(e).__name__}: {e})"
                log.error("%s; moved to %s", reason, self.dead_letter_path)
                self.moved_aside += 1
                try:
                    self.move_aside(line.encode("utf-8", errors="replace").decode("utf-8"), reason)
                except OSError as oe:
                    log.critical(
                        "cannot write %s (%s); the unreadable line was: %.500r", self.dead_letter_path, oe, line
                    )
        pending = [i for i in items if i.seq is None or i.seq not in done]
        self._seq = max([self._seq, *(i.seq for i in items if i.seq is not None)])
        return pending
