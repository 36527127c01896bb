"""The site file format: the demo validates; a broken file lists every error with its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hazmon.errors import InvalidFile
from hazmon.plant.site import TagKind, cas_check_ok, check_site, load_site, uscc_check_char
from hazmon.regulator.gb18218 import grade
from hazmon.regulator.sitecheck import load_graded_site

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


def test_a_nul_character_the_database_cannot_store_is_refused_with_its_path(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["tags"][2]["name"] = "level\x00"
        doc["site"]["name"] = "\x00"

    problems = [str(p) for p in check_site(_with(tmp_path, "nul.yaml", edit))]
    assert problems == ["site.name: contains a NUL character", "tags[2].name: contains a NUL character"]


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


def _with(tmp_path: Path, name: str, edit: Any) -> Path:
    doc = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    edit(doc)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def test_demo_unified_social_credit_code_passes_gb32100_and_a_typo_fails(tmp_path: Path) -> None:
    assert load_site(DEMO).enterprise.uscc == "91320500MA1XK7Q211"
    assert uscc_check_char("91320500MA1XK7Q21") == "1"

    def typo(doc: dict[str, Any]) -> None:
        doc["enterprise"]["uscc"] = "91320500MA1XK7Q21P"  # the old demo code: right shape, wrong check character

    problems = [str(p) for p in check_site(_with(tmp_path, "uscc.yaml", typo))]
    assert any(p.startswith("enterprise.uscc:") and "check character" in p for p in problems), problems


def test_cas_check_digit_is_verified_with_the_path(tmp_path: Path) -> None:
    assert cas_check_ok("7664-41-7") and not cas_check_ok("7664-41-8")

    def typo(doc: dict[str, Any]) -> None:
        doc["installations"][1]["chemicals"][0]["cas"] = "7664-41-8"

    problems = [str(p) for p in check_site(_with(tmp_path, "cas.yaml", typo))]
    assert any(p.startswith("installations[1].chemicals[0].cas:") and "check digit" in p for p in problems)


def _chinese(doc: dict[str, Any]) -> None:
    names = {"liquefied petroleum gas": "液化石油气", "ammonia": "氨", "methanol": "甲醇", "propylene": "丙烯"}
    for inst in doc["installations"]:
        for chem in inst["chemicals"]:
            chem["name"] = names[chem["name"]]
    for eq in doc["equipment"]:
        if eq.get("chemical"):
            eq["chemical"] = names[eq["chemical"]]


def test_chinese_names_grade_like_english_ones(tmp_path: Path) -> None:
    english = {i.id: grade(i) for i in load_site(DEMO).installations}
    path = _with(tmp_path, "zh.yaml", _chinese)
    site, _warnings = load_graded_site(path)
    chinese = {i.id: grade(i) for i in site.installations}
    assert {k: (g.r_exact, g.level) for k, g in chinese.items()} == {
        k: (g.r_exact, g.level) for k, g in english.items()
    }
    ok = subprocess.run([sys.executable, "-m", "hazmon", "site", "check", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_an_unknown_chemical_is_a_site_check_error_naming_its_path_not_a_load_traceback(tmp_path: Path) -> None:
    def unknown(doc: dict[str, Any]) -> None:
        doc["installations"][0]["chemicals"][1] = {"name": "丙烯", "quantity_t": 1000}  # propylene: not in Table 1

    path = _with(tmp_path, "unknown.yaml", unknown)
    assert check_site(path) == []  # the structure is fine; the grading is not
    bad = subprocess.run([sys.executable, "-m", "hazmon", "site", "check", str(path)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "installations[0].chemicals[1].name:" in bad.stderr and "Table 1" in bad.stderr
    load = subprocess.run(
        [sys.executable, "-m", "hazmon", "site", "load", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "HAZMON_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert load.returncode == 2 and "Traceback" not in load.stderr
    assert "installations[0].chemicals[1].name:" in load.stderr


def test_a_cas_number_and_a_name_that_disagree_are_an_error(tmp_path: Path) -> None:
    def clash(doc: dict[str, Any]) -> None:
        doc["installations"][1]["chemicals"][0]["cas"] = "7782-50-5"  # chlorine's CAS, named ammonia

    with pytest.raises(InvalidFile) as e:
        load_graded_site(_with(tmp_path, "clash.yaml", clash))
    (problem,) = e.value.problems
    assert problem.path == "installations[1].chemicals[0].cas" and "氯" in problem.message


def test_missing_required_monitoring_is_a_site_check_warning(tmp_path: Path) -> None:
    def no_sis(doc: dict[str, Any]) -> None:
        doc["tags"] = [t for t in doc["tags"] if t.get("signal") != "sis_trip" and not t["id"].startswith("V101.LT")]

    path = _with(tmp_path, "nosis.yaml", no_sis)
    r = subprocess.run([sys.executable, "-m", "hazmon", "site", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning: installations[1]: HI-02: no independent safety instrumented system (SIS)" in r.stderr
    assert "warning: equipment[0]: HI-01: no level tag (液位) — required for sphere V101" in r.stderr
    clean = subprocess.run([sys.executable, "-m", "hazmon", "site", "check", str(DEMO)], capture_output=True, text=True)
    assert "warning" not in clean.stderr


def test_an_unknown_hazard_category_is_an_error_naming_the_table(tmp_path: Path) -> None:
    def bad_category(doc: dict[str, Any]) -> None:
        doc["installations"][0]["chemicals"][1]["category"] = "W99"

    with pytest.raises(InvalidFile) as e:
        load_graded_site(_with(tmp_path, "category.yaml", bad_category))
    problems = {p.path: p.message for p in e.value.problems}
    assert "Table 2" in problems["installations[0].chemicals[1].category"]
    # propylene is not named in Table 1: without a valid category it cannot be graded at all
    assert "not named in GB 18218 Table 1" in problems["installations[0].chemicals[1].name"]
