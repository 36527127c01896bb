"""Columnar reading batches: the one currency between gateways, the rule engine and the store.

A batch is four aligned numpy arrays — tag key, timestamp, value, quality — and an id that makes a
retried write idempotent. Timestamps are int64 microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

TagArray = npt.NDArray[np.int32]
TimeArray = npt.NDArray[np.int64]
ValueArray = npt.NDArray[np.float64]
QualityArray = npt.NDArray[np.uint8]

US_PER_S = 1_000_000


class Quality(IntEnum):
    """Reading quality. Codes >= BAD are bad; UNCERTAIN..BAD-1 are uncertain."""

    GOOD = 0
    UNCERTAIN = 64
    BAD = 128
    BAD_COMM = 129  # the source could not be reached
    BAD_SENSOR = 130  # the instrument reports a failure
    BAD_CONFIG = 131  # the source reports a configuration error
    BAD_OUT_OF_SERVICE = 132


def is_bad(quality: QualityArray) -> npt.NDArray[np.bool_]:
    return quality >= Quality.BAD


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class ReadingBatch:
    tag: TagArray
    ts: TimeArray
    value: ValueArray
    quality: QualityArray
    batch_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        n = len(self.tag)
        if not (len(self.ts) == len(self.value) == len(self.quality) == n):
            raise ValueError("reading batch columns differ in length")

    def __len__(self) -> int:
        return len(self.tag)

    @classmethod
    def from_columns(
        cls,
        tag: npt.ArrayLike,
        ts: npt.ArrayLike,
        value: npt.ArrayLike,
        quality: npt.ArrayLike | None = None,
        batch_id: uuid.UUID | None = None,
    ) -> ReadingBatch:
        tag_a = np.ascontiguousarray(tag, dtype=np.int32)
        ts_a = np.asarray(ts, dtype=np.int64)  # not ascontiguousarray: it turns a scalar into shape (1,)
        if ts_a.ndim == 0:
            ts_a = np.full(len(tag_a), ts_a, dtype=np.int64)
        ts_a = np.ascontiguousarray(ts_a)
        value_a = np.ascontiguousarray(value, dtype=np.float64)
        if quality is None:
            quality_a = np.zeros(len(tag_a), dtype=np.uint8)
        else:
            quality_a = np.asarray(quality, dtype=np.uint8)
            if quality_a.ndim == 0:
                quality_a = np.full(len(tag_a), quality_a, dtype=np.uint8)
            quality_a = np.ascontiguousarray(quality_a)
        return cls(tag_a, ts_a, value_a, quality_a, batch_id or uuid.uuid4())

    @classmethod
    def empty(cls) -> ReadingBatch:
        return cls.from_columns([], [], [], [])

    @classmethod
    def concat(cls, batches: list[ReadingBatch]) -> ReadingBatch:
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(
            np.concatenate([b.tag for b in batches]),
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.quality for b in batches]),
        )

    def take(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | slice) -> ReadingBatch:
        """A new batch holding the selected rows (boolean mask or integer index)."""
        return ReadingBatch(self.tag[index], self.ts[index], self.value[index], self.quality[index])


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A gateway's device talks to its PLC or server (``ok``) or not, as the gateway saw it at ``ts_us``.
    ``owner``: its site-scoped name (``site/gateway.device``); ``keys``: the tags it delivers;
    ``refresh``: it reports by exception (an OPC UA subscription), so while it is up its quiet tags
    are not stale."""

    site: str
    owner: str
    keys: tuple[int, ...]
    ok: bool
    ts_us: int
    refresh: bool = False

    def msg_id(self) -> str:
        return f"{self.owner}|{self.ts_us}|{int(self.ok)}"
