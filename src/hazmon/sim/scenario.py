"""Scenario files (`simulators/*.yaml`): initial plant state, weather, and timed events.

Every event has a start (``at_s``, seconds from the start of the run) and a duration (``duration_s``).
Process events drive the plant (transfers, leaks, heat), sensor events corrupt one instrument
(stuck, drift, spike, noise, bad quality, out of range), communication events act on a served
endpoint (a PLC that stops answering, a server that restarts). ``load_scenario(path, site)``
validates a file and raises ``InvalidFile`` listing every problem with its path, e.g.
``events[3].rate_t_h: must be > 0``.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hazmon.errors import InvalidFile, Problem, problems_from_validation, read_yaml
from hazmon.plant.site import EquipmentType, Ident, Signal, Site, TagKind


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Event(_Model):
    at_s: float = Field(ge=0, description="start, seconds after the start of the run")
    duration_s: float = Field(ge=0, description="how long the event lasts, seconds")
    note: str | None = None

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def active(self, t: float) -> bool:
        return self.at_s <= t < self.at_s + self.duration_s


# ---------------------------------------------------------------- process events


class Transfer(_Event):
    """Product flows into a vessel through its inlet ESD valve (and, if named, a pump)."""

    type: Literal["transfer"]
    equipment: Ident
    rate_t_h: float = Field(gt=0)
    pump: Ident | None = None


class SendOut(_Event):
    """Product flows out of a vessel (loading, send-out), through a pump if named."""

    type: Literal["send_out"]
    equipment: Ident
    rate_t_h: float = Field(gt=0)
    pump: Ident | None = None


class Leak(_Event):
    """A release at the shell of a vessel; the rate ramps from 0 to ``rate_kg_s`` over ``ramp_s``."""

    type: Literal["leak"]
    equipment: Ident
    rate_kg_s: float = Field(gt=0, le=100)
    ramp_s: float = Field(default=0.0, ge=0)
    direction_deg: float = Field(default=0.0, ge=0, lt=360, description="side of the vessel, compass bearing")


class Heat(_Event):
    """External heat (fire exposure, failed refrigeration): the liquid warms ``rate_c_per_min`` faster."""

    type: Literal["heat"]
    equipment: Ident
    rate_c_per_min: float = Field(gt=0, le=60)


class Stop(_Event):
    """A pump or compressor trips and stays stopped."""

    type: Literal["stop"]
    equipment: Ident


class OutOfService(_Event):
    type: Literal["out_of_service"]
    equipment: Ident


class SisReset(_Event):
    """An operator resets the latched SIS trips of a vessel (at ``at_s``; the duration is ignored)."""

    type: Literal["sis_reset"]
    equipment: Ident


class WeatherChange(_Event):
    type: Literal["weather"]
    ambient_c: float | None = Field(default=None, ge=-60, le=60)
    wind_speed_ms: float | None = Field(default=None, ge=0, le=60)
    wind_from_deg: float | None = Field(default=None, ge=0, lt=360)


# ---------------------------------------------------------------- sensor faults


class Stuck(_Event):
    """The reading freezes at its last value."""

    type: Literal["stuck"]
    tag: Ident


class Drift(_Event):
    """The reading drifts away from the truth at ``rate_per_min`` engineering units per minute."""

    type: Literal["drift"]
    tag: Ident
    rate_per_min: float


class Spike(_Event):
    """The reading jumps to ``value`` (or by ``magnitude``) for the duration."""

    type: Literal["spike"]
    tag: Ident
    value: float | None = None
    magnitude: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Spike:
        if (self.value is None) == (self.magnitude is None):
            raise ValueError("give exactly one of value and magnitude")
        return self


class NoiseBurst(_Event):
    type: Literal["noise"]
    tag: Ident
    sigma: float = Field(gt=0, description="standard deviation added, engineering units")


class BadQuality(_Event):
    """The instrument reports a failure: bad status (OPC UA, MQTT), NaN / wire-break code (Modbus)."""

    type: Literal["bad_quality"]
    tag: Ident
    quality: int = Field(default=130, ge=128, le=255, description="hazmon quality code, 130 = BAD_SENSOR")


class OutOfRange(_Event):
    """The instrument sends a value outside its range (failed 4-20 mA loop); status stays good."""

    type: Literal["out_of_range"]
    tag: Ident
    value: float | None = None
    side: Literal["high", "low"] = "high"


# ---------------------------------------------------------------- communication faults

TARGET_RE = r"^(opcua|modbus|mqtt)(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$"


class CommLoss(_Event):
    """``target`` stops answering: ``modbus/<device>`` goes silent, ``mqtt/<device>`` stops publishing,
    ``opcua/<gateway>`` (or ``opcua``) reports BadNoCommunication on every node."""

    type: Literal["comm_loss"]
    target: str = Field(pattern=TARGET_RE)


class Restart(_Event):
    """The server behind ``target`` stops, closing every connection, and starts again after the duration."""

    type: Literal["restart"]
    target: str = Field(pattern=TARGET_RE)


ProcessEvent = Transfer | SendOut | Leak | Heat | Stop | OutOfService | SisReset | WeatherChange
SensorEvent = Stuck | Drift | Spike | NoiseBurst | BadQuality | OutOfRange
CommEvent = CommLoss | Restart
Event = Annotated[
    Transfer
    | SendOut
    | Leak
    | Heat
    | Stop
    | OutOfService
    | SisReset
    | WeatherChange
    | Stuck
    | Drift
    | Spike
    | NoiseBurst
    | BadQuality
    | OutOfRange
    | CommLoss
    | Restart,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "transfer",
    "send_out",
    "leak",
    "heat",
    "stop",
    "out_of_service",
    "sis_reset",
    "weather",
    "stuck",
    "drift",
    "spike",
    "noise",
    "bad_quality",
    "out_of_range",
    "comm_loss",
    "restart",
)


# ---------------------------------------------------------------- the scenario


class Weather(_Model):
    ambient_mean_c: float = Field(default=20.0, ge=-50, le=50)
    ambient_amplitude_c: float = Field(default=5.0, ge=0, le=25, description="half the day-night swing")
    solar_max_w_m2: float = Field(default=800.0, ge=0, le=1400)
    wind_speed_ms: float = Field(default=2.5, ge=0, le=60)
    wind_from_deg: float = Field(default=90.0, ge=0, lt=360)
    wind_variability_deg: float = Field(default=8.0, ge=0, le=90, description="wind direction meander, std dev")


class EquipmentSetup(_Model):
    """Initial state and SIS set points of one vessel (all optional)."""

    level_m: float | None = Field(default=None, ge=0)
    temperature_c: float | None = Field(default=None, ge=-80, le=150)
    pressure_kpa: float | None = Field(default=None, description="gauge; refrigerated and padded tanks only")
    lshh_m: float | None = Field(default=None, gt=0, description="high-high level SIS set point")
    pshh_kpa: float | None = Field(default=None, description="high-high pressure SIS set point, gauge")


class Scenario(_Model):
    name: Ident
    description: str = ""
    site: Ident
    start: datetime = Field(
        default=datetime.fromisoformat("2026-06-15T08:00:00+08:00"),
        description="local time at the start of the run (drives the day/night cycle)",
    )
    duration_s: float = Field(gt=0)
    dt_s: float = Field(default=1.0, gt=0, le=60, description="model step, seconds of plant time")
    weather: Weather = Weather()
    equipment: dict[Ident, EquipmentSetup] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list)

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a UTC offset, e.g. 2026-06-15T08:00:00+08:00")
        return v

    @property
    def steps(self) -> int:
        return round(self.duration_s / self.dt_s)

    def comm_events(self) -> list[tuple[int, CommLoss | Restart]]:
        return [(i, e) for i, e in enumerate(self.events) if isinstance(e, CommLoss | Restart)]


_VESSEL_TYPES = {EquipmentType.SPHERE, EquipmentType.TANK, EquipmentType.REFRIGERATED_TANK}


def reference_problems(scenario: Scenario, site: Site) -> list[Problem]:
    """Names the scenario uses that the site does not know, or that cannot do what the event asks."""
    problems: list[Problem] = []
    if scenario.site != site.id:
        problems.append(Problem("site", f"scenario is for site {scenario.site!r}, not {site.id!r}"))
    equipment = site.equipment_by_id()
    tags = {t.id: t for t in site.tags}
    running_tag = {t.equipment for t in site.tags if t.kind is TagKind.STATE and t.signal is Signal.PUMP}
    for eq_id, setup in scenario.equipment.items():
        eq = equipment.get(eq_id)
        if eq is None:
            problems.append(Problem(f"equipment.{eq_id}", f"unknown equipment {eq_id!r}"))
        elif eq.type not in _VESSEL_TYPES:
            problems.append(Problem(f"equipment.{eq_id}", "only tanks and spheres take an initial state"))
        elif setup.level_m is not None:
            top = eq.design.level_max_m or eq.height_m or eq.diameter_m
            if top is not None and setup.level_m > top:
                problems.append(Problem(f"equipment.{eq_id}.level_m", f"must be <= {top} m (top of the vessel)"))
    for i, ev in enumerate(scenario.events):
        path = f"events[{i}]"
        target_eq: str | None = getattr(ev, "equipment", None)
        if target_eq is not None:
            eq = equipment.get(target_eq)
            if eq is None:
                problems.append(Problem(f"{path}.equipment", f"unknown equipment {target_eq!r}"))
            elif isinstance(ev, Transfer | SendOut | Leak | Heat | SisReset) and eq.type not in _VESSEL_TYPES:
                problems.append(Problem(f"{path}.equipment", f"{target_eq} is a {eq.type}, not a tank or sphere"))
            elif isinstance(ev, Stop) and target_eq not in running_tag:
                problems.append(Problem(f"{path}.equipment", f"{target_eq} has no running state tag"))
        pump = getattr(ev, "pump", None)
        if pump is not None and pump not in running_tag:
            problems.append(Problem(f"{path}.pump", f"unknown pump {pump!r} (no running state tag)"))
        tag_id = getattr(ev, "tag", None)
        if tag_id is not None:
            tag = tags.get(tag_id)
            if tag is None:
                problems.append(Problem(f"{path}.tag", f"unknown tag {tag_id!r}"))
            elif tag.is_discrete and isinstance(ev, Drift | Spike | NoiseBurst | OutOfRange):
                problems.append(Problem(f"{path}.tag", f"{tag_id} is a state tag; {ev.type} needs an analog"))
        if ev.at_s >= scenario.duration_s:
            problems.append(Problem(f"{path}.at_s", f"starts after the end of the run ({scenario.duration_s:g} s)"))
    return problems


_TYPE_IN_PATH = re.compile(r"^events\[(\d+)\]\.(" + "|".join(EVENT_TYPES) + r")(?=\.|$)")


def parse_scenario(data: Any, source: str = "<scenario>", site: Site | None = None) -> Scenario:
    if not isinstance(data, dict):
        raise InvalidFile(source, [Problem("", "a scenario file must be a mapping")])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        # Drop the discriminator that pydantic puts in the path: events[2].leak.rate_kg_s -> events[2].rate_kg_s
        problems = [Problem(_TYPE_IN_PATH.sub(r"events[\1]", p.path), p.message) for p in problems_from_validation(e)]
        raise InvalidFile(source, problems) from None
    if site is not None:
        problems = reference_problems(scenario, site)
        if problems:
            raise InvalidFile(source, problems)
    return scenario


def load_scenario(path: Path | str, site: Site | None = None) -> Scenario:
    return parse_scenario(read_yaml(path), str(path), site)
