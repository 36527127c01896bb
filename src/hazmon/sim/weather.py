"""The weather over the plant as the model sees it, as plain functions: the time of day, the ambient
temperature's day-night cycle, the solar load, scheduled weather changes and the wind direction's
slow random meander."""

from __future__ import annotations

import math
from collections.abc import Iterable

from hazmon.sim.scenario import Event, Weather, WeatherChange


def hour_of_day(start_hour: float, t: float) -> float:
    """Local hour (0–24) ``t`` seconds after a start at ``start_hour``."""
    return (start_hour + t / 3600.0) % 24.0


def ambient_c(weather: Weather, hour: float) -> float:
    """Ambient temperature on the daily cycle: warmest at 15:00."""
    return weather.ambient_mean_c + weather.ambient_amplitude_c * math.cos(2 * math.pi * (hour - 15.0) / 24.0)


def solar_fraction(hour: float) -> float:
    """Fraction of full sun, 0 at night."""
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) if 6.0 <= hour <= 18.0 else 0.0


def scheduled(weather: Weather, ambient: float, active: Iterable[Event]) -> tuple[float, float, float]:
    """(ambient °C, wind speed m/s, wind from °) after the active weather changes override the daily values."""
    wind_speed, wind_from = weather.wind_speed_ms, weather.wind_from_deg
    for ev in active:
        if isinstance(ev, WeatherChange):
            ambient = ev.ambient_c if ev.ambient_c is not None else ambient
            wind_speed = ev.wind_speed_ms if ev.wind_speed_ms is not None else wind_speed
            wind_from = ev.wind_from_deg if ev.wind_from_deg is not None else wind_from
    return ambient, wind_speed, wind_from


def meander(offset: float, dt: float, variability_deg: float, z: float) -> float:
    """The wind direction's offset (°) after ``dt`` seconds: mean-reverting over 5 min, driven by ``z`` ~ N(0, 1)."""
    alpha = min(1.0, dt / 300.0)
    return offset + (alpha * (-offset) + math.sqrt(2 * alpha) * variability_deg * z)
