"""Quarantine for bad input: counted by reason, logged once per interval, kept for inspection.

Bad input never stops a gateway and never takes good readings of the same message with it. Each
rejected item is counted under a reason (see ``Reason``); at most once per ``log_interval_s`` a
single warning line summarises what was rejected since the last one; and a sample of the items is
appended to ``DATA_DIR/quarantine/<gateway>.jsonl`` (one JSON object a line: ``ts``, ``gateway``,
``source``, ``reason``, ``detail``, ``payload``), bounded: when the file passes ``max_bytes`` it is
renamed to ``.jsonl.1`` (replacing the previous one), so at most 2 × ``max_bytes`` are kept. At most
``max_records_per_s`` records a second are written, so that a flood costs counts, not disk.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

MAX_PAYLOAD_CHARS = 2000


class Reason(StrEnum):
    MALFORMED = "malformed"  # the payload cannot be parsed at all
    UNMAPPED = "unmapped"  # a topic, point or node not in the map
    WRONG_TYPE = "wrong_type"  # a value that is not a number (or boolean)
    NON_FINITE = "non_finite"  # NaN or ±infinity
    FUTURE_TIMESTAMP = "future_timestamp"  # further ahead than the gateway allows
    BAD_TIMESTAMP = "bad_timestamp"  # a timestamp that cannot be read
    EMPTY = "empty"  # a well-formed message with no readings in it (e.g. a batch `[]`)
    TOO_LARGE = "too_large"  # a payload larger than the gateway accepts
    TOO_DEEP = "too_deep"  # JSON nested deeper than any payload format needs
    UNDECODABLE = "undecodable"  # the decoder failed on it (a bug or an input it did not foresee)


class Quarantine:
    def __init__(
        self,
        gateway_id: str,
        directory: Path | None,
        *,
        max_bytes: int = 10_000_000,
        log_interval_s: float = 60.0,
        max_records_per_s: int = 100,
    ) -> None:
        self.gateway_id = gateway_id
        self.path = directory / f"{gateway_id}.jsonl" if directory is not None else None
        self.max_bytes = max_bytes
        self.log_interval_s = log_interval_s
        self.max_records_per_s = max_records_per_s
        self._counts: dict[str, int] = {}
        self._since_log: dict[str, int] = {}
        self._last_log = 0.0
        self._second = 0
        self._written_this_second = 0
        self._fd: int | None = None
        self._size = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def reject(
        self, reason: Reason, source: str, detail: str, payload: bytes | str | None = None, count: int = 1
    ) -> None:
        """Count ``count`` rejected items of one reason from ``source`` (topic, node, device...)."""
        if count <= 0:
            return
        key = str(reason)
        self._counts[key] = self._counts.get(key, 0) + count
        self._since_log[key] = self._since_log.get(key, 0) + count
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            summary = ", ".join(f"{k}={v}" for k, v in sorted(self._since_log.items()))
            log.warning("gateway %s: input rejected (%s); latest from %s: %s", self.gateway_id, summary, source, detail)
            self._since_log.clear()
        self._record(reason, source, detail, payload)

    def _record(self, reason: Reason, source: str, detail: str, payload: bytes | str | None) -> None:
        if self.path is None:
            return
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._written_this_second = second, 0
        if self._written_this_second >= self.max_records_per_s:
            return
        self._written_this_second += 1
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", errors="replace")
        if payload is not None and len(payload) > MAX_PAYLOAD_CHARS:
            payload = payload[:MAX_PAYLOAD_CHARS] + "…"
        line = json.dumps(
            {
                "ts": datetime.now(UTC).isoformat(),
                "gateway": self.gateway_id,
                "source": source,
                "reason": str(reason),
                "detail": detail,
                "payload": payload,
            },
            ensure_ascii=False,
        ).encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._size = os.fstat(self._fd).st_size
            if self._size + len(line) + 1 > self.max_bytes:
                os.close(self._fd)
                os.replace(self.path, self.path.with_suffix(".jsonl.1"))
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._size = 0
            os.write(self._fd, line + b"\n")
            self._size += len(line) + 1
        except OSError as e:
            # The quarantine file is for inspection; failing to write it must not stop ingest.
            self._counts["quarantine_write_error"] = self._counts.get("quarantine_write_error", 0) + 1
            log.warning("gateway %s: cannot write quarantine file %s: %s", self.gateway_id, self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def records(self) -> list[dict[str, object]]:
        """The quarantined records currently in the file (oldest first), for inspection and tests."""
        if self.path is None:
            return []
        out: list[dict[str, object]] = []
        for p in (self.path.with_suffix(".jsonl.1"), self.path):
            if p.exists():
                out.extend(json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line)
        return out
