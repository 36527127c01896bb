"""The uplink's store-and-forward queue: ordered, on disk, bounded.

Every message for the platform is appended here first (one JSON line, fsynced per append) and sent
from here, oldest first; it leaves the queue only when the platform has acknowledged it. So a
receiver outage, or a restart of hazmon, loses nothing: the backlog is sent when the link is back.

Layout of the directory (``<data_dir>/uplink/``)::

    stream          random id of this queue, part of every message id (``<stream>-<seq>``)
    acked           the highest sequence number the platform acknowledged
    0000000000000001.jsonl, 0000000000004711.jsonl, …
                    segments named by their first sequence number; one line per message:
                    {"seq": 4711, "t": <created, Unix µs>, "kind": "realtime", "msg": {...}}
    rejected.jsonl  messages the platform refused for good (with the reason)

Delivery is at least once: a crash between a POST and the write of ``acked`` sends that message
again, with the same message id, and the receiver drops the duplicate. A torn last line (a crash
in the middle of an append) is cut off at the next start.

Bounded: when the segments exceed ``max_bytes`` the oldest segment goes, and its unsent messages
are counted as dropped (reason ``queue full``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024
_SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    created_us: int
    kind: str
    msg: dict[str, Any]


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:016d}{_SUFFIX}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class UplinkQueue:
    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4))
        self.dropped: Counter[str] = Counter()
        stream_file = self.dir / "stream"
        if stream_file.is_file():
            self.stream = stream_file.read_text(encoding="utf-8").strip()
        else:
            self.stream = secrets.token_hex(4)
            _write_atomic(stream_file, self.stream + "\n")
        acked_file = self.dir / "acked"
        self.acked = int(acked_file.read_text(encoding="utf-8").strip() or 0) if acked_file.is_file() else 0
        self._segments: list[tuple[int, Path]] = sorted(
            (int(p.name[: -len(_SUFFIX)]), p) for p in self.dir.glob(f"*{_SUFFIX}") if p.name[: -len(_SUFFIX)].isdigit()
        )
        self.last_seq = self.acked
        if self._segments:
            self.last_seq = max(self.last_seq, self._recover_tail())
        self._sizes = {p: p.stat().st_size for _, p in self._segments}
        self._head: Record | None = None
        self._read_seg = 0  # index into _segments of the segment being read
        self._read_off = 0  # byte offset of the next line to read in it
        self._drop_acked_segments()
        self._seek_first_unacked()

    # ------------------------------------------------------------------ state

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged by the platform."""
        return self.last_seq - self.acked

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def oldest_age_s(self, now_us: int) -> float | None:
        """How long the oldest unacknowledged message has waited; None when there is none."""
        head = self.peek()
        return None if head is None else max(0.0, (now_us - head.created_us) / 1e6)

    def message_id(self, seq: int) -> str:
        return f"{self.stream}-{seq:012d}"

    # ------------------------------------------------------------------ writing

    def put(self, items: list[tuple[str, dict[str, Any], int]]) -> list[int]:
        """Append messages (kind, message, created µs) in order; returns their sequence numbers."""
        if not items:
            return []
        seqs = []
        lines = []
        for kind, msg, created_us in items:
            self.last_seq += 1
            seqs.append(self.last_seq)
            lines.append(
                json.dumps(
                    {"seq": self.last_seq, "t": created_us, "kind": kind, "msg": msg},
                    ensure_ascii=False,
                    separators=(",", ":"),
                    allow_nan=False,
                )
            )
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if not self._segments or self._sizes[self._segments[-1][1]] >= self.segment_bytes:
            path = self.dir / _segment_name(seqs[0])
            self._segments.append((seqs[0], path))
            self._sizes[path] = 0
        path = self._segments[-1][1]
        with path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._sizes[path] += len(data)
        self._enforce_bound()
        return seqs

    def _enforce_bound(self) -> None:
        while self.bytes > self.max_bytes and len(self._segments) > 1:
            first, _path = self._segments[0]
            last_in_segment = self._segments[1][0] - 1
            lost = max(0, last_in_segment - max(self.acked, first - 1))
            if lost:
                self.dropped["queue full"] += lost
                log.error(
                    "uplink queue over %d bytes: %d unsent messages dropped (seq %d..%d)",
                    self.max_bytes,
                    lost,
                    max(self.acked + 1, first),
                    last_in_segment,
                )
            if last_in_segment > self.acked:
                self._set_acked(last_in_segment)
            self._remove_segment(0)
            self._head = None
            self._seek_first_unacked()

    # ------------------------------------------------------------------ reading

    def peek(self) -> Record | None:
        """The oldest unacknowledged message, or None."""
        if self._head is not None:
            return self._head
        while self._read_seg < len(self._segments):
            path = self._segments[self._read_seg][1]
            with path.open("rb") as f:
                f.seek(self._read_off)
                line = f.readline()
            if line.endswith(b"\n"):
                self._read_off += len(line)
                rec = _parse(line)
                if rec is None:
                    log.error("uplink queue %s: unreadable line at byte %d skipped", path.name, self._read_off)
                    continue
                if rec.seq <= self.acked:
                    continue
                self._head = rec
                return rec
            if self._read_seg + 1 < len(self._segments):
                self._read_seg += 1
                self._read_off = 0
                continue
            return None
        return None

    def ack(self, seq: int) -> None:
        """The platform has the message ``seq`` (and, the queue being ordered, every one before it)."""
        if seq <= self.acked:
            return
        self._set_acked(seq)
        if self._head is not None and self._head.seq <= seq:
            self._head = None
        self._drop_acked_segments()

    def reject(self, rec: Record, reason: str) -> None:
        """The platform refused ``rec`` for good: keep it aside with the reason, and go on."""
        line = json.dumps(
            {"seq": rec.seq, "t": rec.created_us, "kind": rec.kind, "reason": reason, "msg": rec.msg},
            ensure_ascii=False,
        )
        with (self.dir / "rejected.jsonl").open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.ack(rec.seq)

    # ------------------------------------------------------------------ internals

    def _set_acked(self, seq: int) -> None:
        self.acked = seq
        _write_atomic(self.dir / "acked", f"{seq}\n")

    def _remove_segment(self, index: int) -> None:
        _, path = self._segments.pop(index)
        self._sizes.pop(path, None)
        path.unlink(missing_ok=True)
        if self._read_seg > index:
            self._read_seg -= 1
        elif self._read_seg == index:
            self._read_off = 0

    def _drop_acked_segments(self) -> None:
        # a segment whose successor starts at or below acked + 1 holds only acknowledged messages
        while len(self._segments) > 1 and self._segments[1][0] - 1 <= self.acked:
            self._remove_segment(0)

    def _seek_first_unacked(self) -> None:
        self._read_seg, self._read_off = 0, 0
        for i in range(len(self._segments) - 1, -1, -1):
            if self._segments[i][0] <= self.acked + 1:
                self._read_seg = i
                break

    def _recover_tail(self) -> int:
        """Cut a torn last line off the newest segment; the last sequence number on disk."""
        _, path = self._segments[-1]
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("uplink queue %s: torn last line (%d bytes) cut off", path.name, len(data) - end)
            with path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            data = data[:end]
        for line in reversed(data.splitlines()):
            rec = _parse(line + b"\n")
            if rec is not None:
                return rec.seq
        return self._segments[-1][0] - 1


def _parse(line: bytes) -> Record | None:
    try:
        d = json.loads(line)
        return Record(int(d["seq"]), int(d["t"]), str(d["kind"]), d["msg"])
    except (ValueError, KeyError, TypeError):
        return None
