"""Rule files: the shipped presets check clean, errors carry paths, precedence is as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from hazmon.alarms.alarm import PRIORITY_CODES, Priority
from hazmon.alarms.compiler import check_rules, compile_rules, load_rules
from hazmon.alarms.rules import BAD, FROZEN, HH, LL, STALE, STATE, H, L
from hazmon.cli import main
from hazmon.errors import InvalidFile
from hazmon.plant.site import Site, load_site
from hazmon.plant.tag import TagIndex

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "alarm_rules").glob("*.yaml"))
DEMO = load_site(ROOT / "sites" / "demo-tank-farm.yaml")


def twin(site: Site, site_id: str) -> Site:
    """The same plant as another site: every tag id the same."""
    raw = site.model_dump(by_alias=True)
    raw["site"]["id"] = site_id
    return type(site).model_validate(raw)


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def compiled(*paths: Path):  # type: ignore[no-untyped-def]
    return compile_rules(load_rules(paths, [DEMO]), [DEMO], TagIndex.from_sites([DEMO]))


def test_presets_and_demo_rules_check_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_rules(PRESETS, [DEMO]) == []
    assert main(["rules", "check", *map(str, PRESETS), "--site", str(ROOT / "sites" / "demo-tank-farm.yaml")]) == 0
    assert "ok: " in capsys.readouterr().out


def test_gas_presets_follow_gb_t_50493() -> None:
    c = compiled(*PRESETS)
    index = TagIndex.from_sites([DEMO]).scoped(DEMO.id)  # the demo's tags under their own ids
    lel = index.key("V101.GT1")
    assert (c.limit[lel, H], c.limit[lel, HH]) == (25.0, 50.0)
    assert c.latch[lel, H] and c.latch[lel, HH]
    nh3 = index.key("T201.AT1")
    assert (c.limit[nh3, H], c.limit[nh3, HH]) == (20.0, 40.0)
    assert PRIORITY_CODES[c.priority[nh3, HH]] is Priority.CRITICAL
    assert c.priority[nh3, FROZEN] == -1  # clean air reads a steady zero


def test_toxic_values_for_each_substance(tmp_path: Path) -> None:
    data = (ROOT / "alarm_rules" / "gas-detectors.yaml").read_text()
    assert all(s in data for s in ("H2S", "CO}", "Cl2", "NH3", "HCN", "phosgene"))
    for sub, (h, hh) in {"H2S": (10, 20), "CO": (20, 40), "Cl2": (1, 2), "HCN": (1, 2), "phosgene": (0.5, 1)}.items():
        site = load_site(ROOT / "tests" / "data" / "mini-site.yaml")
        raw = site.model_dump(by_alias=True)
        raw["tags"][-1]["gas"] = {"class": "toxic", "substance": sub}
        raw["tags"][-1]["unit"] = "mg/m³"
        s2 = type(site).model_validate(raw)
        c = compile_rules(
            load_rules([ROOT / "alarm_rules" / "gas-detectors.yaml"], [s2]), [s2], TagIndex.from_sites([s2])
        )
        row = TagIndex.from_sites([s2]).key(f"{s2.id}/AREA.GT")
        assert (c.limit[row, H], c.limit[row, HH]) == (h, hh), sub


def test_demo_rules_override_presets_per_field() -> None:
    c = compiled(*PRESETS)
    index = TagIndex.from_sites([DEMO]).scoped(DEMO.id)  # the demo's tags under their own ids
    lt = index.key("V101.LT")
    assert c.limit[lt, HH] == 14.5 and c.deadband[lt, HH] == 0.1  # demo rule: absolute value
    assert c.on_delay_us[c.timing[lt, HH]] == 5_000_000  # demo sets 5 s for HH
    assert c.on_delay_us[c.timing[lt, H]] == 60_000_000  # H keeps the preset's 60 s
    assert c.stale_us[lt] == 60_000_000 and c.priority[lt, BAD] >= 0
    sis = index.key("V101.LSHH")
    assert c.limit[sis, STATE] == 1.0 and c.latch[sis, STATE] and c.condition_name(sis, STATE) == "state.SIS_TRIP"
    xv = index.key("V101.XV")
    assert c.limit[xv, STATE] == 0.0 and c.condition_name(xv, STATE) == "state.ESD_VALVE_CLOSED"
    wind = index.key("WS1.WS")
    assert c.priority[wind, H] == -1  # disabled by the site
    tt = index.key("WS1.TT")
    assert c.limit[tt, H] == pytest.approx(-40 + 0.8 * 100)  # percent of the range
    # suppression by design: V101's tags depend on V101.IS, gas detectors do not
    e = list(c.in_service_rows).index(index.key("V101.IS"))
    deps = set(c.dependents[c.dependents_ptr[e] : c.dependents_ptr[e + 1]].tolist())
    assert lt in deps and index.key("V101.GT1") not in deps and index.key("V101.IS") not in deps


def test_precedence_tag_over_glob_over_equipment_over_kind(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
rules:
- select: {tags: [V101.LT]}
  limits: {H: {value: 11}}
- select: {match: "V10?.LT"}
  limits: {H: {value: 12}}
- select: {equipment: [V101, V102, V103]}
  limits: {H: {value: 13, priority: low}}
- select: {kind: level}
  limits: {H: {value: 14, on_delay_s: 7}}
""",
    )
    c = compiled(p)
    ix = TagIndex.from_sites([DEMO]).scoped(DEMO.id)
    got = {t: c.limit[ix.key(t), H] for t in ("V101.LT", "V102.LT", "T201.LT")}
    assert got == {"V101.LT": 11, "V102.LT": 12, "T201.LT": 14}
    assert PRIORITY_CODES[c.priority[ix.key("V101.LT"), H]] is Priority.LOW  # from the equipment rule
    assert c.on_delay_us[c.timing[ix.key("V101.LT"), H]] == 7_000_000  # from the kind rule


