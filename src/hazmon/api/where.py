"""Where things are: the site, installation and equipment of a tag or device, for scope checks
and filters. Built from the runtime's sites and its tag/device -> site map, and cached until those
change."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hazmon.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Place:
    site: str | None
    installation: str | None
    equipment: str | None


NOWHERE = Place(None, None, None)


@dataclass(frozen=True, slots=True)
class Directory:
    places: dict[str, Place]  # tag or device id -> place
    site_keys: dict[str, npt.NDArray[np.int32]]  # site id -> keys of its tags (in the runtime's index)
    all_keys: npt.NDArray[np.int32]


_cache: dict[int, tuple[object, object, object, tuple[int, int, int], Directory]] = {}


def directory(runtime: Runtime) -> Directory:
    size = (len(runtime.sites), len(runtime.site_of), len(runtime.tags))
    hit = _cache.get(id(runtime))
    if (
        hit is not None
        and hit[0] is runtime.site_of
        and hit[1] is runtime.sites
        and hit[2] is runtime.tags
        and hit[3] == size
    ):
        return hit[4]
    places: dict[str, Place] = {owner: Place(site_id, None, None) for owner, site_id in runtime.site_of.items()}
    for site in runtime.sites:
        equipment = {e.id: e for e in site.equipment}
        for t in site.tags:
            eq = equipment.get(t.equipment)
            places[t.id] = Place(site.id, eq.installation if eq else None, t.equipment)
    by_site: dict[str, list[int]] = {}
    for tag_id, key in runtime.tags.items():
        p = places.get(tag_id)
        if p is not None and p.site is not None:
            by_site.setdefault(p.site, []).append(key)
    site_keys = {s: np.asarray(k, dtype=np.int32) for s, k in by_site.items()}
    all_keys = np.asarray([k for _, k in runtime.tags.items()], dtype=np.int32)
    d = Directory(places, site_keys, all_keys)
    if len(_cache) > 64:
        _cache.clear()
    _cache[id(runtime)] = (runtime.site_of, runtime.sites, runtime.tags, size, d)
    return d


def place_of(runtime: Runtime, owner: str) -> Place:
    return directory(runtime).places.get(owner, NOWHERE)
