"""Store-and-forward: every batch goes through a disk spool to the readings store, in order, once.

Design (write-ahead, always)::

    put(batch) ──append──▶ Spool (disk, crash-safe) ──drain task──▶ ReadingStore.write ──▶ ack

* ``put`` appends the batch to the spool and returns: from then on a ``kill -9`` of hazmon cannot
  lose it. Only a batch still being received (not yet passed to ``put``) can be lost. Going through
  the spool always, not only when the database is down, keeps one code path, strict order, and
  costs one sequential ``write()`` per batch (about 21 bytes per reading).
* The drain task writes spooled batches in spool order and acknowledges them after the store
  confirms. On ``StoreUnavailable`` (or a write slower than ``write_timeout_s``) it keeps the
  batch, waits with capped exponential backoff and retries; meanwhile new batches pile up in the
  spool. When the store returns they are written in order.
* No duplicates: ``ReadingStore.write`` is idempotent by ``batch_id``. A retried write, or a
  replay after a crash between the store's commit and the spool's acknowledgement, carries the
  same batch id and stores nothing twice.
* Adaptive batching: consecutive ``put`` batches join a *group* (recorded in the spool) until the
  drain picks the group up or it holds ``max_batch_rows`` readings; a group is written as one batch.
  Under light load each batch is written alone; while a write is in flight (or the store is down)
  the next group grows, so a slow database gets fewer, larger COPYs. A merged group's batch id is
  derived from the group (uuid5), so a replay after a crash merges the same records under the same
  id. A group is closed before it is written, so its content never changes afterwards.
* Bounded: the spool holds at most ``max_bytes``; when full, the oldest segment goes and the loss
  is counted (``stats().dropped_readings``; the runtime raises an alarm on it).
* fsync: the spool is fsynced every ``fsync_interval_s`` (in a worker thread), so a power cut loses
  at most about that much; a process crash loses nothing that ``put`` accepted.
* A batch the store refuses for another reason (``StoreError`` other than unavailable, e.g. a value
  the database rejects) is retried ``max_refusals`` times; then what can be stored of it is stored
  (the group is split, and a refused batch halved, down to the refused readings), and only the
  refused readings are set aside in ``spool_dir/rejected/``: so one poison batch cannot stall the
  pipeline, nor take good readings merged with it down. Refused readings are counted as dropped
  (reason ``refused_by_store``). If even the set-aside file cannot be written, the records stay in
  the spool and the drain fails (the runtime's supervisor restarts it with backoff, under an alarm):
  nothing is acknowledged that is not kept somewhere.
* Losses are counted by reason (``stats().dropped_by_reason``: ``spool_full``, ``spool_unwritable``,
  ``spool_corrupt``, ``refused_by_store``) and, where the readings are known, by tag
  (``dropped_for(keys)``), so each gateway can show what of its data did not reach the database.
* A batch that cannot be written to the spool (disk failing) goes straight to the store instead;
  only if that fails too is it lost (``spool_unwritable``).
* ``run()`` is restartable: a drain that failed (a disk error, a bug) is started again from the
  oldest unacknowledged record. The runtime runs it under its supervisor; ``start()``/``stop()``
  (and ``async with``) run it on a task of its own.

Use::

    async with Forwarder(store, data_dir / "spool", max_bytes=1 << 30) as fwd:
        await fwd.put(batch)
        fwd.stats()
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from hazmon.backoff import Backoff, BackoffConfig
from hazmon.reading import ReadingBatch
from hazmon.storage.spool import Spool, SpoolError, SpoolRecord, encode_record
from hazmon.storage.store import StoreError, StoreUnavailable
from hazmon.supervisor import Supervisor

log = logging.getLogger(__name__)

_GROUP_NS = uuid.UUID("6f1c3f0e-6c1b-4d33-9c55-2f9f0a4c1e11")
_PART_NS = uuid.UUID("0d7a4c3e-2b61-4f0e-8f4a-5f3f2d1e9c07")
MAX_REFUSED_PARTS = 64  # halving a refused batch stops here: the rest is set aside whole

# why readings did not reach the database
SPOOL_FULL = "spool_full"
SPOOL_UNWRITABLE = "spool_unwritable"
SPOOL_CORRUPT = "spool_corrupt"
REFUSED_BY_STORE = "refused_by_store"
LOSS_REASONS = (SPOOL_FULL, SPOOL_UNWRITABLE, SPOOL_CORRUPT, REFUSED_BY_STORE)


class Writer(Protocol):
    async def write(self, batch: ReadingBatch) -> int: ...


class SetAsideFailed(SpoolError):
    """Refused readings could not be kept in ``rejected/``: they stay in the spool."""


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    received_batches: int
    received_readings: int
    stored_readings: int  # rows the store reported as newly stored
    already_stored_readings: int  # replayed rows the store had (write returned 0): not duplicated
    writes: int
    pending_batches: int  # in the spool, not yet confirmed by the store
    pending_readings: int
    spool_bytes: int
    dropped_batches: int  # lost to a full, failing or corrupt spool, or refused by the store
    dropped_readings: int
    rejected_batches: int  # refused by the store, set aside in spool/rejected/
    store_available: bool
    outages: int
    store_errors: int
    last_error: str | None
    oldest_pending_age_s: float | None
    spool_sync_errors: int = 0  # fsync failures: spooled data safe from a crash, not from a power cut
    rejected_readings: int = 0  # readings set aside in spool/rejected/ (also in dropped_by_reason)
    spool_errors: int = 0  # disk errors of the spool (write, fsync, cursor, segment removal)
    bypassed_readings: int = 0  # written straight to the store because the spool could not take them
    dropped_by_reason: dict[str, int] = field(default_factory=dict)  # reason -> readings


class Forwarder:
    def __init__(
        self,
        store: Writer,
        spool_dir: Path,
        max_bytes: int = 1 << 30,
        *,
        max_batch_rows: int = 200_000,
        write_timeout_s: float = 30.0,
        retry: BackoffConfig | None = None,
        fsync_interval_s: float = 1.0,
        max_refusals: int = 5,
        close_timeout_s: float = 5.0,
        segment_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.spool = Spool(
            self.spool_dir, max_bytes=max_bytes, segment_bytes=segment_bytes, fsync_interval_s=fsync_interval_s
        )
        self.max_batch_rows = max_batch_rows
        self.write_timeout_s = write_timeout_s
        self.retry = retry or BackoffConfig(initial_s=0.2, max_s=5.0, jitter=0.2)
        self.max_refusals = max_refusals
        self.close_timeout_s = close_timeout_s
        self._event = asyncio.Event()
        self._idle = asyncio.Event()
        self._open_group: uuid.UUID | None = None
        self._open_rows = 0
        self._carry: SpoolRecord | None = None
        self._task: asyncio.Task[None] | None = None
        self._supervisor: Supervisor | None = None
        self._received_batches = 0
        self._received_readings = 0
        self._stored = 0
        self._already = 0
        self._writes = 0
        self._rejected = 0
        self._rejected_readings = 0
        self._sync_errors = 0
        self._bypassed = 0
        self._lost_batches: dict[str, int] = {}  # reason -> batches (the spool counts its own)
        self._lost_readings: dict[str, int] = {}  # reason -> readings
        self._lost_by_tag: dict[str, npt.NDArray[np.int64]] = {}  # reason -> readings per tag key
        self._available = True
        self._outages = 0
        self._store_errors = 0
        self._last_error: str | None = None
        self._put_times: dict[int, float] = {}  # seq -> monotonic time of put, for the lag figure
        if len(self.spool):
            log.info(
                "spool %s: %d batches (%d readings) left from before, replaying",
                self.spool_dir,
                len(self.spool),
                self.spool.pending_readings(),
            )

    # ------------------------------------------------------------ losses

    def _lose(self, reason: str, batch: ReadingBatch | None, readings: int, batches: int = 1) -> None:
        self._lost_batches[reason] = self._lost_batches.get(reason, 0) + batches
        self._lost_readings[reason] = self._lost_readings.get(reason, 0) + readings
        if batch is not None and len(batch):
            counts = np.bincount(batch.tag[batch.tag >= 0].astype(np.int64))
            have = self._lost_by_tag.get(reason, np.zeros(0, np.int64))
            if have.size < counts.size:
                have = np.concatenate([have, np.zeros(counts.size - have.size, np.int64)])
            have[: counts.size] += counts
            self._lost_by_tag[reason] = have

    def dropped_for(self, keys: npt.ArrayLike) -> dict[str, int]:
        """Readings of these tag keys that did not reach the database, by reason (where known: a
        full spool's and a corrupt record's readings are counted in total only)."""
        k = np.asarray(keys, dtype=np.int64)
        out = {SPOOL_UNWRITABLE: 0, REFUSED_BY_STORE: 0}
        for reason, per_tag in self._lost_by_tag.items():
            inside = k[(k >= 0) & (k < per_tag.size)]
            out[reason] = int(per_tag[inside].sum())
        return out

    # ------------------------------------------------------------ input

    async def put(self, batch: ReadingBatch) -> None:
        """Accept a batch: it is on disk (safe from a process crash) when this returns.

        If the spool cannot take it (a failing disk) the batch is written to the store directly;
        only when that fails too is it lost, and counted (``spool_unwritable``)."""
        if len(batch) == 0:
            return
        self._received_batches += 1
        self._received_readings += len(batch)
        if self._open_group is None or self._open_rows + len(batch) > self.max_batch_rows:
            self._open_group = batch.batch_id
            self._open_rows = 0
        self._open_rows += len(batch)
        try:
            seq = self.spool.append(batch, self._open_group)
        except SpoolError as e:
            self._open_group = None
            self._last_error = str(e)
            await self._bypass(batch, e)
            return
        if len(self._put_times) < 100_000:
            self._put_times[seq] = time.monotonic()
        self._idle.clear()
        self._event.set()

    async def _bypass(self, batch: ReadingBatch, spool_error: SpoolError) -> None:
        try:
            stored = await asyncio.wait_for(self.store.write(batch), self.write_timeout_s)
        except (TimeoutError, StoreError) as e:
            self._lose(SPOOL_UNWRITABLE, batch, len(batch))
            log.error("forwarder: batch of %d readings lost: %s; and the store: %s", len(batch), spool_error, e)
            return
        self._bypassed += len(batch)
        self._writes += 1
        self._stored += stored
        log.warning("forwarder: %s; batch of %d readings written to the store directly", spool_error, len(batch))

    # ------------------------------------------------------------ drain

    async def run(self) -> None:
        """Write spooled batches to the store until cancelled. Raises when the drain cannot go on
        (a disk error reading the spool, refused readings that cannot be set aside); run it again
        to resume from the oldest unacknowledged record."""
        self._carry = None
        self.spool.rewind()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sync_loop())
            await self._drain()

    async def _sync_loop(self) -> None:
        interval = max(self.spool.fsync_interval_s, 0.05)
        while True:
            await asyncio.sleep(interval)
            if self.spool.sync_due():
                try:
                    await asyncio.to_thread(self.spool.sync)
                except SpoolError as e:
                    self._sync_errors += 1
                    self._last_error = str(e)
                    log.error("forwarder: %s (spooled batches are safe from a crash, not a power cut)", e)

    def _next_group(self) -> list[SpoolRecord]:
        """The records of the next group, in order; [] when the spool is drained."""
        if self._carry is not None:
            recs, self._carry = [self._carry], None
        else:
            recs = self.spool.read(1)
            if not recs:
                return []
        group = recs[0].group
        if group == self._open_group:
            self._open_group = None  # closed: later puts start a new group
        while nxt := self.spool.read(1):
            if nxt[0].group != group:
                self._carry = nxt[0]
                break
            recs.append(nxt[0])
        return recs

    async def _drain(self) -> None:
        backoff = Backoff(self.retry)
        while True:
            recs = self._next_group()
            if not recs:
                self._idle.set()
                self._event.clear()
                await self._event.wait()
                continue
            if len(recs) == 1:
                batch = recs[0].batch
            else:
                batch = ReadingBatch.concat([r.batch for r in recs])
                batch.batch_id = uuid.uuid5(_GROUP_NS, str(recs[0].group))
            refusals = 0
            while True:
                try:
                    stored = await self._write(batch)
                except (TimeoutError, StoreUnavailable):
                    await backoff.wait()
                    continue
                except StoreError as e:
                    refusals += 1
                    if refusals < self.max_refusals:
                        log.warning("forwarder: store refused a batch (%d/%d): %s", refusals, self.max_refusals, e)
                        await backoff.wait()
                        continue
                    try:
                        await self._salvage(recs, e)
                    except (TimeoutError, StoreUnavailable):
                        await backoff.wait()
                        continue
                    break
                if stored:
                    self._stored += stored
                else:
                    self._already += len(batch)
                backoff.reset()
                break
            self.spool.ack(recs[-1].seq)
            for r in recs:
                self._put_times.pop(r.seq, None)

    async def _write(self, batch: ReadingBatch) -> int:
        """One write to the store, with the availability bookkeeping; raises what the store raises."""
        try:
            stored = await asyncio.wait_for(self.store.write(batch), self.write_timeout_s)
        except (TimeoutError, StoreUnavailable) as e:
            self._store_errors += 1
            self._last_error = str(e) or type(e).__name__
            if self._available:
                self._available = False
                self._outages += 1
                log.warning("forwarder: store unavailable, spooling to disk: %s", self._last_error)
            raise
        except StoreError as e:
            self._store_errors += 1
            self._last_error = str(e)
            raise
        self._writes += 1
        if not self._available:
            self._available = True
            log.info("forwarder: store available again; %d batches spooled", len(self.spool))
        return stored

    async def _salvage(self, recs: list[SpoolRecord], error: StoreError) -> None:
        """A group the store keeps refusing: store what it takes, set aside only what it refuses.

        Each record alone, then a refused record halved (at most MAX_REFUSED_PARTS refused parts);
        every part has a batch id derived from its record and range, so a replay is idempotent."""
        refused: list[tuple[SpoolRecord, ReadingBatch]] = []
        for r in recs:
            queue = [(0, len(r.batch))]
            while queue:
                lo, hi = queue.pop()
                part = _part(r, lo, hi)
                try:
                    stored = await self._write(part)
                except (TimeoutError, StoreUnavailable):
                    raise
                except StoreError as e:
                    error = e
                    if hi - lo > 1 and len(refused) + len(queue) < MAX_REFUSED_PARTS:
                        mid = (lo + hi) // 2
                        queue += [(mid, hi), (lo, mid)]
                    else:
                        refused.append((r, part))
                    continue
                if stored:
                    self._stored += stored
                else:
                    self._already += len(part)
        if refused:
            self._set_aside(refused, error)

    def _set_aside(self, refused: list[tuple[SpoolRecord, ReadingBatch]], error: Exception) -> None:
        path = self.spool_dir / "rejected" / f"{refused[0][0].group}.rec"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                for r, part in refused:
                    f.write(encode_record(r.seq, r.group, part))
        except OSError as e:
            self._last_error = f"cannot keep refused readings in {path}: {e}"
            raise SetAsideFailed(f"forwarder: {self._last_error} (they stay in the spool)") from e
        n = sum(len(p) for _, p in refused)
        self._rejected += len(refused)
        self._rejected_readings += n
        for _, part in refused:
            self._lose(REFUSED_BY_STORE, part, len(part))
        log.error("forwarder: store refused %d readings, set aside in %s: %s", n, path, error)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Run the drain on a task of its own, restarted with backoff if it fails (the runtime uses its
        own supervisor instead, with alarms)."""
        if self._task is None:
            self._supervisor = Supervisor(restart=BackoffConfig(initial_s=0.5, max_s=30.0, jitter=0.1))
            self._supervisor.start("forwarder", self.run)
            self._task = asyncio.create_task(self._supervisor.wait(), name="forwarder")

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far is in the store; False on timeout."""
        self._event.set()
        try:
            async with asyncio.timeout(timeout):
                while len(self.spool) or self._carry is not None:
                    self._idle.clear()
                    self._event.set()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            if self._available:
                await self.flush(self.close_timeout_s)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            finally:
                if self._supervisor is not None:
                    await self._supervisor.stop()
            self._task = None
        self.close()

    @property
    def drain_failures(self) -> int:
        """Times the drain started by ``start()`` failed and was restarted (the runtime counts its own)."""
        c = self._supervisor.get("forwarder") if self._supervisor is not None else None
        return c.failures if c is not None else 0

    def close(self) -> None:
        """Close the spool (after the drain has stopped)."""
        self.spool.close()

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def stats(self) -> ForwarderStats:
        st = self.spool.stats()
        oldest = min(self._put_times.values(), default=None) if self._put_times else None
        by_reason = dict.fromkeys(LOSS_REASONS, 0)
        by_reason[SPOOL_FULL] = st.dropped_readings
        by_reason[SPOOL_CORRUPT] = st.corrupt_readings
        for reason, n in self._lost_readings.items():
            by_reason[reason] += n
        return ForwarderStats(
            received_batches=self._received_batches,
            received_readings=self._received_readings,
            stored_readings=self._stored,
            already_stored_readings=self._already,
            writes=self._writes,
            pending_batches=st.pending_batches,
            pending_readings=st.pending_readings,
            spool_bytes=st.bytes,
            dropped_batches=st.dropped_batches + st.corrupt_records + sum(self._lost_batches.values()),
            dropped_readings=sum(by_reason.values()),
            rejected_batches=self._rejected,
            store_available=self._available,
            outages=self._outages,
            store_errors=self._store_errors,
            last_error=self._last_error or st.last_error,
            oldest_pending_age_s=time.monotonic() - oldest if oldest is not None else None,
            spool_sync_errors=self._sync_errors,
            rejected_readings=self._rejected_readings,
            spool_errors=st.disk_errors + self._sync_errors,
            bypassed_readings=self._bypassed,
            dropped_by_reason=by_reason,
        )


def _part(rec: SpoolRecord, lo: int, hi: int) -> ReadingBatch:
    """Rows lo..hi of a spooled record, with a batch id derived from the record and the range."""
    b = rec.batch
    if lo == 0 and hi == len(b):
        part = ReadingBatch(b.tag, b.ts, b.value, b.quality, b.batch_id)
    else:
        part = ReadingBatch(b.tag[lo:hi], b.ts[lo:hi], b.value[lo:hi], b.quality[lo:hi], b.batch_id)
    part.batch_id = uuid.uuid5(_PART_NS, f"{b.batch_id}:{lo}:{hi}")
    return part
