"""Where things are: the site, installation and equipment of every tag and device, and the tag keys of
each site, for scope checks and filters. Built from the sites, the tag/device -> site map and the tag
index; the runtime keeps one and rebuilds it when those change."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hazmon.plant.site import Site
from hazmon.plant.tag import TagIndex


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

    def place_of(self, owner: str) -> Place:
        return self.places.get(owner, NOWHERE)


def build_directory(sites: Sequence[Site], site_of: Mapping[str, str], tags: TagIndex) -> Directory:
    places: dict[str, Place] = {owner: Place(site_id, None, None) for owner, site_id in site_of.items()}
    for site in sites:
        equipment = {e.id: e for e in site.equipment}
        for t in site.tags:
            eq = equipment.get(t.equipment)
            places[t.id] = Place(site.id, eq.installation if eq else None, t.equipment)
    by_site: dict[str, list[int]] = {}
    for tag_id, key in tags.items():
        p = places.get(tag_id)
        if p is not None and p.site is not None:
            by_site.setdefault(p.site, []).append(key)
    site_keys = {s: np.asarray(k, dtype=np.int32) for s, k in by_site.items()}
    all_keys = np.asarray([k for _, k in tags.items()], dtype=np.int32)
    return Directory(places, site_keys, all_keys)
