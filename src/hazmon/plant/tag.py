"""Tag references and tag keys.

A tag id (``T101.LT``) is unique within its site only: two enterprises may both have a ``T101.LT``.
Wherever tags of several sites meet (the tag index, the rule engine, the live hub, the journal's alarm
ids, the API's paths), a tag is named by its *reference* ``<site>/<tag>`` (``demo-tank-farm/T101.LT``),
and an alarm by ``<site>/<owner>:<condition>`` (``demo-tank-farm/T101.LT:level.HH``). Identifiers
cannot hold ``/`` or ``:`` (``hazmon.plant.site.ID_PATTERN``), so both split without ambiguity.
System alarms of the service itself (``hazmon.storage:comm.LOSS``) belong to no site and carry none.

Tag keys are the dense integers that stand for tag references in reading batches and engine arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from hazmon.plant.site import Site

SCOPE = "/"


class UnknownTag(KeyError):
    pass


def tag_ref(site: str, local_id: str) -> str:
    """``("demo", "T101.LT")`` -> ``"demo/T101.LT"``: a tag (or device) named across sites."""
    return f"{site}{SCOPE}{local_id}"


def split_ref(ref: str) -> tuple[str | None, str]:
    """``"demo/T101.LT"`` -> ``("demo", "T101.LT")``; an unscoped name (a system owner) -> ``(None, name)``."""
    site, sep, local = ref.partition(SCOPE)
    return (site, local) if sep else (None, ref)


def local_id(ref: str) -> str:
    """The id within its site: ``"demo/T101.LT"`` -> ``"T101.LT"`` (an unscoped name is returned as is)."""
    return ref.rpartition(SCOPE)[2]


def site_of_ref(ref: str) -> str | None:
    """The site a reference (or an alarm id) names, None for a system owner."""
    return split_ref(ref)[0]


class TagIndex:
    """Two-way map between tag references (``site/tag``) and integer keys (>= 0, dense from 0 where
    built from sites); ``scoped(site)`` gives the same keys under the site's own tag ids.

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
        return cls([tag_ref(s.id, t.id) for s in sites for t in s.tags])

    def scoped(self, site: str) -> TagIndex:
        """The tags of one site under their own ids (``T101.LT``), with the same keys: what a gateway of
        that site, whose tag map names its site's tags, looks keys up in."""
        prefix = site + SCOPE
        items = [(ref[len(prefix) :], key) for ref, key in self._key.items() if ref.startswith(prefix)]
        return TagIndex([i for i, _ in items], [k for _, k in items])

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
