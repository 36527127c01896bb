"""A bounded, crash-safe disk spool of reading batches: append-only segments, replayed in order.

Layout: a directory of segment files ``<first seq, 20 digits>.seg`` and a ``cursor`` file. Each
record is framed as::

    u32 length | u32 crc32(payload) | payload
    payload = u64 seq | 16 bytes group | 16 bytes batch_id | u32 n |
              int32 tag[n] | int64 ts[n] | float64 value[n] | uint8 quality[n]      (little-endian)

``seq`` numbers records from 0 upwards across segments; ``group`` lets the forwarder merge
consecutive records deterministically (see hazmon.storage.forwarder). A record is written with one
``write()`` of the whole frame to a file opened ``O_APPEND``, so once ``append`` returns the record
survives a crash of the process (``kill -9``): it is in the kernel's page cache.

fsync policy: data reaches the disk itself (surviving power loss or a kernel crash) at the next
``sync()`` — the forwarder calls it every ``fsync_interval_s`` (1 s by default) and on close, so
a power cut loses at most about a second of spooled batches. ``fsync_interval_s=0`` syncs every
append (slow, for the paranoid).

On open, every segment is scanned; a torn or corrupt record ends its segment there (the tail is
truncated and counted in ``corrupt_records``). The ``cursor`` file holds the seq of the next record
to deliver; it is replaced atomically on ``ack`` but not fsynced: after a crash, records may be
delivered again — the store's write is idempotent by batch id, so that is harmless.

The offset of every record is kept, so the reader goes from record to record by position: a record
found corrupt when read (a checksum that no longer matches, in any segment) is skipped alone, and
its readings are counted as lost (``corrupt_records``, ``corrupt_readings``); the records after it
are still delivered.

Disk errors never pass unseen: ``append`` and ``read`` raise ``SpoolError``; errors after the data
is safe — saving the cursor, removing a delivered segment, fsync — are counted in ``disk_errors``
(with ``last_error``) and the spool goes on (a cursor not saved only means records replayed after a
crash, which the store ignores).

Bounded: when the segments exceed ``max_bytes``, the oldest segment is deleted whole and the
records in it not yet delivered are counted as lost (``dropped_batches``, ``dropped_readings``).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import uuid
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hazmon.reading import ReadingBatch

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<Q16s16sI")
_ROW_BYTES = 4 + 8 + 8 + 1
MAX_RECORD_BYTES = 1 << 30


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, disk full...)."""


@dataclass(slots=True)
class SpoolRecord:
    seq: int
    group: uuid.UUID
    batch: ReadingBatch


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path
    size: int = 0
    records: int = 0
    readings: int = 0
    last_seq: int = -1
    # readings of every record (record i has seq first_seq + i), for loss accounting
    counts: array[int] = field(default_factory=lambda: array("I"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))  # byte offset of every record


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending_batches: int
    pending_readings: int
    bytes: int
    segments: int
    dropped_batches: int
    dropped_readings: int
    corrupt_records: int
    corrupt_readings: int = 0  # readings of records found corrupt when read (lost)
    disk_errors: int = 0  # cursor, segment removal and fsync failures (the spool went on)
    last_error: str | None = None


def encode_record(seq: int, group: uuid.UUID, batch: ReadingBatch) -> bytes:
    n = len(batch)
    payload = b"".join(
        (
            _HEAD.pack(seq, group.bytes, batch.batch_id.bytes, n),
            batch.tag.astype("<i4", copy=False).tobytes(),
            batch.ts.astype("<i8", copy=False).tobytes(),
            batch.value.astype("<f8", copy=False).tobytes(),
            batch.quality.astype("u1", copy=False).tobytes(),
        )
    )
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> SpoolRecord:
    seq, group, batch_id, n = _HEAD.unpack_from(payload)
    if len(payload) != _HEAD.size + n * _ROW_BYTES:
        raise ValueError("record length does not match its row count")
    off = _HEAD.size
    tag = np.frombuffer(payload, "<i4", n, off).astype(np.int32)
    off += 4 * n
    ts = np.frombuffer(payload, "<i8", n, off).astype(np.int64)
    off += 8 * n
    value = np.frombuffer(payload, "<f8", n, off).astype(np.float64)
    off += 8 * n
    quality = np.frombuffer(payload, "u1", n, off).copy()
    return SpoolRecord(seq, uuid.UUID(bytes=group), ReadingBatch(tag, ts, value, quality, uuid.UUID(bytes=batch_id)))