def test_errors_have_paths(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
rules:
- select: {kind: level}
  limits:
    HH: {value: 10}
    H: {value: 12}
- select: {tags: [NOPE.LT, V101.LT]}
  limits: {HH: {value: 1, on_delay_s: -1}}
- select: {equipment: [ZZ]}
  state: {alarm_when: open}
- select: {tags: [V101.XV]}
  limits: {H: {value: 1}}
- select: {kind: level}
  limits: {L: {value: 1, percent: 5}}
  bogus: 1
""",
    )
    msgs = {str(x) for x in check_rules([p], [DEMO])}
    src = str(p)
    assert f"{src}:rules[1].limits.HH.on_delay_s: must be >= 0" in msgs
    assert f"{src}:rules[4].limits.L: give value or percent, not both" in msgs
    assert f"{src}:rules[4].bogus: unknown field" in msgs
    p2 = write(
        tmp_path, "\n".join(p.read_text().replace("on_delay_s: -1", "on_delay_s: 1").splitlines()[:13]), "r2.yaml"
    )
    msgs = {str(x) for x in check_rules([p2], [DEMO])}
    assert f"{p2}:rules[0].limits.H.value: H (12) is above HH (10)" in msgs
    assert f"{p2}:rules[1].select.tags[0]: unknown tag 'NOPE.LT'" in msgs
    assert f"{p2}:rules[2].select.equipment[0]: unknown equipment 'ZZ'" in msgs
    assert f"{p2}:rules[3].limits.H: does not apply to 'V101.XV', a state tag" in msgs
    with pytest.raises(InvalidFile):
        load_rules([p2], [DEMO])


def test_contradictions_across_rules_and_incomplete_conditions(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
rules:
- select: {kind: level}
  limits: {LL: {percent: 20}, L: {percent: 10}, H: {priority: high}}
- select: {signal: esd_valve}
  state: {alarm_when: shut}
- select: {kind: temperature}
  rate_of_change: {rising: {per_min: 1}}
  quality: {stale: {priority: low}}
""",
    )
    msgs = [str(x) for x in check_rules([p], [DEMO])]
    assert any(m.startswith(f"{p}:rules[0].limits.LL.percent: LL (") and "is above L" in m for m in msgs)
    assert any(m.startswith(f"{p}:rules[0].limits.H: no value or percent") for m in msgs)
    assert any("has no state 'shut' (states: closed, open)" in m for m in msgs)
    assert any("no rate_of_change.window_s" in m for m in msgs)
    assert any(m.startswith(f"{p}:rules[2].quality.stale: no after_s set") for m in msgs)
    assert check_rules([tmp_path / "missing.yaml"], [])[0].message.startswith("cannot read file")
    assert check_rules([write(tmp_path, "- 1", "list.yaml")], [])[0].message.startswith("a rule file must")


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "rules:\n- select: {kind: level}\n  limits: {H: {value: 2}, HH: {value: 1}}\n")
    assert main(["rules", "check", str(p)]) == 1
    assert "limits.H.value: H (2) is above HH (1)" in capsys.readouterr().err


