"""The process model behind the PLC simulators: a deterministic, vectorized tank-farm plant.

``PlantModel(site, scenario, seed)`` owns every tag's value and quality as numpy arrays indexed like
``site.tags``, and the process state behind them (vessel levels, temperatures, pressures, flows, valves,
trips, machines, weather). ``step()`` advances plant time by ``scenario.dt_s``; the same site, scenario
and seed always give the same series (one ``numpy.random.Generator``, drawn in a fixed order).

Physics, kept simple but physical:

- geometry: level from volume for spheres (V = πh²(3R−h)/3, inverted on a table) and vertical
  cylinders (V = A·h); flows in t/h through the inlet ESD valve and pumps, first-order valve lag;
- temperature: first-order lag towards ambient plus solar load (day/night cycle);
- liquefied gases in pressure spheres sit at their vapour pressure (Antoine equation);
  refrigerated tanks hold a boil-off pressure (heat leak against a boil-off compressor with
  hysteresis) and the liquid sits at the saturation temperature of that pressure;
- atmospheric tanks carry a nitrogen pad: vapour space compressed or expanded by level changes
  (Boyle), a blanketing valve below 0.5 kPa g and a breather vent above 4 kPa g;
- SIS: a high-high level (or pressure) latches the trip tag and closes the ESD valve until reset.

The rest lives beside it: ``roles`` (what each tag stands for), ``layout`` (the fixed plant built from
the site: vessels, machines, the plant map, tag links), ``instruments`` (noise, gas detector plumes,
sensor faults), ``weather`` (day cycle, sun, wind) and ``physics`` (substance properties, sphere
geometry). Everything per tag is an array operation; Python loops run over events and vessels' roles only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hazmon.plant.site import Site
from hazmon.reading import Quality
from hazmon.sim import weather
from hazmon.sim.instruments import apply_sensor_faults, gas_readings, measure, noise_sigma
from hazmon.sim.layout import PlantLayout
from hazmon.sim.physics import P_ATM_KPA, saturation_temperature_c, vapour_pressure_kpa
from hazmon.sim.roles import Role, VesselKind
from hazmon.sim.scenario import Heat, OutOfService, Scenario, SendOut, SisReset, Stop, Transfer

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Series:
    """Readings of a run: ``values[k, i]`` is tag ``tag_ids[i]`` at ``times[k]`` seconds of plant time."""

    tag_ids: list[str]
    times: F64
    values: F64
    quality: npt.NDArray[np.uint8]

    def column(self, tag_id: str) -> F64:
        return np.asarray(self.values[:, self.tag_ids.index(tag_id)], dtype=np.float64)


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
        self.layout = layout = PlantLayout.of(site, scenario)
        self.tags = layout.tags
        self.tag_ids = layout.tag_ids
        self.index = layout.index
        self.sigma, self.gas_sigma = noise_sigma(layout)
        n = len(self.tags)
        nv = len(layout.vessels)
        start = scenario.start
        self.start_hour = start.hour + start.minute / 60 + start.second / 3600
        w = scenario.weather
        self.wind_speed = w.wind_speed_ms
        self.wind_from = w.wind_from_deg
        self._wind_meander = 0.0
        self._frozen: dict[int, float] = {}
        self._reset_done: set[int] = set()
        # vessel state
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
        # machine state
        self.running: BOOL = np.zeros(len(layout.machines), dtype=bool)
        # readings
        self.values: F64 = np.zeros(n)
        self.quality: npt.NDArray[np.uint8] = np.zeros(n, dtype=np.uint8)
        self._true: F64 = np.zeros(n)
        self.ambient_c = self._ambient(0.0)
        self._init_state()
        self._measure()

    def _init_state(self) -> None:
        setups = self.scenario.equipment
        amb = self.scenario.weather.ambient_mean_c
        V = self.layout.vessels
        for v, e in enumerate(V.equipment):
            s = setups.get(e.id)
            level = s.level_m if s is not None and s.level_m is not None else 0.5 * V.level_top[v]
            self.level[v] = min(level, V.height[v])
            if V.kind[v] == VesselKind.REFRIGERATED:
                p = s.pressure_kpa if s is not None and s.pressure_kpa is not None else 10.0
                self.pressure_kpa[v] = p
                self.temp[v] = float(saturation_temperature_c(V.subs[v], p + P_ATM_KPA))
            else:
                t = s.temperature_c if s is not None and s.temperature_c is not None else amb
                self.temp[v] = t
                if V.kind[v] == VesselKind.PRESSURIZED:
                    self.pressure_kpa[v] = float(vapour_pressure_kpa(V.subs[v], t)) - P_ATM_KPA
                else:
                    self.pressure_kpa[v] = s.pressure_kpa if s is not None and s.pressure_kpa is not None else 1.0
        self.volume[:] = V.volume_of(self.level)
        for ev in self.scenario.events:
            if isinstance(ev, OutOfService) and ev.active(0.0) and ev.equipment in V.index:
                self.in_service[V.index[ev.equipment]] = False
        self.xv_open = self.in_service.copy()

    # ------------------------------------------------------------ time

    def hour_of_day(self, t: float | None = None) -> float:
        return weather.hour_of_day(self.start_hour, self.t if t is None else t)

    def _ambient(self, t: float) -> float:
        return weather.ambient_c(self.scenario.weather, self.hour_of_day(t))

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
        V = self.layout.vessels
        M = self.layout.machines
        nv = len(V)
        # weather: scheduled values plus a slow random meander of the wind direction
        w = self.scenario.weather
        ambient, wind_speed, wind_from = weather.scheduled(w, self._ambient(t), active)
        z = self.rng.standard_normal(2)
        self._wind_meander = weather.meander(self._wind_meander, dt, w.wind_variability_deg, z[0])
        self.ambient_c = ambient
        self.wind_speed = max(0.0, wind_speed * (1.0 + 0.1 * z[1]))
        self.wind_from = (wind_from + self._wind_meander) % 360.0
        solar = weather.solar_fraction(self.hour_of_day(t))

        # demands from process events
        in_target = np.zeros(nv)
        out_target = np.zeros(nv)
        self.heat_rate[:] = 0.0
        self.in_service[:] = True
        stopped = np.zeros(len(M), dtype=bool)
        pump_in: dict[int, list[int]] = {}
        pump_out: dict[int, list[int]] = {}
        for i in self.active_events(t):
            ev = events[i]
            if isinstance(ev, Transfer | SendOut):
                v = V.index[ev.equipment]
                (in_target if isinstance(ev, Transfer) else out_target)[v] += ev.rate_t_h
                if ev.pump is not None:
                    m = M.index[ev.pump]
                    (pump_in if isinstance(ev, Transfer) else pump_out).setdefault(m, []).append(v)
            elif isinstance(ev, Heat):
                self.heat_rate[V.index[ev.equipment]] += ev.rate_c_per_min / 60.0
            elif isinstance(ev, Stop):
                stopped[M.index[ev.equipment]] = True
            elif isinstance(ev, OutOfService) and ev.equipment in V.index:
                self.in_service[V.index[ev.equipment]] = False
        for i, ev in enumerate(events):
            if isinstance(ev, SisReset) and i not in self._reset_done and t >= ev.at_s:
                v = V.index[ev.equipment]
                self.trip_level[v] = self.trip_level[v] and self.level[v] >= V.lshh_m[v]
                self.trip_pressure[v] = self.trip_pressure[v] and self.pressure_kpa[v] >= V.pshh_kpa[v]
                self._reset_done.add(i)

        # ESD valves: closed on a latched trip or out of service
        self.xv_open = ~(self.trip_level | self.trip_pressure) & self.in_service
        # pumps: run while a flow they serve is demanded and a valve lets it through
        running = np.zeros(len(M), dtype=bool)
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
        dv = (self.flow_in - self.flow_out) * 1000.0 / V.density / 3600.0 * dt  # m³
        old_vapour = V.vol_full - self.volume
        self.volume = np.clip(self.volume + dv, 0.0, V.vol_full)
        self.level = V.level_of(self.volume)

        # temperature
        old_temp = self.temp.copy()
        target = ambient + V.solar_gain * solar
        relax = 1.0 - np.exp(-dt / V.tau_temp)
        warm = V.kind != VesselKind.REFRIGERATED
        self.temp = np.where(warm, self.temp + (target - self.temp) * relax + self.heat_rate * dt, self.temp)

        # pressure: liquefied gases at their vapour pressure, one vector operation per substance
        kinds = V.kind
        for sub, grp in V.pressurized_groups:
            # a relief valve at the design pressure boils liquid off: pressure and temperature hold
            p = vapour_pressure_kpa(sub, self.temp[grp]) - P_ATM_KPA
            relieving = p > V.psv_kpa[grp]
            if np.any(relieving):
                cap = V.psv_kpa[grp] + P_ATM_KPA
                self.temp[grp] = np.where(relieving, saturation_temperature_c(sub, cap), self.temp[grp])
                p = np.minimum(p, V.psv_kpa[grp])
            self.pressure_kpa[grp] = p
        for sub, grp in V.refrigerated_groups:
            # heat leak through the insulation: 4 Pa/s at a 60 K difference to ambient
            leak = 0.004 * (ambient - self.temp[grp]) / 60.0
            # external heat: raise the pressure as fast as the saturation temperature would rise
            dpdt = (vapour_pressure_kpa(sub, self.temp[grp] + 0.5) - vapour_pressure_kpa(sub, self.temp[grp])) / 0.5
            heat = self.heat_rate[grp] * dpdt
            compress = np.zeros(len(grp))
            for j, v in enumerate(grp):
                mc = M.compressor_of.get(int(v))
                if mc is None or stopped[mc]:
                    continue
                if self.pressure_kpa[v] >= 12.0:
                    self.running[mc] = True
                elif self.pressure_kpa[v] <= 8.0:
                    self.running[mc] = False
                compress[j] = 0.008 if self.running[mc] else 0.0
            self.pressure_kpa[grp] = np.minimum(self.pressure_kpa[grp] + (leak + heat - compress) * dt, V.psv_kpa[grp])
            self.temp[grp] = saturation_temperature_c(sub, self.pressure_kpa[grp] + P_ATM_KPA)
        atm = kinds == VesselKind.ATMOSPHERIC
        if np.any(atm):
            p_abs = self.pressure_kpa + P_ATM_KPA
            new_vapour = np.maximum(V.vol_full - self.volume, 1.0)
            p_abs = p_abs * np.maximum(old_vapour, 1.0) / new_vapour  # Boyle: level changes
            p_abs = p_abs * (self.temp + 273.15) / (old_temp + 273.15)  # Charles: thermal breathing
            p = p_abs - P_ATM_KPA
            reg = 1.0 - math.exp(-dt / 15.0)
            p = np.where(p < 0.5, p + (1.0 - p) * reg, p)  # nitrogen blanketing valve
            p = np.where(p > 4.0, p + (3.5 - p) * reg, p)  # breather vent
            self.pressure_kpa = np.where(atm, p, self.pressure_kpa)

        # machines: compressors keep their control state; pumps follow their demands
        for m in range(len(M)):
            if m in M.compressor_of.values():
                self.running[m] = bool(self.running[m] and not stopped[m])
            else:
                self.running[m] = bool(running[m] and not stopped[m])

        # SIS: high-high level or pressure latches the trip; the ESD valve closes at once
        self.trip_level |= self.level >= V.lshh_m
        self.trip_pressure |= self.pressure_kpa >= V.pshh_kpa
        self.xv_open &= ~(self.trip_level | self.trip_pressure)

    # ------------------------------------------------------------ measurement

    def _measure(self) -> None:
        """Reads every tag: the true process value, then the instrument's noise and any sensor fault."""
        layout = self.layout
        n = len(self.tags)
        true = np.zeros(n)
        L = layout.links
        mid = (layout.range_lo + layout.range_hi) / 2
        true[L[Role.OTHER].tag] = mid[L[Role.OTHER].tag]
        true[L[Role.LEVEL].tag] = self.level[L[Role.LEVEL].owner]
        true[L[Role.TEMPERATURE].tag] = self.temp[L[Role.TEMPERATURE].owner]
        true[L[Role.PRESSURE].tag] = self.pressure_kpa[L[Role.PRESSURE].owner] * layout.pressure_factor
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
        gas = None
        det = layout.detectors
        if len(det):
            plumes = gas_readings(layout, self.scenario.events, self.t, self.wind_speed, self.wind_from)
            gas = plumes + det.background + self.gas_sigma * noise[det.tag]
        measured = measure(layout, true, noise, self.sigma, gas)
        self._true = true
        quality = np.full(n, Quality.GOOD, dtype=np.uint8)
        events = self.scenario.events
        active = [(i, events[i]) for i in self.active_events()]
        apply_sensor_faults(layout, active, self.t, measured, quality, self.values, self._frozen, self.rng)
        self.values = measured
        self.quality = quality

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
