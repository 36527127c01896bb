"""Tag keys: the dense integers that stand for tag ids in reading batches and engine arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from hazmon.plant.site import Site


class UnknownTag(KeyError):
    pass


class TagIndex:
    """Two-way map between tag ids and integer keys (>= 0, dense from 0 where built from sites).

    The database registry assigns each tag a permanent key; in memory the runtime builds a
    TagIndex from it. Without a database (tests, the simulator) ``from_sites`` enumerates tags.
    """

    def __init__(self, ids: Sequence[str], keys: Sequence[int] | None = None) -> None:
        if keys is None:
            keys = range(len(ids))
        if len(keys) != len(ids):
            raise ValueError("ids and keys differ in length")
        self._key: dict[str, int] = {}
        for tag_id, key in zip(ids, keys, strict=True):
            if tag_id in self._key:
                raise ValueError(f"duplicate tag id {tag_id!r}")
            if key < 0:
                raise ValueError("tag keys must be >= 0")
            self._key[tag_id] = int(key)
        self.size = max(self._key.values(), default=-1) + 1
        self._id: list[str | None] = [None] * self.size
        for tag_id, key in self._key.items():
            if self._id[key] is not None:
                raise ValueError(f"duplicate tag key {key}")
            self._id[key] = tag_id

    @classmethod
    def from_sites(cls, sites: Iterable[Site]) -> TagIndex:
        return cls([t.id for s in sites for t in s.tags])

    def __len__(self) -> int:
        return len(self._key)

    def __contains__(self, tag_id: object) -> bool:
        return tag_id in self._key

    def key(self, tag_id: str) -> int:
        try:
            return self._key[tag_id]
        except KeyError:
            raise UnknownTag(tag_id) from None

    def get(self, tag_id: str) -> int | None:
        return self._key.get(tag_id)

    def id(self, key: int) -> str:
        if 0 <= key < self.size:
            tag_id = self._id[key]
            if tag_id is not None:
                return tag_id
        raise UnknownTag(key)

    def keys_of(self, tag_ids: Iterable[str]) -> npt.NDArray[np.int32]:
        return np.fromiter((self.key(t) for t in tag_ids), dtype=np.int32)

    @property
    def ids(self) -> list[str]:
        return list(self._key)

    def items(self) -> Iterable[tuple[str, int]]:
        return self._key.items()
