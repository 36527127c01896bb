"""The plant layout a ``PlantModel`` runs on, computed once from the site and scenario and never
changed by a step: the vessels' geometry, contents and trip settings, the pumps and compressors,
where equipment and gas detectors stand on the plant map, and which tag reads what (``TagsOf``
per ``Role``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hazmon.plant.site import Equipment, EquipmentType, GasClass, Signal, Site, Tag, TagKind
from hazmon.sim.physics import Substance, sphere_fill_fraction, sphere_height_fraction, substance
from hazmon.sim.roles import PRESSURE_TO_KPA, VESSEL_TYPES, Role, VesselKind, tag_role
from hazmon.sim.scenario import Scenario

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Vessels:
    """The spheres and tanks, indexed like ``equipment``: what they hold and how big they are."""

    equipment: list[Equipment]
    index: dict[str, int]
    subs: list[Substance]
    kind: npt.NDArray[np.int8]  # VesselKind
    sphere: BOOL
    diameter: F64
    height: F64
    area: F64
    vol_full: F64
    density: F64
    level_top: F64
    lshh_m: F64  # SIS high-high level
    pshh_kpa: F64  # SIS high-high pressure, gauge
    psv_kpa: F64  # relief valves lift at the design pressure (gauge kPa); without one, no cap
    tau_temp: F64  # time constant (s) of the liquid temperature
    solar_gain: F64  # °C at full sun
    pressurized_groups: list[tuple[Substance, I64]]  # pressurized vessels by substance
    refrigerated_groups: list[tuple[Substance, I64]]

    def __len__(self) -> int:
        return len(self.equipment)

    def volume_of(self, level: F64) -> F64:
        sph = sphere_fill_fraction(level / self.diameter) * self.vol_full
        return np.where(self.sphere, sph, self.area * level)

    def level_of(self, volume: F64) -> F64:
        sph = sphere_height_fraction(volume / self.vol_full) * self.diameter
        return np.where(self.sphere, sph, volume / self.area)


@dataclass(frozen=True, slots=True)
class Machines:
    """Pumps and compressors: equipment with a run signal."""

    ids: list[str]
    index: dict[str, int]
    compressor_of: dict[int, int]  # refrigerated vessel -> its boil-off compressor

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class Detectors:
    """Gas detectors on a ring around their equipment, in the order of their tags."""

    x: F64
    y: F64
    molar_mass: F64
    lel: F64
    toxic: BOOL
    tag: I64  # tag index of each detector
    background: F64

    def __len__(self) -> int:
        return len(self.tag)


class TagsOf:
    """Index pairs (tag index, vessel or machine index) for one role."""

    __slots__ = ("owner", "tag")

    def __init__(self, tag: list[int], owner: list[int]) -> None:
        self.tag: I64 = np.asarray(tag, dtype=np.int64)
        self.owner: I64 = np.asarray(owner, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class PlantLayout:
    """Everything about the plant that a step does not change; arrays per tag are indexed like ``tags``."""

    tags: list[Tag]
    tag_ids: list[str]
    index: dict[str, int]
    roles: npt.NDArray[np.int8]  # Role
    range_lo: F64
    range_hi: F64
    discrete: BOOL
    vessels: Vessels
    machines: Machines
    position: dict[str, tuple[float, float]]  # equipment id -> (x, y) on the plant map, m
    detectors: Detectors
    links: dict[Role, TagsOf]
    pressure_factor: F64  # kPa gauge -> the unit of each PRESSURE tag

    @classmethod
    def of(cls, site: Site, scenario: Scenario) -> PlantLayout:
        tags = list(site.tags)
        tag_ids = [t.id for t in tags]
        index = {tid: i for i, tid in enumerate(tag_ids)}
        equipment = site.equipment_by_id()
        roles = np.array([tag_role(t, equipment[t.equipment]) for t in tags], dtype=np.int8)
        vessels = _vessels(site, scenario)
        machines = _machines(tags, equipment, vessels)
        position = _positions(site)
        links = _links(tags, roles, vessels, machines)
        return cls(
            tags=tags,
            tag_ids=tag_ids,
            index=index,
            roles=roles,
            range_lo=np.array([t.range[0] if t.range else 0.0 for t in tags]),
            range_hi=np.array([t.range[1] if t.range else 1.0 for t in tags]),
            discrete=np.array([t.is_discrete for t in tags], dtype=bool),
            vessels=vessels,
            machines=machines,
            position=position,
            detectors=_detectors(tags, index, equipment, position),
            links=links,
            pressure_factor=np.array(
                [1.0 / PRESSURE_TO_KPA[tags[i].unit.lower()] for i in links[Role.PRESSURE].tag], dtype=np.float64
            ),
        )


def _vessels(site: Site, scenario: Scenario) -> Vessels:
    vessels = [e for e in site.equipment if e.type in VESSEL_TYPES]
    subs = [substance(e.chemical) for e in vessels]
    kinds = []
    for e, sub in zip(vessels, subs, strict=True):
        if e.type is EquipmentType.REFRIGERATED_TANK and sub.antoine:
            kinds.append(VesselKind.REFRIGERATED)
        elif e.type is EquipmentType.SPHERE and sub.antoine:
            kinds.append(VesselKind.PRESSURIZED)
        else:
            kinds.append(VesselKind.ATMOSPHERIC)
    kind = np.array(kinds, dtype=np.int8)
    sphere = np.array([e.type is EquipmentType.SPHERE for e in vessels], dtype=bool)
    diameter = np.array([e.diameter_m or (e.capacity_m3 or 1000.0) ** (1 / 3) for e in vessels])
    height = np.array([e.height_m or e.diameter_m or 15.0 for e in vessels])
    height = np.where(sphere, diameter, height)
    area = math.pi * diameter**2 / 4
    top = np.array([e.design.level_max_m or h for e, h in zip(vessels, height, strict=True)])
    level_top = np.minimum(top, height)
    setups = scenario.equipment
    default_pshh = np.where(kind == VesselKind.REFRIGERATED, 25.0, np.inf)

    def groups(of: VesselKind) -> list[tuple[Substance, I64]]:
        by_name: dict[str, list[int]] = {}
        for v, sub in enumerate(subs):
            if kind[v] == of:
                by_name.setdefault(sub.name, []).append(v)
        return [(substance(name), np.array(vs, dtype=np.int64)) for name, vs in by_name.items()]

    return Vessels(
        equipment=vessels,
        index={e.id: i for i, e in enumerate(vessels)},
        subs=subs,
        kind=kind,
        sphere=sphere,
        diameter=diameter,
        height=height,
        area=area,
        vol_full=np.where(sphere, math.pi * diameter**3 / 6, area * height),
        density=np.array([s.density for s in subs]),
        level_top=level_top,
        lshh_m=np.array(
            [
                (setups[e.id].lshh_m if e.id in setups and setups[e.id].lshh_m else None) or 0.9 * t
                for e, t in zip(vessels, level_top, strict=True)
            ]
        ),
        pshh_kpa=np.array(
            [
                (setups[e.id].pshh_kpa if e.id in setups and setups[e.id].pshh_kpa is not None else None) or float(d)
                for e, d in zip(vessels, default_pshh, strict=True)
            ]
        ),
        psv_kpa=np.array(
            [e.design.pressure_max_mpa * 1000.0 if e.design.pressure_max_mpa else np.inf for e in vessels]
        ),
        tau_temp=np.where(sphere, 8 * 3600.0, 24 * 3600.0),
        solar_gain=np.where(sphere, 4.0, 2.0),
        pressurized_groups=groups(VesselKind.PRESSURIZED),
        refrigerated_groups=groups(VesselKind.REFRIGERATED),
    )


def _machines(tags: list[Tag], equipment: dict[str, Equipment], vessels: Vessels) -> Machines:
    running = [t for t in tags if t.kind is TagKind.STATE and t.signal is Signal.PUMP]
    ids = list(dict.fromkeys(t.equipment for t in running))
    index = {m: i for i, m in enumerate(ids)}
    # a boil-off compressor serves the refrigerated tanks of its installation
    compressor_of: dict[int, int] = {}
    for t in running:
        eq = equipment[t.equipment]
        if "compressor" not in (eq.name + " " + t.name).lower():
            continue
        for v, vessel in enumerate(vessels.equipment):
            if vessels.kind[v] == VesselKind.REFRIGERATED and vessel.installation == eq.installation:
                compressor_of[v] = index[t.equipment]
    return Machines(ids, index, compressor_of)


def _positions(site: Site) -> dict[str, tuple[float, float]]:
    """Places equipment on a plant map: one column per installation, 20 m between neighbours."""
    pos: dict[str, tuple[float, float]] = {}
    for col, inst in enumerate(i.id for i in site.installations):
        x = col * 150.0
        y = 0.0
        for e in site.equipment:
            if e.installation != inst:
                continue
            r = (e.diameter_m or 4.0) / 2
            pos[e.id] = (x, y + r)
            y += 2 * r + 20.0
    return pos


def _detectors(
    tags: list[Tag], index: dict[str, int], equipment: dict[str, Equipment], pos: dict[str, tuple[float, float]]
) -> Detectors:
    """Places gas detectors on a ring 3 m outside their equipment."""
    per_eq: dict[str, list[Tag]] = {}
    for t in tags:
        if t.kind is TagKind.GAS:
            per_eq.setdefault(t.equipment, []).append(t)
    xs, ys, mm, lel, toxic, idx = [], [], [], [], [], []
    for eq_id, group in per_eq.items():
        cx, cy = pos[eq_id]
        r = (equipment[eq_id].diameter_m or 4.0) / 2 + 3.0
        for k, t in enumerate(group):
            bearing = math.radians(45.0 + 360.0 * k / len(group))
            xs.append(cx + r * math.sin(bearing))
            ys.append(cy + r * math.cos(bearing))
            assert t.gas is not None
            sub = substance(t.gas.substance)
            mm.append(sub.molar_mass)
            lel.append(sub.lel if sub.lel > 0 else 0.02)
            toxic.append(t.gas.gas_class is GasClass.TOXIC)
            idx.append(index[t.id])
    det_toxic = np.array(toxic, dtype=bool)
    return Detectors(
        x=np.array(xs),
        y=np.array(ys),
        molar_mass=np.array(mm),
        lel=np.array(lel),
        toxic=det_toxic,
        tag=np.array(idx, dtype=np.int64),
        background=np.where(det_toxic, 0.8, 0.0) if len(idx) else np.zeros(0),
    )


def _links(tags: list[Tag], roles: npt.NDArray[np.int8], vessels: Vessels, machines: Machines) -> dict[Role, TagsOf]:
    """Links each tag to the vessel or machine it reads; an in-service signal without a vessel becomes a plain state."""
    links: dict[Role, tuple[list[int], list[int]]] = {r: ([], []) for r in Role}
    for i, t in enumerate(tags):
        role = Role(int(roles[i]))
        owner = -1
        if t.equipment in vessels.index:
            owner = vessels.index[t.equipment]
        elif role is Role.RUNNING:
            owner = machines.index[t.equipment]
        if role is Role.IN_SERVICE and owner < 0:
            role = Role.OTHER_STATE
            roles[i] = role
        links[role][0].append(i)
        links[role][1].append(owner)
    return {r: TagsOf(tag, owner) for r, (tag, owner) in links.items()}