def test_compiled_arrays_shape_and_disabled_markers() -> None:
    c = compiled(*PRESETS)
    n = len(DEMO.tags)
    assert c.priority.shape == (n, 11) and c.limit.shape == (n, 7)
    disabled = c.priority < 0
    assert np.isnan(c.limit[:, :7][disabled[:, :7]]).all()
    row = TagIndex.from_sites([DEMO]).key("demo-tank-farm/V101.IS")
    assert c.tag_ids[row] == "demo-tank-farm/V101.IS" and c.site_of["demo-tank-farm/V101.IS"] == DEMO.id
    assert c.priority[row, STALE] >= 0 and c.priority[row, L] == -1 and c.priority[row, LL] == -1


def test_two_sites_with_the_same_tag_ids_have_their_own_rows(tmp_path: Path) -> None:
    """Tag ids repeat across sites (issue 14): each site's tag is its own row under its reference, with
    its own site's rules applied, and suppression by design stays within its site."""
    north = twin(DEMO, "north-works")
    index = TagIndex.from_sites([DEMO, north])
    c = compile_rules(load_rules(PRESETS, [DEMO, north]), [DEMO, north], index)
    assert c.rows == 2 * len(DEMO.tags)
    here, there = index.key("demo-tank-farm/V101.LT"), index.key("north-works/V101.LT")
    assert here != there
    assert (c.tag_ids[here], c.tag_ids[there]) == ("demo-tank-farm/V101.LT", "north-works/V101.LT")
    assert (c.site_of["demo-tank-farm/V101.LT"], c.site_of["north-works/V101.LT"]) == ("demo-tank-farm", "north-works")
    assert c.limit[here, HH] == c.limit[there, HH] == 14.5  # the demo rule selects V101.LT in both
    deps: dict[str, set[int]] = {}
    for site in ("demo-tank-farm", "north-works"):
        e = list(c.in_service_rows).index(index.key(f"{site}/V101.IS"))
        deps[site] = set(c.dependents[c.dependents_ptr[e] : c.dependents_ptr[e + 1]].tolist())
    assert here in deps["demo-tank-farm"] and here not in deps["north-works"]
    assert there in deps["north-works"] and there not in deps["demo-tank-farm"]


def test_rules_check_names_urgent_alarms_without_a_response_by_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    north = tmp_path / "north.yaml"
    doc = twin(DEMO, "north-works").model_dump(mode="json", by_alias=True, exclude_none=True)
    north.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    bare = write(tmp_path, "rules:\n- select: {tags: [V101.LT]}\n  limits:\n    HH: {value: 15, priority: critical}\n")
    demo_file = ROOT / "sites" / "demo-tank-farm.yaml"
    assert main(["rules", "check", str(bare), "--site", str(demo_file), "--site", str(north)]) == 0
    out = capsys.readouterr().out
    assert "2 alarm(s) of high or critical priority have no alarm response" in out
    assert "  demo-tank-farm/V101.LT:level.HH (critical)\n" in out
    assert "  north-works/V101.LT:level.HH (critical)\n" in out
