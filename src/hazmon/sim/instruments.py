"""The plant's instruments, as plain functions over arrays: what a transmitter reads from a process
value (noise per role, flow meters at 0.3 % of reading), what gas detectors read from the plumes of
active leaks, and the scripted sensor faults (stuck, drift, spike, noise burst, bad quality, out of
range) laid over the readings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hazmon.sim.layout import PlantLayout
from hazmon.sim.roles import Role
from hazmon.sim.scenario import BadQuality, Drift, Event, Leak, NoiseBurst, OutOfRange, Spike, Stuck

F64 = npt.NDArray[np.float64]

MOLAR_VOLUME_M3 = 0.024055  # m³/mol of an ideal gas at 20 °C, 101.325 kPa

_ROLE_SIGMA = {
    Role.LEVEL: 0.0015,  # radar gauge, m
    Role.TEMPERATURE: 0.05,
    Role.AMBIENT: 0.1,
    Role.WIND_SPEED: 0.0,
    Role.WIND_DIRECTION: 0.0,
    Role.GAS: 0.0,
    Role.FLOW_IN: 0.0,
    Role.FLOW_OUT: 0.0,
}


def noise_sigma(layout: PlantLayout) -> tuple[F64, F64]:
    """Standard deviation of each tag's additive noise, and of each gas detector's."""
    span = layout.range_hi - layout.range_lo
    sigma = np.zeros(len(layout.tags))
    for role, link in layout.links.items():
        if role in _ROLE_SIGMA:
            sigma[link.tag] = _ROLE_SIGMA[role]
        elif role in (Role.PRESSURE, Role.OTHER):
            sigma[link.tag] = 0.0005 * span[link.tag]
    det = layout.detectors
    gas_sigma: F64 = np.where(det.toxic, 0.3, 0.4) if len(det) else np.zeros(0)
    return sigma, gas_sigma


def gas_readings(layout: PlantLayout, events: Sequence[Event], t: float, wind_speed: float, wind_from: float) -> F64:
    """Detector readings (%LEL or mg/m³) from the ground-level plumes of the leaks active at ``t``."""
    det = layout.detectors
    nd = len(det)
    conc = np.zeros(nd)  # kg/m³
    if nd == 0:
        return conc
    u = max(wind_speed, 0.5)
    to = math.radians((wind_from + 180.0) % 360.0)  # direction the wind blows to
    ux, uy = math.sin(to), math.cos(to)
    for ev in events:
        if not (isinstance(ev, Leak) and ev.active(t)):
            continue
        q = ev.rate_kg_s * (min(1.0, (t - ev.at_s) / ev.ramp_s) if ev.ramp_s > 0 else 1.0)
        cx, cy = layout.position[ev.equipment]
        r = (layout.vessels.diameter[layout.vessels.index[ev.equipment]]) / 2
        b = math.radians(ev.direction_deg)
        sx, sy = cx + r * math.sin(b), cy + r * math.cos(b)
        dx, dy = det.x - sx, det.y - sy
        down = dx * ux + dy * uy  # downwind distance
        cross = -dx * uy + dy * ux
        x = np.maximum(down, 1.0)
        sig_y = np.sqrt(1.5**2 + (0.08 * x / np.sqrt(1 + 0.0001 * x)) ** 2)
        sig_z = np.sqrt(1.0 + (0.06 * x / np.sqrt(1 + 0.0015 * x)) ** 2)
        plume = q / (math.pi * sig_y * sig_z * u) * np.exp(-(cross**2) / (2 * sig_y**2))
        plume = np.where(down > 0, plume, plume * np.exp(down / 3.0))  # upwind: only near-field eddies
        conc += plume
    vol_frac = conc * MOLAR_VOLUME_M3 / det.molar_mass
    reading = np.where(det.toxic, conc * 1e6, 100.0 * vol_frac / det.lel)
    return np.asarray(reading, dtype=np.float64)


def measure(layout: PlantLayout, true: F64, noise: F64, sigma: F64, gas: F64 | None) -> F64:
    """Readings of healthy instruments: ``true`` plus ``sigma`` times ``noise`` (standard normal, one per
    tag); flow meters err in proportion to the reading; ``gas`` (detector order, noise included) is clipped
    to the detectors' ranges."""
    L = layout.links
    measured = true + sigma * noise
    flows = np.concatenate([L[Role.FLOW_IN].tag, L[Role.FLOW_OUT].tag])
    measured[flows] = true[flows] * (1.0 + 0.003 * noise[flows])  # 0.3 % of reading, zero at no flow
    if gas is not None:
        det = layout.detectors.tag
        measured[det] = np.clip(gas, 0.0, layout.range_hi[det])
    return measured


def apply_sensor_faults(
    layout: PlantLayout,
    active: Sequence[tuple[int, Event]],
    t: float,
    measured: F64,
    quality: npt.NDArray[np.uint8],
    previous: F64,
    frozen: dict[int, float],
    rng: np.random.Generator,
) -> None:
    """Lays the active sensor-fault events (numbered as in the scenario) over ``measured`` and ``quality``,
    in place. A stuck sensor holds its ``previous`` reading from the step the fault began, kept in ``frozen``."""
    index = layout.index
    for i, ev in active:
        if isinstance(ev, Stuck):
            k = index[ev.tag]
            if i not in frozen:
                frozen[i] = float(previous[k])
            measured[k] = frozen[i]
        elif isinstance(ev, Drift):
            k = index[ev.tag]
            measured[k] += ev.rate_per_min * (t - ev.at_s) / 60.0
        elif isinstance(ev, Spike):
            k = index[ev.tag]
            measured[k] = ev.value if ev.value is not None else measured[k] + (ev.magnitude or 0.0)
        elif isinstance(ev, NoiseBurst):
            k = index[ev.tag]
            measured[k] += ev.sigma * float(rng.standard_normal())
        elif isinstance(ev, BadQuality):
            quality[index[ev.tag]] = ev.quality
        elif isinstance(ev, OutOfRange):
            k = index[ev.tag]
            span = layout.range_hi[k] - layout.range_lo[k]
            if ev.value is not None:
                measured[k] = ev.value
            elif ev.side == "high":
                measured[k] = layout.range_hi[k] + 0.1 * span
            else:
                measured[k] = layout.range_lo[k] - 0.25 * span
