"""The process model behind the PLC simulators: a deterministic, vectorized tank-farm plant.

``PlantModel(site, scenario, seed)`` owns every tag's value and quality as numpy arrays indexed like
``site.tags``. ``step()`` advances plant time by ``scenario.dt_s``; the same site, scenario and
seed always give the same series (one ``numpy.random.Generator``, drawn in a fixed order).

Physics, kept simple but physical:

- geometry: level from volume for spheres (V = πh²(3R−h)/3, inverted on a table) and vertical
  cylinders (V = A·h); flows in t/h through the inlet ESD valve and pumps, first-order valve lag;
- temperature: first-order lag towards ambient plus solar load (day/night cycle);
- liquefied gases in pressure spheres sit at their vapour pressure (Antoine equation);
  refrigerated tanks hold a boil-off pressure (heat leak against a boil-off compressor with
  hysteresis) and the liquid sits at the saturation temperature of that pressure;
- atmospheric tanks carry a nitrogen pad: vapour space compressed or expanded by level changes
  (Boyle), a blanketing valve below 0.5 kPa g and a breather vent above 4 kPa g;
- gas detectors: background noise plus, for each active leak, a ground-level Gaussian plume
  (Briggs rural class D spreads with an initial 1.5 m source spread) blown by the wind;
- SIS: a high-high level (or pressure) latches the trip tag and closes the ESD valve until reset.

Everything per tag is an array operation; Python loops run over events and vessels' roles only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from hazmon.reading import Quality
from hazmon.sim.physics import (
    Substance,
    saturation_temperature_c,
    sphere_fill_fraction,
    sphere_height_fraction,
    substance,
    vapour_pressure_kpa,
)
from hazmon.sim.scenario import (
    BadQuality,
    Drift,
    Heat,
    Leak,
    NoiseBurst,
    OutOfRange,
    OutOfService,
    Scenario,
    SendOut,
    SisReset,
    Spike,
    Stop,
    Stuck,
    Transfer,
    WeatherChange,
)
from hazmon.site import Equipment, EquipmentType, GasClass, Signal, Site, Tag, TagKind

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]

P_ATM_KPA = 101.325
MOLAR_VOLUME_M3 = 0.024055  # m³/mol of an ideal gas at 20 °C, 101.325 kPa


# ---------------------------------------------------------------- roles


class Role(IntEnum):
    OTHER = 0
    LEVEL = 1
    TEMPERATURE = 2
    PRESSURE = 3
    FLOW_IN = 4
    FLOW_OUT = 5
    ESD_VALVE = 6
    TRIP_LEVEL = 7
    TRIP_PRESSURE = 8
    IN_SERVICE = 9
    RUNNING = 10
    GAS = 11
    AMBIENT = 12
    WIND_SPEED = 13
    WIND_DIRECTION = 14
    OTHER_STATE = 15


class VesselKind(IntEnum):
    PRESSURIZED = 0  # liquefied gas at its vapour pressure
    REFRIGERATED = 1  # boiling liquid at low pressure, boil-off compressor
    ATMOSPHERIC = 2  # nitrogen-padded tank


_VESSEL_TYPES = {EquipmentType.SPHERE, EquipmentType.TANK, EquipmentType.REFRIGERATED_TANK}
_PRESSURE_TO_KPA = {"kpa": 1.0, "mpa": 1000.0, "bar": 100.0, "pa": 0.001, "mbar": 0.1}


def tag_role(tag: Tag, equipment: Equipment) -> Role:
    name = tag.name.lower()
    suffix = tag.id.rsplit(".", 1)[-1].upper()
    vessel = equipment.type in _VESSEL_TYPES
    if tag.kind is TagKind.GAS:
        return Role.GAS
    if tag.kind is TagKind.STATE:
        signal_roles = {
            Signal.ESD_VALVE: Role.ESD_VALVE,
            Signal.VALVE: Role.ESD_VALVE,
            Signal.IN_SERVICE: Role.IN_SERVICE,
            Signal.PUMP: Role.RUNNING,
        }
        if tag.signal is Signal.SIS_TRIP:
            return Role.TRIP_PRESSURE if ("pressure" in name or suffix.startswith("P")) else Role.TRIP_LEVEL
        role = signal_roles.get(tag.signal) if tag.signal is not None else None
        if role is Role.ESD_VALVE and not vessel:
            return Role.OTHER_STATE
        return role if role is not None else Role.OTHER_STATE
    if equipment.type is EquipmentType.AREA:
        if tag.kind is TagKind.TEMPERATURE:
            return Role.AMBIENT
        if tag.unit in ("°", "deg", "degree"):
            return Role.WIND_DIRECTION
        if tag.unit in ("m/s", "km/h"):
            return Role.WIND_SPEED
        return Role.OTHER
    if not vessel:
        return Role.OTHER
    if tag.kind is TagKind.LEVEL:
        return Role.LEVEL
    if tag.kind is TagKind.TEMPERATURE:
        return Role.TEMPERATURE
    if tag.kind is TagKind.PRESSURE:
        return Role.PRESSURE if tag.unit.lower() in _PRESSURE_TO_KPA else Role.OTHER
    if tag.kind is TagKind.FLOW:
        return Role.FLOW_OUT if any(w in name for w in ("send-out", "outlet", "outflow", "loading")) else Role.FLOW_IN
    return Role.OTHER


# ---------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Series:
    """Readings of a run: ``values[k, i]`` is tag ``tag_ids[i]`` at ``times[k]`` seconds of plant time."""

    tag_ids: list[str]
    times: F64
    values: F64
    quality: npt.NDArray[np.uint8]

    def column(self, tag_id: str) -> F64:
        return np.asarray(self.values[:, self.tag_ids.index(tag_id)], dtype=np.float64)


class _TagsOf:
    """Index pairs (tag index, vessel or machine index) for one role."""

    __slots__ = ("owner", "tag")

    def __init__(self, tag: list[int], owner: list[int]) -> None:
        self.tag: I64 = np.asarray(tag, dtype=np.int64)
        self.owner: I64 = np.asarray(owner, dtype=np.int64)


class PlantModel:
    """The plant of one site under one scenario. Pure: no I/O, no clock; ``step()`` is the only motion."""

    def __init__(self, site: Site, scenario: Scenario, seed: int = 0) -> None:
        self.site = site
        self.scenario = scenario
        self.seed = seed
        self.dt = scenario.dt_s
        self.t = 0.0
        self.step_count = 0
        self.rng = np.random.default_rng(seed)
        self.tags = list(site.tags)
        self.tag_ids = [t.id for t in self.tags]
        self.index = {tid: i for i, tid in enumerate(self.tag_ids)}
        n = len(self.tags)
        equipment = site.equipment_by_id()
        self.roles = np.array([tag_role(t, equipment[t.equipment]) for t in self.tags], dtype=np.int8)
        lo = np.array([t.range[0] if t.range else 0.0 for t in self.tags])
        hi = np.array([t.range[1] if t.range else 1.0 for t in self.tags])
        self.range_lo: F64 = lo
        self.range_hi: F64 = hi
        self.discrete: BOOL = np.array([t.is_discrete for t in self.tags], dtype=bool)
        self._build_vessels(equipment)
        self._build_machines(equipment)
        self._build_detectors(equipment)
        self._build_tag_links()
        start = scenario.start
        self.start_hour = start.hour + start.minute / 60 + start.second / 3600
        w = scenario.weather
        self.wind_speed = w.wind_speed_ms
        self.wind_from = w.wind_from_deg
        self._wind_meander = 0.0
        self._frozen: dict[int, float] = {}
        self._reset_done: set[int] = set()
        self.values: F64 = np.zeros(n)
        self.quality: npt.NDArray[np.uint8] = np.zeros(n, dtype=np.uint8)
        self._true: F64 = np.zeros(n)
        self.ambient_c = self._ambient(0.0)
        self._init_state()
        self._measure()

    # ------------------------------------------------------------ construction

    def _build_vessels(self, equipment: dict[str, Equipment]) -> None:
        vessels = [e for e in self.site.equipment if e.type in _VESSEL_TYPES]
        self.vessels = vessels
        self.vessel_index = {e.id: i for i, e in enumerate(vessels)}
        nv = len(vessels)
        self.subs = [substance(e.chemical) for e in vessels]
        kind = []
        for e, sub in zip(vessels, self.subs, strict=True):
            if e.type is EquipmentType.REFRIGERATED_TANK and sub.antoine:
                kind.append(VesselKind.REFRIGERATED)
            elif e.type is EquipmentType.SPHERE and sub.antoine:
                kind.append(VesselKind.PRESSURIZED)
            else:
                kind.append(VesselKind.ATMOSPHERIC)
        self.kind = np.array(kind, dtype=np.int8)
        self.sphere = np.array([e.type is EquipmentType.SPHERE for e in vessels], dtype=bool)
        diameter = np.array([e.diameter_m or (e.capacity_m3 or 1000.0) ** (1 / 3) for e in vessels])
        height = np.array([e.height_m or e.diameter_m or 15.0 for e in vessels])
        height = np.where(self.sphere, diameter, height)
        self.diameter: F64 = diameter
        self.height: F64 = height
        self.area: F64 = math.pi * diameter**2 / 4
        self.vol_full: F64 = np.where(self.sphere, math.pi * diameter**3 / 6, self.area * height)
        self.density = np.array([s.density for s in self.subs])
        top = np.array([e.design.level_max_m or h for e, h in zip(vessels, height, strict=True)])
        self.level_top: F64 = np.minimum(top, height)
        setups = self.scenario.equipment
        self.lshh_m: F64 = np.array(
            [
                (setups[e.id].lshh_m if e.id in setups and setups[e.id].lshh_m else None) or 0.9 * t
                for e, t in zip(vessels, self.level_top, strict=True)
            ]
        )
        default_pshh = np.where(self.kind == VesselKind.REFRIGERATED, 25.0, np.inf)
        self.pshh_kpa: F64 = np.array(
            [
                (setups[e.id].pshh_kpa if e.id in setups and setups[e.id].pshh_kpa is not None else None) or float(d)
                for e, d in zip(vessels, default_pshh, strict=True)
            ]
        )
        # relief valves lift at the design pressure (gauge kPa); without one, no cap
        self.psv_kpa: F64 = np.array(
            [e.design.pressure_max_mpa * 1000.0 if e.design.pressure_max_mpa else np.inf for e in vessels]
        )
        # time constants (s) of the liquid temperature and solar gain (°C at full sun)
        self.tau_temp: F64 = np.where(self.sphere, 8 * 3600.0, 24 * 3600.0)
        self.solar_gain: F64 = np.where(self.sphere, 4.0, 2.0)
        self.installation = [e.installation for e in vessels]
        # state
        self.volume: F64 = np.zeros(nv)
        self.level: F64 = np.zeros(nv)
        self.temp: F64 = np.zeros(nv)
        self.pressure_kpa: F64 = np.zeros(nv)  # gauge
        self.flow_in: F64 = np.zeros(nv)  # t/h
        self.flow_out: F64 = np.zeros(nv)
        self.xv_open: BOOL = np.ones(nv, dtype=bool)
        self.trip_level: BOOL = np.zeros(nv, dtype=bool)
        self.trip_pressure: BOOL = np.zeros(nv, dtype=bool)
        self.in_service: BOOL = np.ones(nv, dtype=bool)
        self.heat_rate: F64 = np.zeros(nv)  # °C/s added by heat events
        self.pressurized_groups = self._groups(VesselKind.PRESSURIZED)
        self.refrigerated_groups = self._groups(VesselKind.REFRIGERATED)

    def _groups(self, kind: VesselKind) -> list[tuple[Substance, I64]]:
        by_name: dict[str, list[int]] = {}
        for v, sub in enumerate(self.subs):
            if self.kind[v] == kind:
                by_name.setdefault(sub.name, []).append(v)
        return [(substance(name), np.array(vs, dtype=np.int64)) for name, vs in by_name.items()]

    def _build_machines(self, equipment: dict[str, Equipment]) -> None:
        running = [t for t in self.tags if t.kind is TagKind.STATE and t.signal is Signal.PUMP]
        self.machines = list(dict.fromkeys(t.equipment for t in running))
        self.machine_index = {m: i for i, m in enumerate(self.machines)}
        self.running: BOOL = np.zeros(len(self.machines), dtype=bool)
        # a boil-off compressor serves the refrigerated tanks of its installation
        self.compressor_of: dict[int, int] = {}
        for t in running:
            eq = equipment[t.equipment]
            if "compressor" not in (eq.name + " " + t.name).lower():
                continue
            for v, vessel in enumerate(self.vessels):
                if self.kind[v] == VesselKind.REFRIGERATED and vessel.installation == eq.installation:
                    self.compressor_of[v] = self.machine_index[t.equipment]

    def _build_detectors(self, equipment: dict[str, Equipment]) -> None:
        """Places equipment on a plant layout and detectors on a ring around their equipment."""
        installations = [i.id for i in self.site.installations]
        pos: dict[str, tuple[float, float]] = {}
        for col, inst in enumerate(installations):
            x = col * 150.0
            y = 0.0
            for e in self.site.equipment:
                if e.installation != inst:
                    continue
                r = (e.diameter_m or 4.0) / 2
                pos[e.id] = (x, y + r)
                y += 2 * r + 20.0
        self.position = pos
        gas_tags = [t for t in self.tags if t.kind is TagKind.GAS]
        per_eq: dict[str, list[Tag]] = {}
        for t in gas_tags:
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
                idx.append(self.index[t.id])
        self.det_x: F64 = np.array(xs)
        self.det_y: F64 = np.array(ys)
        self.det_molar_mass: F64 = np.array(mm)
        self.det_lel: F64 = np.array(lel)
        self.det_toxic: BOOL = np.array(toxic, dtype=bool)
        self.det_tag: I64 = np.array(idx, dtype=np.int64)
        self.det_background: F64 = np.where(self.det_toxic, 0.8, 0.0) if len(idx) else np.zeros(0)

    def _build_tag_links(self) -> None:
        links: dict[Role, tuple[list[int], list[int]]] = {r: ([], []) for r in Role}
        for i, t in enumerate(self.tags):
            role = Role(int(self.roles[i]))
            owner = -1
            if t.equipment in self.vessel_index:
                owner = self.vessel_index[t.equipment]
            elif role is Role.RUNNING:
                owner = self.machine_index[t.equipment]
            if role is Role.IN_SERVICE and owner < 0:
                role = Role.OTHER_STATE
                self.roles[i] = role
            links[role][0].append(i)
            links[role][1].append(owner)
        self.links = {r: _TagsOf(tag, owner) for r, (tag, owner) in links.items()}
        # pressure unit factor: kPa gauge -> the tag's unit
        p = self.links[Role.PRESSURE]
        self.pressure_factor: F64 = np.array(
            [1.0 / _PRESSURE_TO_KPA[self.tags[i].unit.lower()] for i in p.tag], dtype=np.float64
        )
        span = self.range_hi - self.range_lo
        sigma = np.zeros(len(self.tags))
        role_sigma = {
            Role.LEVEL: 0.0015,  # radar gauge, m
            Role.TEMPERATURE: 0.05,
            Role.AMBIENT: 0.1,
            Role.WIND_SPEED: 0.0,
            Role.WIND_DIRECTION: 0.0,
            Role.GAS: 0.0,
            Role.FLOW_IN: 0.0,
            Role.FLOW_OUT: 0.0,
        }
        for role, link in self.links.items():
            if role in role_sigma:
                sigma[link.tag] = role_sigma[role]
            elif role in (Role.PRESSURE, Role.OTHER):
                sigma[link.tag] = 0.0005 * span[link.tag]
        self.sigma: F64 = sigma
        self.gas_sigma: F64 = np.where(self.det_toxic, 0.3, 0.4) if len(self.det_tag) else np.zeros(0)

    def _init_state(self) -> None:
        setups = self.scenario.equipment
        amb = self.scenario.weather.ambient_mean_c
        for v, e in enumerate(self.vessels):
            s = setups.get(e.id)
            level = s.level_m if s is not None and s.level_m is not None else 0.5 * self.level_top[v]
            self.level[v] = min(level, self.height[v])
            if self.kind[v] == VesselKind.REFRIGERATED:
                p = s.pressure_kpa if s is not None and s.pressure_kpa is not None else 10.0
                self.pressure_kpa[v] = p
                self.temp[v] = float(saturation_temperature_c(self.subs[v], p + P_ATM_KPA))
            else:
                t = s.temperature_c if s is not None and s.temperature_c is not None else amb
                self.temp[v] = t
                if self.kind[v] == VesselKind.PRESSURIZED:
                    self.pressure_kpa[v] = float(vapour_pressure_kpa(self.subs[v], t)) - P_ATM_KPA
                else:
                    self.pressure_kpa[v] = s.pressure_kpa if s is not None and s.pressure_kpa is not None else 1.0
        self.volume[:] = self._volume_of(self.level)
        for ev in self.scenario.events:
            if isinstance(ev, OutOfService) and ev.active(0.0) and ev.equipment in self.vessel_index:
                self.in_service[self.vessel_index[ev.equipment]] = False
        self.xv_open = self.in_service.copy()

    # ------------------------------------------------------------ geometry helpers

    def _volume_of(self, level: F64) -> F64:
        sph = sphere_fill_fraction(level / self.diameter) * self.vol_full
        return np.where(self.sphere, sph, self.area * level)

    def _level_of(self, volume: F64) -> F64:
        sph = sphere_height_fraction(volume / self.vol_full) * self.diameter
        return np.where(self.sphere, sph, volume / self.area)

    # ------------------------------------------------------------ time

    def hour_of_day(self, t: float | None = None) -> float:
        return (self.start_hour + (self.t if t is None else t) / 3600.0) % 24.0

    def _ambient(self, t: float) -> float:
        w = self.scenario.weather
        h = self.hour_of_day(t)
        return w.ambient_mean_c + w.ambient_amplitude_c * math.cos(2 * math.pi * (h - 15.0) / 24.0)

    def _solar(self, t: float) -> float:
        """Fraction of full sun, 0 at night."""
        h = self.hour_of_day(t)
        return max(0.0, math.sin(math.pi * (h - 6.0) / 12.0)) if 6.0 <= h <= 18.0 else 0.0

    def active_events(self, t: float | None = None) -> list[int]:
        t = self.t if t is None else t
        return [i for i, e in enumerate(self.scenario.events) if e.active(t)]

    # ------------------------------------------------------------ the step

    def step(self) -> None:
        """Advance plant time by one step and measure every tag."""
        self._physics(self.dt)
        self.t = round(self.t + self.dt, 9)
        self.step_count += 1
        self._measure()

    def run(self, steps: int) -> Series:
        """Steps ``steps`` times and returns every reading, the current one first."""
        n = len(self.tags)
        values = np.empty((steps + 1, n))
        quality = np.empty((steps + 1, n), dtype=np.uint8)
        times = np.empty(steps + 1)
        values[0], quality[0], times[0] = self.values, self.quality, self.t
        for k in range(1, steps + 1):
            self.step()
            values[k], quality[k], times[k] = self.values, self.quality, self.t
        return Series(self.tag_ids, times, values, quality)

    def _physics(self, dt: float) -> None:
        t = self.t
        events = self.scenario.events
        active = [events[i] for i in self.active_events(t)]
        nv = len(self.vessels)
        # weather: scheduled values plus a slow random meander of the wind direction
        w = self.scenario.weather
        ambient = self._ambient(t)
        wind_speed, wind_from = w.wind_speed_ms, w.wind_from_deg
        for ev in active:
            if isinstance(ev, WeatherChange):
                ambient = ev.ambient_c if ev.ambient_c is not None else ambient
                wind_speed = ev.wind_speed_ms if ev.wind_speed_ms is not None else wind_speed
                wind_from = ev.wind_from_deg if ev.wind_from_deg is not None else wind_from
        z = self.rng.standard_normal(2)
        alpha = min(1.0, dt / 300.0)
        self._wind_meander += alpha * (-self._wind_meander) + math.sqrt(2 * alpha) * w.wind_variability_deg * z[0]
        self.ambient_c = ambient
        self.wind_speed = max(0.0, wind_speed * (1.0 + 0.1 * z[1]))
        self.wind_from = (wind_from + self._wind_meander) % 360.0
        solar = self._solar(t)

        # demands from process events
        in_target = np.zeros(nv)
        out_target = np.zeros(nv)
        self.heat_rate[:] = 0.0
        self.in_service[:] = True
        stopped = np.zeros(len(self.machines), dtype=bool)
        pump_in: dict[int, list[int]] = {}
        pump_out: dict[int, list[int]] = {}
        for i in self.active_events(t):
            ev = events[i]
            if isinstance(ev, Transfer | SendOut):
                v = self.vessel_index[ev.equipment]
                (in_target if isinstance(ev, Transfer) else out_target)[v] += ev.rate_t_h
                if ev.pump is not None:
                    m = self.machine_index[ev.pump]
                    (pump_in if isinstance(ev, Transfer) else pump_out).setdefault(m, []).append(v)
            elif isinstance(ev, Heat):
                self.heat_rate[self.vessel_index[ev.equipment]] += ev.rate_c_per_min / 60.0
            elif isinstance(ev, Stop):
                stopped[self.machine_index[ev.equipment]] = True
            elif isinstance(ev, OutOfService) and ev.equipment in self.vessel_index:
                self.in_service[self.vessel_index[ev.equipment]] = False
        for i, ev in enumerate(events):
            if isinstance(ev, SisReset) and i not in self._reset_done and t >= ev.at_s:
                v = self.vessel_index[ev.equipment]
                self.trip_level[v] = self.trip_level[v] and self.level[v] >= self.lshh_m[v]
                self.trip_pressure[v] = self.trip_pressure[v] and self.pressure_kpa[v] >= self.pshh_kpa[v]
                self._reset_done.add(i)

        # ESD valves: closed on a latched trip or out of service
        self.xv_open = ~(self.trip_level | self.trip_pressure) & self.in_service
        # pumps: run while a flow they serve is demanded and a valve lets it through
        running = np.zeros(len(self.machines), dtype=bool)
        for m, vs in pump_in.items():
            running[m] |= bool(np.any(self.xv_open[vs]))
        for m, vs in pump_out.items():
            running[m] |= bool(np.any(self.xv_open[vs]))
        # inflow passes the inlet ESD valve; outflow is stopped by a closed valve too (ESD isolates)
        in_target *= self.xv_open
        out_target *= self.xv_open
        for m, vs in pump_in.items():
            if stopped[m]:
                in_target[vs] = 0.0
        for m, vs in pump_out.items():
            if stopped[m]:
                out_target[vs] = 0.0
        lag = 1.0 - math.exp(-dt / 20.0)
        self.flow_in += (in_target - self.flow_in) * lag
        self.flow_out += (out_target - self.flow_out) * lag
        self.flow_in[np.abs(self.flow_in) < 1e-3] = 0.0
        self.flow_out[np.abs(self.flow_out) < 1e-3] = 0.0

        # mass balance
        dv = (self.flow_in - self.flow_out) * 1000.0 / self.density / 3600.0 * dt  # m³
        old_vapour = self.vol_full - self.volume
        self.volume = np.clip(self.volume + dv, 0.0, self.vol_full)
        self.level = self._level_of(self.volume)

        # temperature
        old_temp = self.temp.copy()
        target = ambient + self.solar_gain * solar
        relax = 1.0 - np.exp(-dt / self.tau_temp)
        warm = self.kind != VesselKind.REFRIGERATED
        self.temp = np.where(warm, self.temp + (target - self.temp) * relax + self.heat_rate * dt, self.temp)

        # pressure: liquefied gases at their vapour pressure, one vector operation per substance
        kinds = self.kind
        for sub, grp in self.pressurized_groups:
            # a relief valve at the design pressure boils liquid off: pressure and temperature hold
            p = vapour_pressure_kpa(sub, self.temp[grp]) - P_ATM_KPA
            relieving = p > self.psv_kpa[grp]
            if np.any(relieving):
                cap = self.psv_kpa[grp] + P_ATM_KPA
                self.temp[grp] = np.where(relieving, saturation_temperature_c(sub, cap), self.temp[grp])
                p = np.minimum(p, self.psv_kpa[grp])
            self.pressure_kpa[grp] = p
        for sub, grp in self.refrigerated_groups:
            # heat leak through the insulation: 4 Pa/s at a 60 K difference to ambient
            leak = 0.004 * (ambient - self.temp[grp]) / 60.0
            # external heat: raise the pressure as fast as the saturation temperature would rise
            dpdt = (vapour_pressure_kpa(sub, self.temp[grp] + 0.5) - vapour_pressure_kpa(sub, self.temp[grp])) / 0.5
            heat = self.heat_rate[grp] * dpdt
            compress = np.zeros(len(grp))
            for j, v in enumerate(grp):
                mc = self.compressor_of.get(int(v))
                if mc is None or stopped[mc]:
                    continue
                if self.pressure_kpa[v] >= 12.0:
                    self.running[mc] = True
                elif self.pressure_kpa[v] <= 8.0:
                    self.running[mc] = False
                compress[j] = 0.008 if self.running[mc] else 0.0
            self.pressure_kpa[grp] = np.minimum(
                self.pressure_kpa[grp] + (leak + heat - compress) * dt, self.psv_kpa[grp]
            )
            self.temp[grp] = saturation_temperature_c(sub, self.pressure_kpa[grp] + P_ATM_KPA)
        atm = kinds == VesselKind.ATMOSPHERIC
        if np.any(atm):
            p_abs = self.pressure_kpa + P_ATM_KPA
            new_vapour = np.maximum(self.vol_full - self.volume, 1.0)
            p_abs = p_abs * np.maximum(old_vapour, 1.0) / new_vapour  # Boyle: level changes
            p_abs = p_abs * (self.temp + 273.15) / (old_temp + 273.15)  # Charles: thermal breathing
            p = p_abs - P_ATM_KPA
            reg = 1.0 - math.exp(-dt / 15.0)
            p = np.where(p < 0.5, p + (1.0 - p) * reg, p)  # nitrogen blanketing valve
            p = np.where(p > 4.0, p + (3.5 - p) * reg, p)  # breather vent
            self.pressure_kpa = np.where(atm, p, self.pressure_kpa)

        # machines: compressors keep their control state; pumps follow their demands
        for m in range(len(self.machines)):
            if m in self.compressor_of.values():
                self.running[m] = bool(self.running[m] and not stopped[m])
            else:
                self.running[m] = bool(running[m] and not stopped[m])

        # SIS: high-high level or pressure latches the trip; the ESD valve closes at once
        self.trip_level |= self.level >= self.lshh_m
        self.trip_pressure |= self.pressure_kpa >= self.pshh_kpa
        self.xv_open &= ~(self.trip_level | self.trip_pressure)

    # ------------------------------------------------------------ measurement

    def _gas(self) -> F64:
        """Detector readings (%LEL or mg/m³) from background and active leaks."""
        nd = len(self.det_tag)
        conc = np.zeros(nd)  # kg/m³
        if nd == 0:
            return conc
        u = max(self.wind_speed, 0.5)
        to = math.radians((self.wind_from + 180.0) % 360.0)  # direction the wind blows to
        ux, uy = math.sin(to), math.cos(to)
        for ev in self.scenario.events:
            if not (isinstance(ev, Leak) and ev.active(self.t)):
                continue
            q = ev.rate_kg_s * (min(1.0, (self.t - ev.at_s) / ev.ramp_s) if ev.ramp_s > 0 else 1.0)
            cx, cy = self.position[ev.equipment]
            r = (self.diameter[self.vessel_index[ev.equipment]]) / 2
            b = math.radians(ev.direction_deg)
            sx, sy = cx + r * math.sin(b), cy + r * math.cos(b)
            dx, dy = self.det_x - sx, self.det_y - sy
            down = dx * ux + dy * uy  # downwind distance
            cross = -dx * uy + dy * ux
            x = np.maximum(down, 1.0)
            sig_y = np.sqrt(1.5**2 + (0.08 * x / np.sqrt(1 + 0.0001 * x)) ** 2)
            sig_z = np.sqrt(1.0 + (0.06 * x / np.sqrt(1 + 0.0015 * x)) ** 2)
            plume = q / (math.pi * sig_y * sig_z * u) * np.exp(-(cross**2) / (2 * sig_y**2))
            plume = np.where(down > 0, plume, plume * np.exp(down / 3.0))  # upwind: only near-field eddies
            conc += plume
        vol_frac = conc * MOLAR_VOLUME_M3 / self.det_molar_mass
        reading = np.where(self.det_toxic, conc * 1e6, 100.0 * vol_frac / self.det_lel)
        return np.asarray(reading, dtype=np.float64)

    def _measure(self) -> None:
        n = len(self.tags)
        true = np.zeros(n)
        L = self.links
        mid = (self.range_lo + self.range_hi) / 2
        true[L[Role.OTHER].tag] = mid[L[Role.OTHER].tag]
        true[L[Role.LEVEL].tag] = self.level[L[Role.LEVEL].owner]
        true[L[Role.TEMPERATURE].tag] = self.temp[L[Role.TEMPERATURE].owner]
        true[L[Role.PRESSURE].tag] = self.pressure_kpa[L[Role.PRESSURE].owner] * self.pressure_factor
        true[L[Role.FLOW_IN].tag] = self.flow_in[L[Role.FLOW_IN].owner]
        true[L[Role.FLOW_OUT].tag] = self.flow_out[L[Role.FLOW_OUT].owner]
        true[L[Role.ESD_VALVE].tag] = self.xv_open[L[Role.ESD_VALVE].owner]
        true[L[Role.TRIP_LEVEL].tag] = self.trip_level[L[Role.TRIP_LEVEL].owner]
        true[L[Role.TRIP_PRESSURE].tag] = self.trip_pressure[L[Role.TRIP_PRESSURE].owner]
        true[L[Role.IN_SERVICE].tag] = self.in_service[L[Role.IN_SERVICE].owner]
        true[L[Role.RUNNING].tag] = self.running[L[Role.RUNNING].owner]
        true[L[Role.AMBIENT].tag] = self.ambient_c
        true[L[Role.WIND_SPEED].tag] = self.wind_speed
        true[L[Role.WIND_DIRECTION].tag] = self.wind_from
        noise = self.rng.standard_normal(n)
        measured = true + self.sigma * noise
        flows = np.concatenate([L[Role.FLOW_IN].tag, L[Role.FLOW_OUT].tag])
        measured[flows] = true[flows] * (1.0 + 0.003 * noise[flows])  # 0.3 % of reading, zero at no flow
        if len(self.det_tag):
            gas = self._gas() + self.det_background + self.gas_sigma * noise[self.det_tag]
            measured[self.det_tag] = np.clip(gas, 0.0, self.range_hi[self.det_tag])
        self._true = true
        quality = np.full(n, Quality.GOOD, dtype=np.uint8)
        self._apply_sensor_faults(measured, quality)
        self.values = measured
        self.quality = quality

    def _apply_sensor_faults(self, measured: F64, quality: npt.NDArray[np.uint8]) -> None:
        events = self.scenario.events
        for i in self.active_events():
            ev = events[i]
            if isinstance(ev, Stuck):
                k = self.index[ev.tag]
                if i not in self._frozen:
                    self._frozen[i] = float(self.values[k])
                measured[k] = self._frozen[i]
            elif isinstance(ev, Drift):
                k = self.index[ev.tag]
                measured[k] += ev.rate_per_min * (self.t - ev.at_s) / 60.0
            elif isinstance(ev, Spike):
                k = self.index[ev.tag]
                measured[k] = ev.value if ev.value is not None else measured[k] + (ev.magnitude or 0.0)
            elif isinstance(ev, NoiseBurst):
                k = self.index[ev.tag]
                measured[k] += ev.sigma * float(self.rng.standard_normal())
            elif isinstance(ev, BadQuality):
                quality[self.index[ev.tag]] = ev.quality
            elif isinstance(ev, OutOfRange):
                k = self.index[ev.tag]
                span = self.range_hi[k] - self.range_lo[k]
                if ev.value is not None:
                    measured[k] = ev.value
                elif ev.side == "high":
                    measured[k] = self.range_hi[k] + 0.1 * span
                else:
                    measured[k] = self.range_lo[k] - 0.25 * span

    # ------------------------------------------------------------ reading the model

    def value(self, tag_id: str) -> float:
        return float(self.values[self.index[tag_id]])

    def quality_of(self, tag_id: str) -> int:
        return int(self.quality[self.index[tag_id]])

    def true_value(self, tag_id: str) -> float:
        """The process value before instrument noise and faults."""
        return float(self._true[self.index[tag_id]])

    def active_comm(self) -> list[tuple[str, str]]:
        """(``comm_loss`` or ``restart``, target) for the communication events active now."""
        return [(e.type, e.target) for _, e in self.scenario.comm_events() if e.active(self.t)]
