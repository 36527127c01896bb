"""The disk spool: order, restart, torn tails, bounded size, and a real kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from hazmon.reading import ReadingBatch
from hazmon.storage.spool import Spool, SpoolError, encode_record


def batch(i: int, n: int = 10) -> ReadingBatch:
    return ReadingBatch.from_columns(np.arange(n), np.full(n, 1_700_000_000_000_000 + i), np.full(n, float(i)), 0)


def drain(sp: Spool) -> list[float]:
    out = []
    while recs := sp.read(16):
        out += [r.batch.value[0] for r in recs]
        sp.ack(recs[-1].seq)
    return out


def test_round_trip_in_order_across_segments(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=2_000)
    sent = [batch(i) for i in range(100)]
    for b in sent:
        sp.append(b)
    assert sp.stats().segments > 5
    recs = sp.read(1000)
    assert [r.batch.batch_id for r in recs] == [b.batch_id for b in sent]
    got = recs[57].batch
    np.testing.assert_array_equal(got.tag, sent[57].tag)
    np.testing.assert_array_equal(got.ts, sent[57].ts)
    np.testing.assert_array_equal(got.value, sent[57].value)
    sp.ack(recs[-1].seq)
    assert len(sp) == 0 and sp.stats().segments == 1
    sp.close()


def test_restart_replays_only_unacknowledged_and_continues_numbering(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=1_000)
    for i in range(30):
        sp.append(batch(i))
    recs = sp.read(12)
    sp.ack(recs[-1].seq)
    sp.read(5)  # read but not acknowledged: must come again
    sp.close()
    sp = Spool(tmp_path, segment_bytes=1_000)
    assert len(sp) == 18 and sp.pending_readings() == 180
    seq = sp.append(batch(30))
    assert seq == 30
    assert drain(sp) == [float(i) for i in range(12, 31)]
    sp.close()


def test_rewind_reads_the_same_records_again(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for i in range(5):
        sp.append(batch(i))
    first = sp.read(3)
    sp.rewind()
    again = sp.read(3)
    assert [r.seq for r in first] == [r.seq for r in again] == [0, 1, 2]
    sp.close()


def test_torn_tail_is_truncated_and_counted(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for i in range(5):
        sp.append(batch(i))
    sp.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data + data[:37])  # half a record, as a crash mid-write would leave
    sp = Spool(tmp_path)
    assert sp.stats().corrupt_records == 1
    assert drain(sp) == [0.0, 1.0, 2.0, 3.0, 4.0]
    sp.append(batch(5))
    assert drain(sp) == [5.0]
    sp.close()


def test_corrupt_record_detected_by_crc(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    for i in range(3):
        sp.append(batch(i))
    sp.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last record's payload
    seg.write_bytes(bytes(data))
    sp = Spool(tmp_path)
    assert sp.stats().corrupt_records == 1
    assert drain(sp) == [0.0, 1.0]
    sp.close()


def test_full_spool_drops_the_oldest_and_counts_the_loss(tmp_path: Path) -> None:
    one = len(batch(0)) * 21 + 44
    sp = Spool(tmp_path, max_bytes=one * 40, segment_bytes=one * 10)
    for i in range(100):
        sp.append(batch(i))
    st = sp.stats()
    assert st.bytes <= one * 40
    assert st.dropped_batches > 0 and st.dropped_readings == st.dropped_batches * 10
    got = drain(sp)
    assert got == [float(i) for i in range(100 - len(got), 100)]  # the newest survive, in order
    assert len(got) + st.dropped_batches == 100
    sp.close()


def test_kill_9_loses_nothing_appended(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        from hazmon.reading import ReadingBatch
        from hazmon.storage.spool import Spool
        sp = Spool(__import__("pathlib").Path({str(tmp_path)!r}), fsync_interval_s=3600)
        for i in range(500):
            sp.append(ReadingBatch.from_columns(np.arange(20), 1, np.full(20, float(i)), 0))
        print("appended", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == -9 and "appended" in p.stdout
    sp = Spool(tmp_path)
    assert len(sp) == 500 and sp.stats().corrupt_records == 0
    assert drain(sp) == [float(i) for i in range(500)]
    sp.close()
    assert os.listdir(tmp_path)


def _flip(seg: Path, record: int, records_per_seg_bytes: int) -> None:
    """Flip a byte inside the payload of the ``record``-th record of a segment of equal records."""
    data = bytearray(seg.read_bytes())
    data[record * records_per_seg_bytes + 60] ^= 0xFF
    seg.write_bytes(bytes(data))


def test_a_corrupt_record_found_when_reading_is_skipped_alone_and_counted(tmp_path: Path) -> None:
    """Bit rot in a non-final segment while running: that record is lost and counted, the records
    after it in the same segment are still delivered."""
    one = len(encode_record(0, uuid.uuid4(), batch(0)))  # bytes of one record
    sp = Spool(tmp_path, segment_bytes=one * 10)
    for i in range(30):
        sp.append(batch(i))
    first = sorted(tmp_path.glob("*.seg"))[0]
    assert sp.stats().segments == 3
    _flip(first, 4, one)
    assert drain(sp) == [float(i) for i in range(30) if i != 4]
    st = sp.stats()
    assert (st.corrupt_records, st.corrupt_readings) == (1, 10)
    assert len(sp) == 0
    sp.close()


def test_a_corrupt_record_found_at_open_keeps_its_place_and_the_rest_of_its_segment(tmp_path: Path) -> None:
    one = len(encode_record(0, uuid.uuid4(), batch(0)))  # bytes of one record
    sp = Spool(tmp_path, segment_bytes=one * 10)
    for i in range(30):
        sp.append(batch(i))
    sp.close()
    _flip(sorted(tmp_path.glob("*.seg"))[1], 2, one)  # record 12, in the middle segment
    sp = Spool(tmp_path, segment_bytes=one * 10)
    assert len(sp) == 30
    assert drain(sp) == [float(i) for i in range(30) if i != 12]
    st = sp.stats()
    assert (st.corrupt_records, st.corrupt_readings) == (1, 10)
    sp.close()


def test_a_cursor_that_cannot_be_saved_does_not_stop_delivery(tmp_path: Path) -> None:
    """A real disk failure (root ignores chmod): a directory where the cursor file goes. Delivery goes
    on, each failure is counted with its error; once the path is free the cursor is saved again."""
    sp = Spool(tmp_path)
    for i in range(5):
        sp.append(batch(i))
    (tmp_path / "cursor").unlink(missing_ok=True)
    (tmp_path / "cursor").mkdir()
    assert drain(sp) == [0.0, 1.0, 2.0, 3.0, 4.0]
    st = sp.stats()
    assert st.disk_errors >= 1 and st.last_error is not None and "cursor" in st.last_error
    (tmp_path / "cursor").rmdir()
    sp.append(batch(5))
    assert drain(sp) == [5.0]
    assert (tmp_path / "cursor").read_text() == "6"
    sp.close()


def test_a_segment_that_cannot_be_read_raises_and_skips_nothing(tmp_path: Path) -> None:
    one = len(encode_record(0, uuid.uuid4(), batch(0)))  # bytes of one record
    sp = Spool(tmp_path, segment_bytes=one * 10)
    for i in range(30):
        sp.append(batch(i))
    second = sorted(tmp_path.glob("*.seg"))[1]
    second.rename(tmp_path / "aside")
    second.mkdir()  # a directory where the segment was: reading it fails for real
    got = [r.batch.value[0] for r in sp.read(10)]
    with pytest.raises(SpoolError, match="cannot read"):
        sp.read(1)
    second.rmdir()
    (tmp_path / "aside").rename(second)
    got += drain(sp)
    assert got == [float(i) for i in range(30)]
    sp.close()
