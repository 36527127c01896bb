"""Where the hub puts what it receives. ``JsonlSink``: one JSON line per message in a file, duplicates
(the same ``msg_id`` again: the sender delivers at least once) dropped, counts kept for ``/stats``.
`hazmon serve --role hub` puts a sink in front of it that also feeds the bus (``hazmon.cluster.hub``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class SinkRefused(Exception):
    """The sink refuses this message for its content (``status``: the HTTP status the receiver answers,
    400 or 422: the sender sets the message aside instead of retrying it)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class SinkUnavailable(Exception):
    """The sink cannot take the message now (database or bus away): the receiver answers 503, the sender
    retries."""


class Sink(Protocol):
    def accept(self, msg: dict[str, Any]) -> bool | Awaitable[bool]:
        """Keep one message; False when it is a duplicate (already kept). May be a coroutine; may raise
        ``SinkRefused`` (bad content) or ``SinkUnavailable`` / ``OSError`` (try again later)."""
        ...

    def stats(self) -> dict[str, Any]: ...


@dataclass
class _Counts:
    received: int = 0  # distinct messages but heartbeats
    by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    out_of_order: int = 0  # a message older than one already received from the same stream
    enterprises: set[str] = field(default_factory=set)


class JsonlSink:
    """Append-only file of received messages; survives a restart of the receiver (ids reloaded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] = set()
        self._last_seq: dict[str, int] = {}
        self._counts = _Counts()
        if self.path.is_file():
            with self.path.open("rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last line: that message was not acknowledged, it comes again
                    try:
                        self._count(json.loads(line))
                    except (ValueError, TypeError, KeyError):
                        continue
            self._truncate_torn_tail()
        self._file = self.path.open("a", encoding="utf-8")

    def _truncate_torn_tail(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with self.path.open("r+b") as f:
                f.truncate(end)

    def _count(self, msg: dict[str, Any]) -> None:
        msg_id = str(msg["msg_id"])
        self._seen.add(msg_id)
        kind = str(msg.get("type"))
        self._counts.by_type[kind] += 1
        if kind == "heartbeat":
            return
        self._counts.received += 1
        self._counts.enterprises.add(str(msg.get("enterprise_code")))
        stream = msg_id.rsplit("-", 1)[0]
        seq = int(msg.get("seq") or 0)
        if seq <= self._last_seq.get(stream, 0):
            self._counts.out_of_order += 1
        self._last_seq[stream] = max(seq, self._last_seq.get(stream, 0))

    def is_duplicate(self, msg: dict[str, Any]) -> bool:
        """Whether this message was kept before; counts it as a duplicate when it was."""
        if str(msg["msg_id"]) in self._seen:
            self._counts.duplicates += 1
            return True
        return False

    def accept(self, msg: dict[str, Any]) -> bool:
        if self.is_duplicate(msg):
            return False
        self._file.write(json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._count(msg)
        return True

    def stats(self) -> dict[str, Any]:
        c = self._counts
        return {
            "received": c.received,
            "by_type": dict(c.by_type),
            "duplicates": c.duplicates,
            "out_of_order": c.out_of_order,
            "enterprises": sorted(c.enterprises),
            "last_seq": dict(self._last_seq),
        }

    def close(self) -> None:
        self._file.close()
