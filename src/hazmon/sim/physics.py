"""Physical properties and geometry used by the plant model: the standard atmosphere, the substances
stored (molar mass, explosive limit, density), liquefied-gas vapour pressure (Antoine equation, NIST
coefficients) and the fill of a sphere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

P_ATM_KPA = 101.325  # standard atmosphere: gauge = absolute − P_ATM_KPA

# ---------------------------------------------------------------- substances


@dataclass(frozen=True, slots=True)
class Antoine:
    """log10(p / bar) = A − B / (T / K + C), valid for t_min_k <= T <= t_max_k."""

    a: float
    b: float
    c: float
    t_min_k: float
    t_max_k: float


@dataclass(frozen=True, slots=True)
class Substance:
    name: str
    molar_mass: float  # kg/mol
    lel: float  # lower explosive limit, volume fraction (0 for toxic-only)
    density: float  # liquid density, kg/m³, at storage conditions
    antoine: tuple[Antoine, ...] = ()  # ordered by temperature; empty: not a liquefied gas


# Antoine coefficients from the NIST Chemistry WebBook (SRD 69), form log10(p/bar) = A − B/(T/K + C):
#   propane  (C74986): Kemp and Egan 1938, 230.6–320.7 K;
#   propene  (C115071): 165.9–240.5 K set, used up to 325 K: within 3 % of the reference saturation
#            pressures (Lemmon/REFPROP) from 273 to 323 K, which tests/test_sim_model.py checks;
#   ammonia  (C7664417): Stull 1947, 164.0–239.6 K and 239.6–371.5 K.
# Commercial LPG is modelled as propane (GB 11174 LPG is mostly C3).
PROPANE = Substance("propane", 0.04410, 0.021, 500.0, (Antoine(3.98292, 819.296, -24.417, 230.6, 320.7),))
PROPYLENE = Substance("propylene", 0.04208, 0.020, 514.0, (Antoine(3.95606, 789.624, -25.57, 165.9, 240.5),))
AMMONIA = Substance(
    "ammonia",
    0.01703,
    0.15,
    682.0,
    (Antoine(3.18757, 506.713, -80.78, 164.0, 239.6), Antoine(4.86886, 1113.928, -10.409, 239.6, 371.5)),
)
METHANOL = Substance("methanol", 0.03204, 0.060, 792.0)
GENERIC = Substance("liquid", 0.10, 0.010, 800.0)
SUBSTANCES = {s.name: s for s in (PROPANE, PROPYLENE, AMMONIA, METHANOL)}
_ALIASES = {
    "lpg": PROPANE,
    "liquefied petroleum gas": PROPANE,
    "propane": PROPANE,
    "propylene": PROPYLENE,
    "propene": PROPYLENE,
    "ammonia": AMMONIA,
    "nh3": AMMONIA,
    "methanol": METHANOL,
    "ch3oh": METHANOL,
}


def substance(name: str | None) -> Substance:
    if name is None:
        return GENERIC
    return _ALIASES.get(name.strip().lower(), GENERIC)


def _antoine_sets(sub: Substance) -> tuple[Antoine, Antoine]:
    if not sub.antoine:
        raise ValueError(f"{sub.name} has no vapour pressure correlation")
    return sub.antoine[0], sub.antoine[-1]


def vapour_pressure_kpa(sub: Substance, t_c: F64 | float) -> F64:
    """Saturation pressure (absolute, kPa) of a liquefied gas at ``t_c`` °C."""
    lo, hi = _antoine_sets(sub)
    t_k = np.asarray(t_c, dtype=np.float64) + 273.15
    p_lo = 10.0 ** (lo.a - lo.b / (t_k + lo.c))
    p_hi = 10.0 ** (hi.a - hi.b / (t_k + hi.c))
    return np.asarray(np.where(t_k < lo.t_max_k, p_lo, p_hi) * 100.0, dtype=np.float64)


def saturation_temperature_c(sub: Substance, p_kpa_abs: F64 | float) -> F64:
    """Inverse of ``vapour_pressure_kpa``: boiling temperature (°C) at absolute pressure ``p_kpa_abs``."""
    lo, hi = _antoine_sets(sub)
    log_p = np.log10(np.maximum(np.asarray(p_kpa_abs, dtype=np.float64), 1e-3) / 100.0)
    t_lo = lo.b / (lo.a - log_p) - lo.c
    t_hi = hi.b / (hi.a - log_p) - hi.c
    return np.asarray(np.where(t_lo < lo.t_max_k, t_lo, t_hi) - 273.15, dtype=np.float64)


# ---------------------------------------------------------------- geometry

_SPHERE_X = np.linspace(0.0, 1.0, 2049)
_SPHERE_F = _SPHERE_X**2 * (3.0 - 2.0 * _SPHERE_X)  # V(h)/V_full for a sphere, x = h/D


def sphere_fill_fraction(x: F64) -> F64:
    """Volume fraction of a sphere filled to height fraction x = h/D."""
    x = np.clip(x, 0.0, 1.0)
    return np.asarray(x * x * (3.0 - 2.0 * x), dtype=np.float64)


def sphere_height_fraction(f: F64) -> F64:
    """Inverse of ``sphere_fill_fraction`` (table interpolation, error < 1e-6 of D)."""
    return np.asarray(np.interp(f, _SPHERE_F, _SPHERE_X), dtype=np.float64)
