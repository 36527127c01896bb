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
  the database rejects) is retried ``max_refusals`` times, then set aside in
  ``spool_dir/rejected/`` and counted, so one poison batch cannot stall the pipeline.

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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from hazmon.backoff import Backoff, BackoffConfig
from hazmon.reading import ReadingBatch
from hazmon.storage.spool import Spool, SpoolError, SpoolRecord, encode_record
from hazmon.storage.store import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

_GROUP_NS = uuid.UUID("6f1c3f0e-6c1b-4d33-9c55-2f9f0a4c1e11")


class Writer(Protocol):
    async def write(self, batch: ReadingBatch) -> int: ...


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
    dropped_batches: int  # lost to a full spool (oldest first) or a failing spool
    dropped_readings: int
    rejected_batches: int  # refused by the store, set aside in spool/rejected/
    store_available: bool
    outages: int
    store_errors: int
    last_error: str | None
    oldest_pending_age_s: float | None
    spool_sync_errors: int = 0  # fsync failures: spooled data safe from a crash, not from a power cut


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
    ) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.spool = Spool(self.spool_dir, max_bytes=max_bytes, fsync_interval_s=fsync_interval_s)
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
        self._received_batches = 0
        self._received_readings = 0
        self._stored = 0
        self._already = 0
        self._writes = 0
        self._rejected = 0
        self._sync_errors = 0
        self._spool_failures_readings = 0
        self._spool_failures_batches = 0
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

    # ------------------------------------------------------------ input

    async def put(self, batch: ReadingBatch) -> None:
        """Accept a batch: it is on disk (safe from a process crash) when this returns."""
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
            self._spool_failures_batches += 1
            self._spool_failures_readings += len(batch)
            self._last_error = str(e)
            log.error("forwarder: batch of %d readings lost: %s", len(batch), e)
            return
        if len(self._put_times) < 100_000:
            self._put_times[seq] = time.monotonic()
        self._idle.clear()
        self._event.set()

    # ------------------------------------------------------------ drain

    async def run(self) -> None:
        """Write spooled batches to the store until cancelled."""
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
                    stored = await asyncio.wait_for(self.store.write(batch), self.write_timeout_s)
                except (TimeoutError, StoreUnavailable) as e:
                    self._store_errors += 1
                    self._last_error = str(e) or type(e).__name__
                    if self._available:
                        self._available = False
                        self._outages += 1
                        log.warning("forwarder: store unavailable, spooling to disk: %s", self._last_error)
                    await backoff.wait()
                    continue
                except StoreError as e:
                    self._store_errors += 1
                    self._last_error = str(e)
                    refusals += 1
                    if refusals < self.max_refusals:
                        log.warning("forwarder: store refused a batch (%d/%d): %s", refusals, self.max_refusals, e)
                        await backoff.wait()
                        continue
                    self._set_aside(recs, e)
                    break
                self._writes += 1
                if stored:
                    self._stored += stored
                else:
                    self._already += len(batch)
                if not self._available:
                    self._available = True
                    log.info("forwarder: store available again; %d batches spooled", len(self.spool))
                backoff.reset()
                break
            self.spool.ack(recs[-1].seq)
            for r in recs:
                self._put_times.pop(r.seq, None)

    def _set_aside(self, recs: list[SpoolRecord], error: Exception) -> None:
        self._rejected += len(recs)
        path = self.spool_dir / "rejected" / f"{recs[0].group}.rec"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                for r in recs:
                    f.write(encode_record(r.seq, r.group, r.batch))
        except OSError as e:
            log.error("forwarder: cannot keep rejected batch in %s: %s", path, e)
        log.error("forwarder: store refused %d batch(es), set aside in %s: %s", len(recs), path, error)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="forwarder")

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
            self._task = None
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
        return ForwarderStats(
            received_batches=self._received_batches,
            received_readings=self._received_readings,
            stored_readings=self._stored,
            already_stored_readings=self._already,
            writes=self._writes,
            pending_batches=st.pending_batches,
            pending_readings=st.pending_readings,
            spool_bytes=st.bytes,
            dropped_batches=st.dropped_batches + self._spool_failures_batches,
            dropped_readings=st.dropped_readings + self._spool_failures_readings,
            rejected_batches=self._rejected,
            store_available=self._available,
            outages=self._outages,
            store_errors=self._store_errors,
            last_error=self._last_error,
            oldest_pending_age_s=time.monotonic() - oldest if oldest is not None else None,
            spool_sync_errors=self._sync_errors,
        )
