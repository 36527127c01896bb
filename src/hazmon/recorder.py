"""The alarm recorder: every alarm event reaches the journal, and every operator action the journal
and the audit trail (in one transaction), or — when the database refuses it for what it holds — the
dead-letter file, with an alarm raised. Nothing waits behind a refused write, and nothing is lost to
an outage, a crash or a shutdown.

::

    submit(item) ──▶ alarm spool (disk, fsynced: the write-ahead log) ──▶ queue ──▶ writer
                                                                                   │
        alarm_journal + alarm_state + audit_log, one transaction ◀─────────────────┤ committed: marked in the spool
        dead-letter file + `hazmon.journal:comm.LOSS` alarm      ◀─────────────────┤ refused for its content
        kept (already on disk), retried every second             ◀─────────────────┘ database unavailable

A batch the database refuses is split: each item is tried alone, so only the items at fault go to
the dead-letter file. At start-up ``replay`` writes what the previous run left in the spool before
the engine restores its state; an unreadable line is moved to the dead-letter file, never fatal.
What a crash can lose is said in ``hazmon.alarms.pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from hazmon import audit
from hazmon.alarms import journal
from hazmon.alarms.alarm import UnknownAlarm, split_alarm_id
from hazmon.alarms.pending import AlarmSpool, Pending
from hazmon.plant.tag import SCOPE, split_ref
from hazmon.reading import now_us
from hazmon.storage.database import Database

log = logging.getLogger(__name__)

JOURNAL_OWNER = "hazmon.journal"  # its comm.LOSS alarm: items went to the dead-letter file
RETRY_S = 1.0
ACQUIRE_TIMEOUT_S = 5.0
COMMIT_TIMEOUT_S = 30.0
DEAD_LETTER_HOLD_US = 60_000_000  # the alarm stands this long after the last dead-lettered item

JOURNALED = "journaled"
DEAD_LETTER = "dead-letter"
QUEUED = "queued"  # on disk, journaled when the database takes it


class RecordNotPossible(Exception):
    """Neither the database nor the disk spool can take an operator action now: it is not applied."""


class AlarmRecorder:
    def __init__(
        self,
        db: Database,
        spool: AlarmSpool,
        site_of: journal.SiteOf,
        *,
        on_alarm: Callable[[bool], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.site_of = site_of
        self.on_alarm = on_alarm  # called with ok=False when items are dead-lettered, ok=True after the hold
        self.on_failure = on_failure
        self._queue: deque[Pending] = deque()
        self._held: list[Pending] = []  # taken by the writer, not settled yet
        self._wake = asyncio.Event()
        self.busy = False
        self.down = False  # the last write found the database unavailable
        self.last_error: str | None = None
        self.failures = 0  # writes that found the database unavailable
        self.dead_lettered = 0  # items written to the dead-letter file
        self.spool_errors = 0  # disk refusals of the spool
        self.last_dead_letter_us: int | None = None
        self._alarm_active = False
        self._alarms_on = False  # the alarm is raised from the writer, once the engine is restored

    # ------------------------------------------------------------------ intake

    def submit(self, item: Pending) -> None:
        """Put the item on disk, then queue it for the journal (synchronous: never awaits)."""
        self._spool([item])
        self._queue.append(item)
        self._wake.set()

    def _spool(self, items: Sequence[Pending]) -> bool:
        try:
            self.spool.append(items)
            return True
        except OSError as e:
            self.spool_errors += 1
            n = sum(len(i.events) for i in items if i.seq is None)
            log.error(
                "alarm spool %s cannot be written (%s): %d alarm events held in memory only", self.spool.path, e, n
            )
            return False

    def writable(self) -> bool:
        """Whether an operator action can be recorded now: the database takes writes or the spool does."""
        if not self.down:
            return True
        try:
            self.spool.probe()
            return True
        except OSError as e:
            log.error("alarm spool %s cannot be written (%s) while the database is unavailable", self.spool.path, e)
            return False

    @property
    def pending(self) -> int:
        """Items not settled yet (queued or being written)."""
        return len(self._queue) + len(self._held)

    async def wait(self, item: Pending, timeout_s: float) -> str:
        """The item's outcome: JOURNALED or DEAD_LETTER, or QUEUED if not settled within ``timeout_s``."""
        if item.outcome is not None:
            return item.outcome
        if timeout_s <= 0:
            return QUEUED
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        item.waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            return QUEUED
        finally:
            if fut in item.waiters:
                item.waiters.remove(fut)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every submitted item is settled; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._held or self.busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"alarm journal did not catch up ({self.pending} items pending)")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ the writer

    async def run(self) -> None:
        """The writer task: takes everything queued, writes it in order, settles it."""
        self._alarms_on = True
        self._check_alarm()
        while True:
            if not self._queue and not self._held:
                self._wake.clear()
                timeout = None
                if self._alarm_active and self.last_dead_letter_us is not None:
                    timeout = max(0.0, (self.last_dead_letter_us + DEAD_LETTER_HOLD_US - now_us()) / 1e6) + 0.01
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._check_alarm()
                continue
            self._held.extend(self._queue)
            self._queue.clear()
            self._spool(self._held)  # items the disk refused earlier: try again
            items = self._held
            self.busy = True
            try:
                rest = await self._write(items)
            finally:
                self.busy = False
            self._held = rest
            self._after_write(items[: len(items) - len(rest)])
            self._check_alarm()
            if rest:
                await asyncio.sleep(RETRY_S)

    def _after_write(self, settled: Sequence[Pending]) -> None:
        if self._held:
            self.down = True
            self.failures += 1
            if self.on_failure is not None:
                self.on_failure()
            log.warning(
                "alarm journal unavailable (%d items kept on disk in %s, retrying): %s",
                len(self._held),
                self.spool.path,
                self.last_error,
            )
        elif self.down:
            self.down = False
            log.info("alarm journal writable again")
        try:
            if not self._held and not self._queue and all(i.seq is not None for i in settled):
                self.spool.clear()  # nothing left anywhere: the write-ahead log is empty
            else:
                self.spool.mark_journaled(settled)
        except OSError as e:
            # the items may be journaled twice after a restart; none is lost
            log.error("alarm spool %s: cannot record what was journaled (%s)", self.spool.path, e)

    async def _write(self, items: list[Pending]) -> list[Pending]:
        """Write the items in order; returns the ones still to write (the database is unavailable)."""
        try:
            await self._commit(items)
            self._settle(items, JOURNALED)
            return []
        except journal.JournalUnavailable as e:
            self.last_error = str(e)
            return items
        except journal.JournalRefused as e:
            if len(items) == 1:
                self._dead_letter(items, str(e))
                return []
        for n, item in enumerate(items):  # find the items at fault: one at a time
            try:
                await self._commit([item])
                self._settle([item], JOURNALED)
            except journal.JournalRefused as e:
                self._dead_letter([item], str(e))
            except journal.JournalUnavailable as e:
                self.last_error = str(e)
                return items[n:]
        return []

    async def _commit(self, items: Sequence[Pending]) -> None:
        events = [e for i in items for e in i.events]
        audits = [i.audit for i in items if i.audit is not None]
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                async with self.db.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                    await journal.append_events(conn, events, self.site_of)
                    for entry in audits:
                        await audit.append(conn, **entry)
        except Exception as e:  # classified: outage (retried) or refusal (dead letter)
            raise journal.classify(e, "alarm journal") from e

    def _settle(self, items: Sequence[Pending], outcome: str) -> None:
        for item in items:
            item.outcome = outcome
            for fut in item.waiters:
                if not fut.done():
                    fut.set_result(outcome)
            item.waiters.clear()

    def _dead_letter(self, items: Sequence[Pending], reason: str) -> None:
        n = sum(len(i.events) for i in items)
        try:
            self.spool.dead_letter(items, reason)
            log.error(
                "alarm journal refused %d alarm events (%s); kept in %s, an alarm is raised",
                n,
                reason,
                self.spool.dead_letter_path,
            )
        except OSError as e:
            log.critical(
                "alarm journal refused %d alarm events (%s) and %s cannot be written (%s); they were: %s",
                n,
                reason,
                self.spool.dead_letter_path,
                e,
                json.dumps([i.to_json() for i in items], default=str)[:20_000],
            )
        self.dead_lettered += len(items)
        self.last_dead_letter_us = now_us()
        self._settle(items, DEAD_LETTER)
        self._check_alarm()

    def _check_alarm(self) -> None:
        """Raise the dead-letter alarm, or clear it once the hold has passed."""
        if self.last_dead_letter_us is None or self.on_alarm is None or not self._alarms_on:
            return
        want = now_us() - self.last_dead_letter_us < DEAD_LETTER_HOLD_US
        if want != self._alarm_active:
            self._alarm_active = want
            self.on_alarm(not want)

    # ------------------------------------------------------------------ start and stop

    async def replay(self, ref_of: Callable[[str], str | None] | None = None) -> int:
        """Journal what a previous run left in the spool (before the engine restores its state).
        Returns how many items were replayed; what the database cannot take now is kept for the writer.

        ``ref_of`` names a bare tag or device id of a spool written before site-scoped identifiers
        (``V101.GT1``) across sites (``demo/V101.GT1``), None when no one site has it: such events
        are journaled under the id the engine now gives the alarm, as migration 080 did to the rows
        already in the journal."""
        items = self.spool.load()
        if ref_of is not None:
            qualify_legacy_ids(items, ref_of)
        if self.spool.moved_aside:
            self.dead_lettered += self.spool.moved_aside
            self.last_dead_letter_us = now_us()
            log.error(
                "%d unreadable lines of %s moved to %s; start-up goes on",
                self.spool.moved_aside,
                self.spool.path,
                self.spool.dead_letter_path,
            )
        if not items:
            if self.spool.moved_aside:
                self.spool.clear()
            return 0
        rest = await self._write(items)
        self._held = rest
        self._after_write(items[: len(items) - len(rest)])
        n = sum(len(i.events) for i in items)
        log.warning("%d alarm events left on disk by the previous run: replayed into the journal", n)
        return len(items)

    def keep_leftovers(self) -> None:
        """At shutdown, after the writer stopped: make sure whatever is not settled is on disk."""
        left = [*self._held, *self._queue]
        if not left:
            return
        n = sum(len(i.events) for i in left)
        if self._spool(left) or all(i.seq is not None for i in left):
            log.warning("%d alarm events not journaled yet are kept in %s for the next start", n, self.spool.path)
        else:
            lost: list[dict[str, Any]] = [i.to_json() for i in left if i.seq is None]
            log.critical("%d alarm events could not be journaled nor kept on disk: %s", n, json.dumps(lost)[:50_000])


