"""The simulator's process model and scenarios, without any server: physics, SIS, faults, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hazmon.errors import InvalidFile
from hazmon.gateways.config import load_gateway_config, tag_ids
from hazmon.plant.site import Site, load_site
from hazmon.reading import Quality
from hazmon.sim import PlantModel, load_scenario, parse_scenario
from hazmon.sim.physics import (
    AMMONIA,
    PROPANE,
    PROPYLENE,
    saturation_temperature_c,
    sphere_fill_fraction,
    sphere_height_fraction,
    vapour_pressure_kpa,
)

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ["normal", "overfill", "leak", "heat", "sensor-faults", "comm-loss"]


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "sites/demo-tank-farm.yaml")


def run(site: Site, name: str, steps: int, seed: int = 0) -> tuple[PlantModel, object]:
    model = PlantModel(site, load_scenario(ROOT / f"simulators/{name}.yaml", site), seed)
    return model, model.run(steps)


def first_time(series: object, tag: str, cond: object) -> float | None:
    c = series.column(tag)  # type: ignore[attr-defined]
    hits = np.flatnonzero(cond(c))  # type: ignore[operator]
    return float(series.times[hits[0]]) if len(hits) else None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sub", "t_c", "p_kpa"),
    [
        # saturation pressures from NIST REFPROP (absolute kPa)
        (PROPANE, 0.0, 474.5),
        (PROPANE, 20.0, 836.5),
        (PROPANE, 40.0, 1369.4),
        (PROPYLENE, 0.0, 587.5),
        (PROPYLENE, 20.0, 1019.7),
        (PROPYLENE, 40.0, 1645.2),
        (AMMONIA, -33.33, 101.3),
        (AMMONIA, 20.0, 857.5),
    ],
)
def test_vapour_pressure_matches_reference_within_3_percent(sub: object, t_c: float, p_kpa: float) -> None:
    p = float(vapour_pressure_kpa(sub, t_c))  # type: ignore[arg-type]
    assert abs(p - p_kpa) / p_kpa < 0.03
    assert float(saturation_temperature_c(sub, p)) == pytest.approx(t_c, abs=1e-6)  # type: ignore[arg-type]


def test_sphere_level_volume_round_trip() -> None:
    x = np.linspace(0, 1, 101)
    assert np.allclose(sphere_height_fraction(sphere_fill_fraction(x)), x, atol=1e-5)
    assert float(sphere_fill_fraction(np.array([0.5]))[0]) == pytest.approx(0.5)


def test_demo_gateways_serve_every_tag_exactly_once(site: Site) -> None:
    served: list[str] = []
    for name in ("opcua", "modbus", "mqtt"):
        served += tag_ids(load_gateway_config(ROOT / f"gateways/demo-{name}.yaml", site))
    assert sorted(served) == sorted(t.id for t in site.tags)


@pytest.mark.parametrize("name", SCENARIOS)
def test_demo_scenarios_are_valid(site: Site, name: str) -> None:
    scenario = load_scenario(ROOT / f"simulators/{name}.yaml", site)
    assert scenario.name == name and scenario.events


def test_one_seed_gives_identical_series_another_seed_differs(site: Site) -> None:
    _, a = run(site, "sensor-faults", 900, seed=7)
    _, b = run(site, "sensor-faults", 900, seed=7)
    _, c = run(site, "sensor-faults", 900, seed=8)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.quality, b.quality)  # type: ignore[attr-defined]
    assert not np.array_equal(a.values, c.values)  # type: ignore[attr-defined]


def test_overfill_rises_through_high_and_high_high_then_sis_trips(site: Site) -> None:
    _, s = run(site, "overfill", 1800)
    high = first_time(s, "V101.LT", lambda c: c > 13.3)
    trip = first_time(s, "V101.LSHH", lambda c: c > 0.5)
    assert high is not None and trip is not None and high < trip
    level = s.column("V101.LT")  # type: ignore[attr-defined]
    k = int(np.searchsorted(s.times, trip))  # type: ignore[attr-defined]
    assert level[k] >= 14.13 - 0.01  # trips at the set point
    assert s.column("V101.XV")[k] == 0.0  # type: ignore[attr-defined]
    # after the trip the flow dies out, the pump stops and the level stays below the top
    assert s.column("V101.FT")[-1] == 0.0 and s.column("P101.RUN")[-1] == 0.0  # type: ignore[attr-defined]
    assert level.max() < 14.3
    assert s.column("V101.LSHH")[-1] == 1.0  # latched  # type: ignore[attr-defined]


def test_leak_drives_the_downwind_detector_through_25_then_50_percent_lel(site: Site) -> None:
    _, s = run(site, "leak", 1300)
    t25 = first_time(s, "V103.GT1", lambda c: c >= 25)
    t50 = first_time(s, "V103.GT1", lambda c: c >= 50)
    assert t25 is not None and t50 is not None and 120 < t25 < t50 < 1320
    assert s.column("V103.GT2").max() < 10  # upwind, other side  # type: ignore[attr-defined]
    assert s.column("V101.GT1").max() < 10  # another sphere  # type: ignore[attr-defined]
    assert s.column("V103.GT1")[:120].max() < 5  # background before the leak  # type: ignore[attr-defined]


def test_heat_raises_sphere_pressure_and_trips_the_ammonia_tank_on_pressure(site: Site) -> None:
    _, s = run(site, "heat", 1200)
    assert s.column("V102.TT")[-1] > 45  # type: ignore[attr-defined]
    assert s.column("V102.PT").max() > 1.6 and s.column("V101.PT").max() < 1.2  # type: ignore[attr-defined]
    trip = first_time(s, "T201.PSHH", lambda c: c > 0.5)
    assert trip is not None and trip > 300
    k = int(np.searchsorted(s.times, trip))  # type: ignore[attr-defined]
    assert s.column("T201.PT")[k] >= 24.5 and s.column("T201.XV")[k] == 0.0  # type: ignore[attr-defined]
    # the liquid stays at the boiling point of the tank pressure
    assert s.column("T201.TT")[-1] > s.column("T201.TT")[0] + 2  # type: ignore[attr-defined]


def test_sensor_faults_corrupt_only_their_instrument(site: Site) -> None:
    model, s = run(site, "sensor-faults", 700)
    lt = s.column("V101.LT")  # type: ignore[attr-defined]
    assert np.all(lt[121:420] == lt[120]) and lt[421] != lt[120]  # stuck, then alive again
    truth = model.true_value("T301.TT")
    assert model.value("T301.TT") - truth > 0.5 * (700 - 120) / 60 - 0.5  # drifted
    assert s.column("V102.PT")[301] == 2.4  # spike  # type: ignore[attr-defined]
    assert model.quality_of("V103.TT") == Quality.BAD_SENSOR
    assert model.quality_of("V103.PT") == Quality.GOOD
    assert model.value("V104.PT") > 2.5 and model.quality_of("V104.PT") == Quality.GOOD  # out of range
    assert model.value("T201.LT") < 0
    noisy = s.column("T201.PT")[400:460]  # type: ignore[attr-defined]
    quiet = s.column("T201.PT")[300:360]  # type: ignore[attr-defined]
    assert noisy.std() > 5 * quiet.std()


def test_normal_day_keeps_alarms_quiet_and_t304_out_of_service(site: Site) -> None:
    model, s = run(site, "normal", 3 * 3600)
    assert s.column("T304.IS").max() == 0.0 and s.column("T304.XV").max() == 0.0  # type: ignore[attr-defined]
    assert s.column("K201.RUN").max() == 1.0  # compressor cycles  # type: ignore[attr-defined]
    pt = s.column("T201.PT")  # type: ignore[attr-defined]
    assert pt.min() > 6 and pt.max() < 14
    for tag in ("V101.LSHH", "V103.LSHH", "T201.LSHH", "T201.PSHH", "T301.LSHH"):
        assert s.column(tag).max() == 0.0  # type: ignore[attr-defined]
    assert np.all(model.quality == Quality.GOOD)


def test_scenario_errors_name_their_path(site: Site) -> None:
    data = {
        "name": "bad",
        "site": "demo-tank-farm",
        "duration_s": 100,
        "events": [
            {"type": "transfer", "at_s": 0, "duration_s": 10, "equipment": "V101", "rate_t_h": -5},
            {"type": "leak", "at_s": 0, "duration_s": 10, "equipment": "NOPE", "rate_kg_s": 1},
            {"type": "stuck", "at_s": 200, "duration_s": 10, "tag": "V101.XX"},
        ],
    }
    with pytest.raises(InvalidFile) as e:
        parse_scenario(data, "bad.yaml", site)
    assert [str(p) for p in e.value.problems] == ["events[0].rate_t_h: must be > 0"]
    data["events"][0]["rate_t_h"] = 5  # type: ignore[index]
    with pytest.raises(InvalidFile) as e:
        parse_scenario(data, "bad.yaml", site)
    paths = [p.path for p in e.value.problems]
    assert paths == ["events[1].equipment", "events[2].tag", "events[2].at_s"]
