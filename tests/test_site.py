"""The site file format: the demo validates; a broken file lists every error with its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from hazmon.errors import InvalidFile
from hazmon.plant.site import TagKind, check_site, load_site
from hazmon.regulator.gb18218 import grade

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sites" / "demo-tank-farm.yaml"


def test_demo_site_is_valid_and_realistic() -> None:
    site = load_site(DEMO)
    assert len(site.tags) >= 60
    kinds = {t.kind for t in site.tags}
    assert kinds == set(TagKind)
    gas = [t for t in site.tags if t.kind is TagKind.GAS]
    assert {t.gas.gas_class.value for t in gas if t.gas} == {"combustible", "toxic"}
    assert any(t.unit == "%LEL" for t in gas) and any(t.unit == "mg/m³" for t in gas)
    assert any(t.signal and t.signal.value == "sis_trip" for t in site.tags)


def test_demo_installations_are_graded_per_gb18218() -> None:
    site = load_site(DEMO)
    grades = {i.id: grade(i) for i in site.installations}
    # ammonia 6000 t / Q 10 t, β 2, 45 people (α 1.2): R = 1.2 * 2 * 600 = 1440 -> level 1
    assert grades["HI-02"].r == 1440 and grades["HI-02"].level == 1
    # methanol 15000 t / Q 500 t, β 1, 30 people (α 1.2): R = 36 -> level 3
    assert grades["HI-03"].r == 36 and grades["HI-03"].level == 3


def _broken(tmp_path: Path) -> Path:
    doc = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    doc["installations"][2]["chemicals"][0]["quantity_t"] = 0
    doc["enterprise"]["uscc"] = "not-a-code"
    doc["tags"][3]["kind"] = "humidity"
    doc["tags"][5]["equipment"] = "NOPE"
    doc["tags"][6]["id"] = doc["tags"][0]["id"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def test_structural_errors_are_all_listed_with_paths(tmp_path: Path) -> None:
    problems = [str(p) for p in check_site(_broken(tmp_path))]
    assert "installations[2].chemicals[0].quantity_t: must be > 0" in problems
    assert any(p.startswith("enterprise.uscc:") for p in problems)
    assert any(p.startswith("tags[3].kind:") for p in problems)


def test_reference_errors_are_listed_with_paths(tmp_path: Path) -> None:
    doc = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    doc["tags"][5]["equipment"] = "NOPE"
    doc["tags"][6]["id"] = doc["tags"][0]["id"]
    doc["equipment"][0]["installation"] = "HI-99"
    path = tmp_path / "refs.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        load_site(path)
    except InvalidFile as e:
        text = [str(p) for p in e.problems]
    else:
        raise AssertionError("broken references were accepted")
    assert "tags[5].equipment: unknown equipment 'NOPE'" in text
    assert any(t.startswith("tags[6].id: duplicate id") for t in text)
    assert "equipment[0].installation: unknown installation 'HI-99'" in text


def test_cli_site_check_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "hazmon", "site", "check", str(DEMO)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "81 tags" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hazmon", "site", "check", str(_broken(tmp_path))],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "installations[2].chemicals[0].quantity_t: must be > 0" in bad.stderr
