"""The wire form of a reading batch on the message bus: a fixed header and the four columns as raw
little-endian arrays, so that a 10,000-reading batch is one 210 kB message decoded without a loop.

Layout (all little-endian)::

    magic b"HZRB" | version u8 | reserved u8 | reserved u16 | n u32 | batch id (16 bytes)
    tag int32[n] | ts int64[n] | value float64[n] | quality uint8[n]

``decode_batch`` checks the magic, the version and the length, and raises ``CodecError`` with what is
wrong: a malformed message is counted and set aside by the consumer, never half-read.

A gateway process also tells the engine shards how its devices communicate, in the same partition as
the device's readings (so a shard sees a loss and the readings around it in order): ``DeviceStatus``,
``b"HZDS"`` then a JSON object. ``decode_message`` reads either kind.
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import numpy as np

from hazmon.reading import DeviceStatus, ReadingBatch

MAGIC = b"HZRB"
DEVICE_MAGIC = b"HZDS"
VERSION = 1
_HEADER = struct.Struct("<4sBBHI16s")
HEADER_BYTES = _HEADER.size  # 28
BYTES_PER_READING = 4 + 8 + 8 + 1


class CodecError(ValueError):
    pass


def encode_batch(batch: ReadingBatch) -> bytes:
    n = len(batch)
    return b"".join(
        (
            _HEADER.pack(MAGIC, VERSION, 0, 0, n, batch.batch_id.bytes),
            batch.tag.astype("<i4", copy=False).tobytes(),
            batch.ts.astype("<i8", copy=False).tobytes(),
            batch.value.astype("<f8", copy=False).tobytes(),
            batch.quality.astype("u1", copy=False).tobytes(),
        )
    )


def decode_batch(data: bytes | bytearray | memoryview) -> ReadingBatch:
    buf = memoryview(data)
    if len(buf) < HEADER_BYTES:
        raise CodecError(f"reading batch: {len(buf)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, _, _, n, raw_id = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise CodecError(f"reading batch: bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise CodecError(f"reading batch: version {version} (this hazmon reads {VERSION})")
    want = HEADER_BYTES + n * BYTES_PER_READING
    if len(buf) != want:
        raise CodecError(f"reading batch: {len(buf)} bytes for {n} readings, expected {want}")
    o = HEADER_BYTES
    tag = np.frombuffer(buf, "<i4", n, o).astype(np.int32)
    o += 4 * n
    ts = np.frombuffer(buf, "<i8", n, o).astype(np.int64)
    o += 8 * n
    value = np.frombuffer(buf, "<f8", n, o).astype(np.float64)
    o += 8 * n
    quality = np.frombuffer(buf, "u1", n, o).astype(np.uint8)
    return ReadingBatch(tag, ts, value, quality, uuid.UUID(bytes=bytes(raw_id)))


def encode_device_status(status: DeviceStatus) -> bytes:
    doc = {
        "site": status.site,
        "owner": status.owner,
        "keys": list(status.keys),
        "ok": status.ok,
        "ts_us": status.ts_us,
        "refresh": status.refresh,
    }
    return DEVICE_MAGIC + json.dumps(doc, separators=(",", ":")).encode()


def _device_status(data: bytes) -> DeviceStatus:
    try:
        d: Any = json.loads(data[len(DEVICE_MAGIC) :])
    except (ValueError, RecursionError) as e:
        raise CodecError(f"device status: not JSON: {e}") from None

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(d, dict):
        raise CodecError("device status: not a JSON object")
    site, owner, keys, ok, ts, refresh = (d.get(k) for k in ("site", "owner", "keys", "ok", "ts_us", "refresh"))
    if not (isinstance(site, str) and isinstance(owner, str) and isinstance(ok, bool) and is_int(ts)):
        raise CodecError("device status: site and owner are strings, ok a boolean, ts_us an integer")
    if not (isinstance(keys, list) and all(is_int(k) for k in keys)):
        raise CodecError("device status: keys is a list of integers")
    assert isinstance(ts, int)  # is_int(ts), for the type checker
    return DeviceStatus(site, owner, tuple(keys), ok, ts, refresh is True)


def decode_message(data: bytes | bytearray | memoryview) -> ReadingBatch | DeviceStatus:
    """A message of the readings stream: a reading batch or a device status (``CodecError`` otherwise)."""
    raw = bytes(data[: len(DEVICE_MAGIC)])
    if raw == DEVICE_MAGIC:
        return _device_status(bytes(data))
    return decode_batch(data)
