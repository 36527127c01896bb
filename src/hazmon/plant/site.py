"""The site model: enterprise, hazard installations, equipment and tags, as described in `sites/*.yaml`.

``load_site(path)`` parses and validates a site file and raises ``InvalidFile`` listing every
problem with its path; ``check_site`` returns the problems instead.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hazmon.errors import InvalidFile, Problem, read_yaml, validate_model

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Ident = Annotated[str, Field(min_length=1, max_length=80, pattern=ID_PATTERN)]
USCC_RE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$")
USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100-2015: 31 characters, no I, O, S, V, Z
CAS_RE = re.compile(r"^\d{2,7}-\d{2}-\d$")


def uscc_check_char(code17: str) -> str:
    """GB 32100-2015 check character of the first 17 characters: weights 3^i mod 31."""
    total = sum(USCC_CHARS.index(c) * pow(3, i, 31) for i, c in enumerate(code17[:17]))
    return USCC_CHARS[(31 - total % 31) % 31]


def cas_check_ok(cas: str) -> bool:
    """CAS registry number check digit: the other digits, right to left, weighted 1, 2, 3 …, modulo 10."""
    if not CAS_RE.match(cas):
        return False
    digits = cas.replace("-", "")
    return sum(i * int(d) for i, d in enumerate(reversed(digits[:-1]), start=1)) % 10 == int(digits[-1])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TagKind(StrEnum):
    LEVEL = "level"
    TEMPERATURE = "temperature"
    PRESSURE = "pressure"
    FLOW = "flow"
    GAS = "gas"  # gas concentration from a detector
    STATE = "state"  # a discrete state: SIS trip, valve position, pump running, in service


class GasClass(StrEnum):
    COMBUSTIBLE = "combustible"  # %LEL
    TOXIC = "toxic"  # mg/m³


class Signal(StrEnum):
    """What a discrete (state) tag stands for."""

    SIS_TRIP = "sis_trip"
    ESD_VALVE = "esd_valve"
    VALVE = "valve"
    PUMP = "pump"
    IN_SERVICE = "in_service"
    FLAME = "flame"
    OTHER = "other"


class InstallationKind(StrEnum):
    PRODUCTION = "production"
    STORAGE = "storage"


class EquipmentType(StrEnum):
    TANK = "tank"
    SPHERE = "sphere"
    REFRIGERATED_TANK = "refrigerated_tank"
    REACTOR = "reactor"
    VESSEL = "vessel"
    PIPELINE = "pipeline"
    PUMP = "pump"
    AREA = "area"


class Enterprise(_Model):
    id: Ident
    name: str = Field(min_length=1)
    uscc: str = Field(description="unified social credit code (统一社会信用代码), 18 characters")

    @field_validator("uscc")
    @classmethod
    def _uscc(cls, v: str) -> str:
        if not USCC_RE.match(v):
            raise ValueError("must be an 18-character unified social credit code")
        if v[17] != uscc_check_char(v):
            raise ValueError(f"check character is {v[17]!r}, GB 32100 gives {uscc_check_char(v)!r}: a mistyped code")
        return v


class SiteInfo(_Model):
    id: Ident
    name: str = Field(min_length=1)
    address: str | None = None
    timezone: str = Field(default="Asia/Shanghai", description="IANA time zone: alarm times are shown in it")
    locale: str | None = Field(
        default=None, pattern=r"^[a-z]{2}(-[A-Z]{2})?$", description="console language, e.g. zh-CN or en"
    )
    name_zh: str | None = Field(default=None, min_length=1, description="Chinese name (中文名称)")
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Shanghai)") from None
        return v


class Chemical(_Model):
    name: str = Field(min_length=1)
    cas: str | None = Field(default=None, description="CAS registry number, e.g. 7664-41-7 (check digit verified)")
    quantity_t: float = Field(gt=0, description="maximum quantity present, tonnes")
    critical_quantity_t: float | None = Field(
        default=None, gt=0, description="GB 18218 Q; looked up from the standard's table when omitted"
    )
    category: str | None = Field(default=None, description="GB 30000 hazard category, e.g. W2, J1")
    beta: float | None = Field(default=None, gt=0, description="GB 18218 correction factor β")

    @field_validator("cas")
    @classmethod
    def _cas(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not CAS_RE.match(v):
            raise ValueError("must be a CAS registry number like 7664-41-7")
        if not cas_check_ok(v):
            raise ValueError(f"{v}: the check digit is wrong (a mistyped CAS number)")
        return v


class Installation(_Model):
    id: Ident
    name: str = Field(min_length=1)
    name_zh: str | None = Field(default=None, min_length=1, description="Chinese name (中文名称)")
    kind: InstallationKind
    people_within_500m: int = Field(ge=0)
    chemicals: list[Chemical] = Field(min_length=1)


class DesignLimits(_Model):
    pressure_max_mpa: float | None = None
    pressure_min_mpa: float | None = None
    temperature_max_c: float | None = None
    temperature_min_c: float | None = None
    level_max_m: float | None = Field(default=None, gt=0)


class Equipment(_Model):
    id: Ident
    name: str = Field(min_length=1)
    name_zh: str | None = Field(default=None, min_length=1, description="Chinese name (中文名称)")
    type: EquipmentType
    installation: Ident
    chemical: str | None = None
    capacity_m3: float | None = Field(default=None, gt=0)
    diameter_m: float | None = Field(default=None, gt=0)
    height_m: float | None = Field(default=None, gt=0)
    design: DesignLimits = DesignLimits()
    in_service_tag: Ident | None = Field(
        default=None, description="a state tag that is 1 while the equipment is in service"
    )


class GasInfo(_Model):
    gas_class: GasClass = Field(alias="class")
    substance: str = Field(min_length=1)


class Tag(_Model):
    id: Ident
    name: str = Field(min_length=1)
    name_zh: str | None = Field(default=None, min_length=1, description="Chinese name (中文名称)")
    kind: TagKind
    unit: str = ""
    range: tuple[float, float] | None = Field(default=None, description="instrument range [low, high]")
    equipment: Ident
    period_s: float = Field(default=1.0, gt=0, description="expected sampling period")
    gas: GasInfo | None = None
    signal: Signal | None = None
    states: dict[int, str] | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> Tag:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError("range: low must be below high")
        if self.kind is TagKind.GAS and self.gas is None:
            raise ValueError("gas: is required for a gas tag (class and substance)")
        if self.kind is not TagKind.GAS and self.gas is not None:
            raise ValueError("gas: only gas tags carry gas information")
        if self.kind is TagKind.STATE:
            if self.signal is None:
                raise ValueError("signal: is required for a state tag")
        elif self.range is None:
            raise ValueError("range: is required for an analog tag")
        return self

    @property
    def is_discrete(self) -> bool:
        return self.kind is TagKind.STATE


class Site(_Model):
    enterprise: Enterprise
    site: SiteInfo
    installations: list[Installation] = Field(min_length=1)
    equipment: list[Equipment] = Field(min_length=1)
    tags: list[Tag] = Field(min_length=1)

    @property
    def id(self) -> str:
        return self.site.id

    def tag(self, tag_id: str) -> Tag:
        for t in self.tags:
            if t.id == tag_id:
                return t
        raise KeyError(tag_id)

    def equipment_by_id(self) -> dict[str, Equipment]:
        return {e.id: e for e in self.equipment}


def _duplicates(items: list[Any], section: str) -> list[Problem]:
    seen: dict[str, int] = {}
    problems = []
    for i, item in enumerate(items):
        if item.id in seen:
            problems.append(Problem(f"{section}[{i}].id", f"duplicate id {item.id!r} (first at [{seen[item.id]}])"))
        else:
            seen[item.id] = i
    return problems


def reference_problems(site: Site) -> list[Problem]:
    """Cross-references a structurally valid site: unique ids, known installations, equipment, tags."""
    problems = (
        _duplicates(site.installations, "installations")
        + _duplicates(site.equipment, "equipment")
        + _duplicates(site.tags, "tags")
    )
    installations = {i.id for i in site.installations}
    equipment = {e.id for e in site.equipment}
    tags = {t.id: t for t in site.tags}
    for i, e in enumerate(site.equipment):
        if e.installation not in installations:
            problems.append(Problem(f"equipment[{i}].installation", f"unknown installation {e.installation!r}"))
        if e.in_service_tag is not None:
            t = tags.get(e.in_service_tag)
            if t is None:
                problems.append(Problem(f"equipment[{i}].in_service_tag", f"unknown tag {e.in_service_tag!r}"))
            elif not t.is_discrete:
                problems.append(Problem(f"equipment[{i}].in_service_tag", "must name a state tag"))
    for i, t in enumerate(site.tags):
        if t.equipment not in equipment:
            problems.append(Problem(f"tags[{i}].equipment", f"unknown equipment {t.equipment!r}"))
    return problems


def _nul_problems(data: Any, path: str = "") -> list[Problem]:
    """Strings holding a NUL character, which the database cannot store (refused here, with a path)."""
    if isinstance(data, str):
        return [Problem(path or "<root>", "contains a NUL character")] if "\x00" in data else []
    if isinstance(data, dict):
        out = []
        for k, v in data.items():
            sub = f"{path}.{k}" if path else str(k)
            out += _nul_problems(k, sub) + _nul_problems(v, sub)
        return out
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _nul_problems(v, f"{path}[{i}]")]
    return []


def parse_site(data: Any, source: str = "<site>") -> Site:
    if not isinstance(data, dict):
        raise InvalidFile(source, [Problem("", "a site file must be a mapping")])
    nul = _nul_problems(data)
    if nul:
        raise InvalidFile(source, nul)
    site = validate_model(Site, data, source)
    problems = reference_problems(site)
    if problems:
        raise InvalidFile(source, problems)
    return site


def load_site(path: Path | str) -> Site:
    return parse_site(read_yaml(path), str(path))


def check_site(path: Path | str) -> list[Problem]:
    try:
        load_site(path)
    except InvalidFile as e:
        return e.problems
    return []