def legacy_refs(refs: Iterable[str]) -> Callable[[str], str | None]:
    """For ``replay``: a bare id -> the one reference (``site/id``) among ``refs`` that has it, None
    when none or several sites do."""
    by_local: dict[str, list[str]] = {}
    for ref in refs:
        site, local = split_ref(ref)
        if site is not None:
            by_local.setdefault(local, []).append(ref)

    def ref_of(owner: str) -> str | None:
        found = by_local.get(owner, [])
        return found[0] if len(found) == 1 else None

    return ref_of


def qualify_legacy_ids(items: Sequence[Pending], ref_of: Callable[[str], str | None]) -> int:
    """Give the events of a spool written before site-scoped identifiers their site: ``V101.GT1:gas.H``
    becomes ``demo/V101.GT1:gas.H`` (tag id likewise) where ``ref_of`` places the owner. System
    alarms (``hazmon.*``) have no site; an owner no one site has is left as it was (and logged).
    Returns how many events were renamed."""
    renamed = 0
    unplaced: set[str] = set()
    for item in items:
        for n, e in enumerate(item.events):
            try:
                owner, condition = split_alarm_id(e.alarm_id)
            except UnknownAlarm:
                continue
            if SCOPE in owner or owner.startswith("hazmon."):
                continue
            ref = ref_of(owner)
            if ref is None:
                unplaced.add(owner)
                continue
            tag = ref if e.tag_id == owner else e.tag_id
            item.events[n] = replace(e, alarm_id=f"{ref}:{condition}", tag_id=tag)
            renamed += 1
    if renamed:
        log.warning("%d alarm events of the spool named before site-scoped ids: given their site", renamed)
    if unplaced:
        log.error(
            "alarm events of the spool name %s, which no one site served here has: journaled as they are",
            ", ".join(sorted(unplaced)[:10]),
        )
    return renamed