def _read_frame(f: BinaryIO) -> bytes | None:
    """The next valid payload from a binary file object, or None at the end (or a torn tail)."""
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    length, crc = _FRAME.unpack(head)
    if length > MAX_RECORD_BYTES:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def _corrupt_in_place(f: BinaryIO, pos: int, seq: int) -> int | None:
    """The frame at ``pos`` (record ``seq``) failed its checksum: if the record ``seq + 1`` follows it
    intact, it is a corrupt record in place (not a torn tail). Returns its readings (from its length)
    and leaves ``f`` at the next record; None otherwise."""
    f.seek(pos)
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    length, _crc = _FRAME.unpack(head)
    if length < _HEAD.size or length > MAX_RECORD_BYTES:
        return None
    nxt = pos + _FRAME.size + length
    f.seek(nxt)
    payload = _read_frame(f)
    if payload is None or _HEAD.unpack_from(payload)[0] != seq + 1:
        return None
    f.seek(nxt)
    return int(length - _HEAD.size) // _ROW_BYTES


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int | None = None,
        fsync_interval_s: float = 1.0,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(1 << 16, min(64 << 20, max_bytes // 8))
        self.fsync_interval_s = fsync_interval_s
        self.dropped_batches = 0
        self.dropped_readings = 0
        self.corrupt_records = 0
        self.corrupt_readings = 0
        self.disk_errors = 0
        self.last_error: str | None = None
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._fd_lock = threading.Lock()  # guards _fd against sync() in a worker thread
        self._dirty = False
        self._last_sync = time.monotonic()
        self._read_file: BinaryIO | None = None
        self._read_seg: _Segment | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._cursor = self._load_cursor()
            self._scan()
        except OSError as e:
            raise SpoolError(f"spool {self.dir}: {e}") from e
        self._next_seq = self._segments[-1].last_seq + 1 if self._segments else self._cursor
        self._cursor = min(max(self._cursor, self._segments[0].first_seq if self._segments else 0), self._next_seq)
        self._read_seq = self._cursor  # next seq the reader hands out

    # ------------------------------------------------------------ open

    def _load_cursor(self) -> int:
        try:
            return int((self.dir / "cursor").read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("spool %s: unreadable cursor file, replaying from the oldest record", self.dir)
            return 0

    def _scan(self) -> None:
        for path in sorted(self.dir.glob("*.seg")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            seg = _Segment(first, path)
            valid_end = 0
            with path.open("rb") as f:
                while True:
                    payload = _read_frame(f)
                    if payload is None:
                        # corrupt, with the next record intact after it: keep its place (the reader
                        # counts its readings as lost); otherwise a torn tail, cut below
                        guess = _corrupt_in_place(f, valid_end, first + seg.records)
                        if guess is None:
                            break
                        seg.offsets.append(valid_end)
                        valid_end = f.tell()
                        seg.records += 1
                        seg.readings += guess
                        seg.last_seq = first + seg.records - 1
                        seg.counts.append(guess)
                        log.warning("spool %s: corrupt record %d at byte %d, skipped", path, seg.last_seq, valid_end)
                        continue
                    seq, _g, _b, n = _HEAD.unpack_from(payload)
                    if seq != first + seg.records:
                        break
                    seg.offsets.append(valid_end)
                    valid_end = f.tell()
                    seg.records += 1
                    seg.readings += n
                    seg.last_seq = seq
                    seg.counts.append(n)
            if path.stat().st_size > valid_end:
                self.corrupt_records += 1
                log.warning("spool %s: torn or corrupt record at byte %d, truncated", path, valid_end)
                with path.open("r+b") as f:
                    f.truncate(valid_end)
            seg.size = valid_end
            if seg.records == 0:
                path.unlink()
                continue
            self._segments.append(seg)
        # segments entirely before the cursor were delivered: remove them
        while self._segments and self._segments[0].last_seq < self._cursor:
            self._segments.pop(0).path.unlink(missing_ok=True)

    # ------------------------------------------------------------ write

    def append(self, batch: ReadingBatch, group: uuid.UUID | None = None) -> int:
        """Write one batch; returns its seq. Durable against a process crash when this returns."""
        seq = self._next_seq
        frame = encode_record(seq, group or batch.batch_id, batch)
        try:
            seg = self._segments[-1] if self._segments else None
            if seg is None or self._fd is None or (seg.size > 0 and seg.size + len(frame) > self.segment_bytes):
                seg = self._open_segment(seq)
            assert self._fd is not None
            written = os.write(self._fd, frame)
            if written != len(frame):  # a full disk: the short tail is cut at the next open
                raise OSError(f"short write ({written} of {len(frame)} bytes)")
        except OSError as e:
            if self._fd is not None and self._segments:  # write the next record at a fresh segment
                self._close_writer()
            raise SpoolError(f"spool {self.dir}: cannot write: {e}") from e
        seg.offsets.append(seg.size)
        seg.size += len(frame)
        seg.records += 1
        seg.readings += len(batch)
        seg.last_seq = seq
        seg.counts.append(len(batch))
        self._next_seq = seq + 1
        self._dirty = True
        if self.fsync_interval_s == 0:
            try:
                self.sync()
            except SpoolError as e:
                self._disk_error(str(e))
        self._enforce_limit()
        return seq

    def _disk_error(self, message: str) -> None:
        self.disk_errors += 1
        self.last_error = message
        log.error("%s", message)

    def _close_writer(self) -> None:
        with self._fd_lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if self._dirty:
                    os.fsync(fd)
            except OSError as e:
                self._disk_error(f"spool {self.dir}: fsync failed: {e}")
            finally:
                os.close(fd)

    def _open_segment(self, first_seq: int) -> _Segment:
        self._close_writer()
        last = self._segments[-1] if self._segments else None
        if last is not None and last.records == 0:
            seg = last  # an empty segment left from before: reuse
        else:
            seg = _Segment(first_seq, self.dir / f"{first_seq:020d}.seg")
            self._segments.append(seg)
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with self._fd_lock:
            self._fd = fd
        return seg

    def _enforce_limit(self) -> None:
        while self.bytes > self.max_bytes and len(self._segments) > 1:
            seg = self._segments.pop(0)
            lost = seg.counts[max(0, self._read_seq - seg.first_seq) :]
            if len(lost):
                self.dropped_batches += len(lost)
                self.dropped_readings += sum(lost)
                log.error(
                    "spool %s full (%d bytes): dropped %d oldest undelivered batches (%d readings)",
                    self.dir,
                    self.max_bytes,
                    len(lost),
                    sum(lost),
                )
            if self._read_seg is seg:
                self._close_reader()
            self._remove(seg)
            nxt = self._segments[0].first_seq
            self._cursor = max(self._cursor, nxt)
            self._read_seq = max(self._read_seq, nxt)

    def _remove(self, seg: _Segment) -> None:
        try:
            seg.path.unlink(missing_ok=True)
        except OSError as e:  # left on disk: removed (or replayed, harmlessly) at the next open
            self._disk_error(f"spool {self.dir}: cannot remove {seg.path.name}: {e}")

    def sync(self) -> None:
        """fsync the open segment if anything was written since the last sync; raises SpoolError.

        Safe to call from a worker thread while the event loop appends: it fsyncs a duplicate of
        the descriptor, so a segment rotation closing the original does not disturb it.
        """
        fd: int | None = None
        try:
            with self._fd_lock:
                if self._fd is None or not self._dirty:
                    self._last_sync = time.monotonic()
                    return
                self._dirty = False  # before the fsync: an append during it marks the spool dirty again
                fd = os.dup(self._fd)
            os.fsync(fd)
        except OSError as e:
            self._dirty = True
            raise SpoolError(f"spool {self.dir}: fsync failed: {e}") from e
        finally:
            if fd is not None:
                os.close(fd)
        self._last_sync = time.monotonic()

    def sync_due(self) -> bool:
        return self._dirty and time.monotonic() - self._last_sync >= self.fsync_interval_s

    # ------------------------------------------------------------ read

    def _close_reader(self) -> None:
        if self._read_file is not None:
            self._read_file.close()
        self._read_file = None
        self._read_seg = None

    def read(self, max_records: int = 1) -> list[SpoolRecord]:
        """Up to ``max_records`` records from the read position onward (not yet acknowledged).

        Advances the read position, not the cursor: after ``rewind()`` (a failed delivery)
        the same records are read again.
        """
        out: list[SpoolRecord] = []
        while len(out) < max_records and self._read_seq < self._next_seq:
            rec = self._read_one()
            if rec is None:
                break
            out.append(rec)
        return out

    def _read_one(self) -> SpoolRecord | None:
        """The record at the read position; None when caught up. Raises SpoolError when a segment
        cannot be read (nothing is skipped: the next read tries again)."""
        while True:
            if self._read_seg is None:
                seg = next((s for s in self._segments if s.last_seq >= self._read_seq), None)
                if seg is None:
                    return None
                try:
                    self._read_file = seg.path.open("rb")
                except OSError as e:
                    raise SpoolError(f"spool {self.dir}: cannot read {seg.path.name}: {e}") from e
                self._read_seg = seg
            seg, f = self._read_seg, self._read_file
            assert f is not None
            i = self._read_seq - seg.first_seq
            if i >= seg.records:
                if seg is self._segments[-1]:
                    return None  # caught up with the writer
                self._close_reader()
                continue
            offset = seg.offsets[i]
            try:
                if f.tell() != offset:
                    f.seek(offset)
                payload = _read_frame(f)
            except OSError as e:
                self._close_reader()
                raise SpoolError(f"spool {self.dir}: cannot read {seg.path.name}: {e}") from e
            rec: SpoolRecord | None = None
            if payload is not None:
                try:
                    rec = decode_payload(payload)
                except (ValueError, struct.error):
                    rec = None
            if rec is None or rec.seq != self._read_seq:
                # written whole, now unreadable (bit rot, an edited file): this record is lost
                self.corrupt_records += 1
                self.corrupt_readings += seg.counts[i]
                self.last_error = f"spool {self.dir}: corrupt record {self._read_seq} in {seg.path.name}"
                log.error("%s: %d readings lost", self.last_error, seg.counts[i])
                self._read_seq += 1
                self._close_reader()  # re-open: the buffered position is unknown
                continue
            self._read_seq = rec.seq + 1
            return rec

    def rewind(self) -> None:
        """Read again from the cursor (the oldest unacknowledged record)."""
        self._close_reader()
        self._read_seq = self._cursor

    def ack(self, seq: int) -> None:
        """Everything up to and including ``seq`` is delivered."""
        if seq + 1 <= self._cursor:
            return
        self._cursor = seq + 1
        tmp = self.dir / "cursor.tmp"
        try:
            tmp.write_text(str(self._cursor))
            os.replace(tmp, self.dir / "cursor")
        except OSError as e:  # delivered all the same; after a crash it is replayed (idempotent)
            self._disk_error(f"spool {self.dir}: cannot save the cursor: {e}")
        while len(self._segments) > 1 and self._segments[0].last_seq < self._cursor:
            seg = self._segments.pop(0)
            if self._read_seg is seg:
                self._close_reader()
            self._remove(seg)

    # ------------------------------------------------------------ state

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def __len__(self) -> int:
        """Records not yet acknowledged."""
        return self._next_seq - self._cursor

    def pending_readings(self) -> int:
        total = 0
        for s in self._segments:
            if s.last_seq >= self._cursor:
                total += sum(s.counts[max(0, self._cursor - s.first_seq) :])
        return total

    def stats(self) -> SpoolStats:
        return SpoolStats(
            pending_batches=len(self),
            pending_readings=self.pending_readings(),
            bytes=self.bytes,
            segments=len(self._segments),
            dropped_batches=self.dropped_batches,
            dropped_readings=self.dropped_readings,
            corrupt_records=self.corrupt_records,
            corrupt_readings=self.corrupt_readings,
            disk_errors=self.disk_errors,
            last_error=self.last_error,
        )

    def close(self) -> None:
        self._close_reader()
        self._close_writer()
