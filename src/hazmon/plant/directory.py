"""Where things are: the site, installation and equipment of every tag and device, and the tag keys of
each site, for scope checks and filters. Built from the sites, the tag/device -> site map and the tag
index; the runtime keeps one and rebuilds it when those change.

Tags and devices are named by their reference ``site/id``. ``Directory.resolve`` also takes a bare id
(``T101.LT``) where exactly one site the caller sees has it: the short form an enterprise with one site
uses; where two of the caller's sites have it, the bare id is refused as ambiguous.

A system alarm (``hazmon.storage``, a supervised component, a gateway) belongs to no one site but
*affects* some: ``Place.sites`` lists them, and whoever sees one of them sees the alarm
(``Place.seen_by``). A tag's place affects its own site only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hazmon.plant.site import Site
from hazmon.plant.tag import SCOPE, TagIndex, split_ref, tag_ref


@dataclass(frozen=True, slots=True)
class Place:
    site: str | None
    installation: str | None
    equipment: str | None
    affects: frozenset[str] = frozenset()  # further sites a system alarm affects

    @property
    def sites(self) -> frozenset[str]:
        """Every site this place belongs to or affects."""
        return self.affects | {self.site} if self.site is not None else self.affects

    def seen_by(self, sees: Callable[[str | None], bool]) -> bool:
        """Whether a caller who ``sees`` sites (``Principal.sees``) sees what is here."""
        return sees(self.site) or any(sees(s) for s in self.affects)


NOWHERE = Place(None, None, None)


class AmbiguousName(LookupError):
    """A bare tag or device id that more than one of the caller's sites has."""

    def __init__(self, name: str, refs: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.refs = sorted(refs)

    def __str__(self) -> str:
        return f"{self.name!r} is in {len(self.refs)} sites: name it by its site ({', '.join(self.refs[:5])})"


@dataclass(frozen=True, slots=True)
class Directory:
    places: dict[str, Place]  # tag or device reference (site/id), or system owner -> place
    site_keys: dict[str, npt.NDArray[np.int32]]  # site id -> keys of its tags (in the runtime's index)
    all_keys: npt.NDArray[np.int32]
    by_local: dict[str, list[str]] = field(default_factory=dict)  # bare tag/device id -> its references

    def place_of(self, owner: str) -> Place:
        return self.places.get(owner, NOWHERE)

    def resolve(self, name: str, sees: Callable[[str | None], bool] = lambda _: True) -> str:
        """The reference of a tag or device named ``site/id``, or by its bare id where exactly one site
        that the caller ``sees`` has it; a system owner (``hazmon.storage``) as it is. A name that
        resolves to nothing is returned unchanged (the caller's lookup reports it unknown); one in
        several of the caller's sites raises AmbiguousName."""
        if SCOPE in name or name in self.places:
            return name
        refs = [r for r in self.by_local.get(name, ()) if sees(self.places[r].site)]
        if len(refs) > 1:
            raise AmbiguousName(name, refs)
        return refs[0] if refs else name

    def resolve_alarm(self, alarm_id: str, sees: Callable[[str | None], bool] = lambda _: True) -> str:
        """``T101.LT:level.HH`` -> ``demo/T101.LT:level.HH`` as ``resolve`` does for its owner."""
        owner, sep, condition = alarm_id.rpartition(":")
        if not sep:
            return alarm_id
        return f"{self.resolve(owner, sees)}:{condition}"


def build_directory(
    sites: Sequence[Site],
    site_of: Mapping[str, str],
    tags: TagIndex,
    system: Mapping[str, Iterable[str]] | None = None,
) -> Directory:
    """``system``: owners of system alarms -> the sites each affects."""
    places: dict[str, Place] = {owner: Place(site_id, None, None) for owner, site_id in site_of.items()}
    for owner, affected in (system or {}).items():
        known = places.get(owner, NOWHERE)
        places[owner] = Place(known.site, None, None, frozenset(s for s in affected if s != known.site))
    for site in sites:
        equipment = {e.id: e for e in site.equipment}
        for t in site.tags:
            eq = equipment.get(t.equipment)
            places[tag_ref(site.id, t.id)] = Place(site.id, eq.installation if eq else None, t.equipment)
    by_site: dict[str, list[int]] = {}
    for tag_id, key in tags.items():
        p = places.get(tag_id)
        if p is not None and p.site is not None:
            by_site.setdefault(p.site, []).append(key)
    site_keys = {s: np.asarray(k, dtype=np.int32) for s, k in by_site.items()}
    all_keys = np.asarray([k for _, k in tags.items()], dtype=np.int32)
    by_local: dict[str, list[str]] = {}
    for ref in places:
        scope, local = split_ref(ref)
        if scope is not None:
            by_local.setdefault(local, []).append(ref)
    return Directory(places, site_keys, all_keys, by_local)
