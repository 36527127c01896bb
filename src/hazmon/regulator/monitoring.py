"""The monitoring a major hazard installation must have, from its chemicals, equipment and grade, and
what the site file shows to be missing (Order 40 of 2011 art. 13, AQ 3035-2010 §4.5; see
docs/regulator.md):

- level and temperature on every storage tank, sphere and refrigerated tank;
- pressure on pressurised vessels (spheres, and tanks, vessels or reactors designed for 0.1 MPa and
  more) and on refrigerated tanks;
- combustible gas detection in an installation holding a flammable chemical, toxic gas detection in
  one holding a toxic one;
- an independent SIS (a ``sis_trip`` state tag) for level 1 and 2 installations holding a toxic gas,
  a liquefied gas or a highly toxic liquid;
- emergency cut-off (an ``esd_valve`` state tag) for level 1 and 2 tank farms (storage installations);
- electronic records kept for at least 30 days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hazmon.errors import Problem
from hazmon.plant.site import (
    Chemical,
    EquipmentType,
    GasClass,
    Installation,
    InstallationKind,
    Signal,
    Site,
    Tag,
    TagKind,
)
from hazmon.regulator.chemicals import find
from hazmon.regulator.gb18218 import GradingError, grade

MIN_RETENTION_DAYS = 30
PRESSURISED_MPA = 0.1
_VESSELS = {EquipmentType.TANK, EquipmentType.SPHERE, EquipmentType.REFRIGERATED_TANK}
_PRESSURE_TYPES = {EquipmentType.SPHERE, EquipmentType.REFRIGERATED_TANK}

# Table 1 rows by hazard, for the detectors a chemical calls for: flammable (gases, and liquids
# volatile enough to form a flammable atmosphere) and toxic (gases and volatile toxic liquids).
FLAMMABLE_ROWS = {8, 9, 10, 13, 14, 19, 21, 27, 29, 47, 48, 49, 50, 51, 52, 53, 54, 55, 57, 58, 59, 60, 61}
FLAMMABLE_ROWS |= {62, 63, 64, 65, 66, 67, 68, 69, 70, 75}
TOXIC_ROWS = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26}
TOXIC_ROWS |= {27, 28, 29, 30, 53, 60, 75}
TOXIC_GAS_ROWS = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20, 25, 53}
HIGHLY_TOXIC_LIQUID_ROWS = {18, 19, 24, 25, 28, 29, 30, 75}
LIQUEFIED_GAS_ROWS = {1, 4, 7, 12, 17, 47, 48, 49, 50, 52, 53, 55, 56}

DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "level": ("液位", "level"),
    "temperature": ("温度", "temperature"),
    "pressure": ("压力", "pressure"),
    "gas.combustible": ("可燃气体检测", "combustible gas detection"),
    "gas.toxic": ("有毒气体检测", "toxic gas detection"),
    "sis": ("独立的安全仪表系统（SIS）", "independent safety instrumented system (SIS)"),
    "emergency_cutoff": ("紧急切断", "emergency cut-off"),
    "retention": ("监测数据保存不少于30天", "monitoring records kept at least 30 days"),
}


@dataclass(frozen=True, slots=True)
class Requirement:
    installation: str
    equipment: str | None
    what: str  # a key of DESCRIPTIONS
    reason: str
    tags: tuple[str, ...]  # the tags that meet it (empty: missing)

    @property
    def met(self) -> bool:
        return bool(self.tags)

    def as_dict(self) -> dict[str, Any]:
        zh, en = DESCRIPTIONS[self.what]
        return {
            "installation": self.installation,
            "equipment": self.equipment,
            "requirement": self.what,
            "zh": zh,
            "en": en,
            "reason": self.reason,
            "met": self.met,
            "tags": list(self.tags),
        }


@dataclass(frozen=True, slots=True)
class Hazards:
    flammable: bool = False
    toxic: bool = False
    toxic_gas: bool = False
    liquefied_gas: bool = False
    highly_toxic_liquid: bool = False


def hazards(chem: Chemical) -> Hazards:
    named = find(chem.name, chem.cas).chemical
    no = named.no if named is not None else 0
    cat = chem.category or (named.category if named is not None else None) or ""
    gas = cat == "W2" or cat == "W4"
    return Hazards(
        flammable=no in FLAMMABLE_ROWS or cat in {"W2", "W3", "W5.1", "W5.2", "W5.3", "W5.4", "W8", "W10", "W11"},
        toxic=no in TOXIC_ROWS or (named is not None and named.beta is not None) or cat.startswith("J"),
        toxic_gas=no in TOXIC_GAS_ROWS or (named is not None and named.beta is not None) or cat in {"J1", "J3"},
        liquefied_gas=no in LIQUEFIED_GAS_ROWS or gas,
        highly_toxic_liquid=no in HIGHLY_TOXIC_LIQUID_ROWS or cat in {"J2", "J4"},
    )


def installation_requirements(site: Site, inst: Installation, retention_days: int | None = None) -> list[Requirement]:
    equipment = [e for e in site.equipment if e.installation == inst.id]
    eq_ids = {e.id for e in equipment}
    tags = [t for t in site.tags if t.equipment in eq_ids]
    by_equipment: dict[str, list[Tag]] = {}
    for t in tags:
        by_equipment.setdefault(t.equipment, []).append(t)
    out: list[Requirement] = []

    def tags_of(eq: str | None, pred: Any) -> tuple[str, ...]:  # linear in the tags looked at, not the site's
        return tuple(t.id for t in (tags if eq is None else by_equipment.get(eq, [])) if pred(t))

    for e in equipment:
        if e.type not in _VESSELS:
            continue
        kind = e.type.value.replace("_", " ")
        for what, tk in (("level", TagKind.LEVEL), ("temperature", TagKind.TEMPERATURE)):
            out.append(Requirement(inst.id, e.id, what, f"{kind} {e.id}", tags_of(e.id, lambda t, k=tk: t.kind is k)))
        pmax = e.design.pressure_max_mpa
        if e.type in _PRESSURE_TYPES or (pmax is not None and pmax >= PRESSURISED_MPA):
            reason = f"{kind} {e.id}" + ("" if e.type in _PRESSURE_TYPES else f" designed for {pmax} MPa")
            out.append(
                Requirement(inst.id, e.id, "pressure", reason, tags_of(e.id, lambda t: t.kind is TagKind.PRESSURE))
            )
    hz = [(c, hazards(c)) for c in inst.chemicals]
    flammable = [c.name for c, h in hz if h.flammable]
    toxic = [c.name for c, h in hz if h.toxic]
    if flammable:
        out.append(
            Requirement(
                inst.id,
                None,
                "gas.combustible",
                "flammable: " + ", ".join(flammable),
                tags_of(None, lambda t: t.gas is not None and t.gas.gas_class is GasClass.COMBUSTIBLE),
            )
        )
    if toxic:
        out.append(
            Requirement(
                inst.id,
                None,
                "gas.toxic",
                "toxic: " + ", ".join(toxic),
                tags_of(None, lambda t: t.gas is not None and t.gas.gas_class is GasClass.TOXIC),
            )
        )
    try:
        level = grade(inst).level
    except GradingError:
        level = None
    if level in (1, 2):
        why = [c.name for c, h in hz if h.toxic_gas or h.liquefied_gas or h.highly_toxic_liquid]
        if why:
            out.append(
                Requirement(
                    inst.id,
                    None,
                    "sis",
                    f"level {level} with toxic gas, liquefied gas or highly toxic liquid: " + ", ".join(why),
                    tags_of(None, lambda t: t.signal is Signal.SIS_TRIP),
                )
            )
        if inst.kind is InstallationKind.STORAGE:
            out.append(
                Requirement(
                    inst.id,
                    None,
                    "emergency_cutoff",
                    f"level {level} tank farm",
                    tags_of(None, lambda t: t.signal is Signal.ESD_VALVE),
                )
            )
    if retention_days is not None:
        ok = retention_days >= MIN_RETENTION_DAYS
        out.append(
            Requirement(
                inst.id,
                None,
                "retention",
                f"raw readings kept {retention_days} days (HAZMON_RETENTION_DAYS)",
                ("HAZMON_RETENTION_DAYS",) if ok else (),
            )
        )
    return out


def requirements(site: Site, retention_days: int | None = None) -> list[Requirement]:
    return [r for inst in site.installations for r in installation_requirements(site, inst, retention_days)]


def monitoring_warnings(site: Site) -> list[Problem]:
    """What `hazmon site check` shows as warnings: each required measurement the site lacks."""
    index = {inst.id: i for i, inst in enumerate(site.installations)}
    eq_index = {e.id: i for i, e in enumerate(site.equipment)}
    out = []
    for r in requirements(site):
        if r.met:
            continue
        path = f"equipment[{eq_index[r.equipment]}]" if r.equipment else f"installations[{index[r.installation]}]"
        zh, en = DESCRIPTIONS[r.what]
        out.append(Problem(path, f"{r.installation}: no {en} tag ({zh}) — required for {r.reason}"))
    return out
