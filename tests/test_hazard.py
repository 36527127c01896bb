"""GB 18218-2018 identification and grading a regulator can trust: Table 1 complete with CAS numbers,
chemicals found by CAS or any name, exact grading at the boundaries, `hazmon hazard grade` and
`GET /api/v1/installations`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from api_helpers import SITE, SITE_FILE, Tokens, demo_api
from hazmon.plant.site import CAS_RE, Chemical, Installation, InstallationKind, Site, cas_check_ok, load_site
from hazmon.regulator.chemicals import catalogue, find
from hazmon.regulator.gb18218 import GradingError, grade, identification
from hazmon.runtime import Runtime


def test_table1_holds_all_85_named_chemicals_with_valid_cas_numbers() -> None:
    rows = catalogue().table1()
    assert [c.no for c in rows] == list(range(1, 86))
    for c in rows:
        assert c.zh and c.en and c.q is not None and c.q > 0, c
        for cas in c.cas:
            assert CAS_RE.match(cas) and cas_check_ok(cas), f"no. {c.no} {c.zh}: bad CAS {cas}"
    # rows without a CAS number in the standard: coal gas, ammonium nitrate fertilizer, alkylaluminium
    assert {c.no for c in rows if not c.cas} == {13, 45, 74}
    spot = {c.no: (c.cas[0] if c.cas else None, c.q) for c in rows}
    assert spot[1] == ("7664-41-7", 10) and spot[6] == ("75-44-5", Fraction(3, 10))
    assert spot[30] == ("624-83-9", Fraction(3, 4)) and spot[52] == ("68476-85-7", 50)
    assert spot[65] == ("67-56-1", 500) and spot[83] == ("75-20-7", 100) and spot[46] == ("7757-79-1", 1000)
    # every name and alias leads back to its own row (no alias shadows another chemical)
    for c in rows:
        for name in (c.zh, c.en):
            hit = find(name, None).chemical
            assert hit is not None and (hit.no == c.no or hit.cas == c.cas), (name, c.no)


@pytest.mark.parametrize(
    ("name", "cas", "no"),
    [
        ("氨", "7664-41-7", 1),
        ("液氨", None, 1),
        ("Ammonia", None, 1),
        ("氯", None, 12),
        ("液化石油气", None, 52),
        ("LPG", None, 52),
        ("whatever the operator calls it", "74-98-6", 52),  # propane's CAS: part of LPG (no. 52)
        ("甲烷，天然气", None, 49),
        ("天然气", "8006-14-2", 49),
        ("1，3-丁二烯", None, 47),  # full-width comma as typed in Chinese
        ("1,3-butadiene", None, 47),
        ("光气", None, 6),
        ("硝化纤维素（含乙醇≥25%）", "9004-70-0", 39),  # a shared CAS settled by the name
    ],
)
def test_chemicals_are_found_by_cas_then_by_any_name(name: str, cas: str | None, no: int) -> None:
    found = find(name, cas)
    assert found.problem is None and found.chemical is not None and found.chemical.no == no


def test_a_shared_cas_without_a_name_is_ambiguous_not_guessed() -> None:
    found = find("nitrocotton", "9004-70-0")
    assert found.chemical is None and found.problem is not None and "critical_quantity_t" in found.problem


def _inst(people: int, *chems: tuple[str, float]) -> Installation:
    return Installation(
        id="U1",
        name="unit",
        kind=InstallationKind.STORAGE,
        people_within_500m=people,
        chemicals=[Chemical(name=n, quantity_t=q) for n, q in chems],
    )


def test_exact_at_the_boundaries_no_float_drift_decides_a_grade() -> None:
    # 0.2 + 0.7 + 0.1 of methanol's Q: S is exactly 1 (floats give 0.9999999999999999)
    s1 = grade(_inst(10, ("methanol", 100), ("甲醇", 350), ("methyl alcohol", 50)))
    assert 100 / 500 + 350 / 500 + 50 / 500 < 1  # what a float sum would have decided
    assert s1.s_exact == 1 and s1.is_major and s1.level == 4
    # phosgene (Q 0.3 t, β 20), 10 people (α 1): R = 20 · 0.75 / 0.3 = 50 exactly -> level 2, not 3
    r50 = grade(_inst(10, ("phosgene", 0.16), ("光气", 0.59)))
    assert 20 * (0.16 / 0.3) + 20 * (0.59 / 0.3) < 50
    assert r50.r_exact == 50 and r50.level == 2
    r100 = grade(_inst(10, ("phosgene", 0.05), ("碳酰氯", 1.45)))
    assert r100.r_exact == 100 and r100.level == 1
    # one kilogram less: level 3 / level 2
    assert grade(_inst(10, ("phosgene", 0.16), ("phosgene", 0.589))).level == 3
    # α 1.2 (30 people) on methanol: R = 1.2 · 25/3 = 10 exactly at 12500/3 t is not a decimal; use β 1.5 (W5.1)
    r10 = grade(
        Installation(
            id="U2",
            name="unit",
            kind=InstallationKind.STORAGE,
            people_within_500m=30,
            chemicals=[
                Chemical(name="solvent X", quantity_t=55.5, category="W5.1"),
                Chemical(name="solvent Y", quantity_t=0.05, category="W5.1"),
            ],
        )
    )
    # S = 55.55 / 10 = 5.555; R = 1.2 · 1.5 · 5.555 = 9.999 -> level 4
    assert r10.r_exact == Fraction("9.999") and r10.level == 4


def test_contributions_and_sources_are_reported() -> None:
    g = grade(_inst(120, ("液化石油气", 1700), ("propane", 50)))
    assert [c.named.no if c.named else None for c in g.contributions] == [52, 52]
    assert g.contributions[0].beta == Fraction(3, 2) and g.contributions[0].beta_source == "Table 4 W2"
    assert g.alpha_exact == 2 and g.s_exact == 35 and g.r_exact == 105 and g.level == 1


def test_grading_an_unidentified_chemical_raises_with_the_chemical() -> None:
    with pytest.raises(GradingError) as e:
        grade(_inst(10, ("unobtainium", 5)))
    assert e.value.problems[0].path == "U1.chemicals[0].name"


def test_cli_hazard_grade_prints_s_r_alpha_level_and_contributions() -> None:
    text = subprocess.run(
        [sys.executable, "-m", "hazmon", "hazard", "grade", str(SITE_FILE)], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "HI-02 Refrigerated ammonia storage: S = 600, α = 1.2 (45 people within 500 m), R = 1440 → level 1 (一级)"
        in text
    )
    assert "ammonia = Table 1 no. 1 氨: q 6000 t / Q 10 t (Table 1 no. 1) × β 2 (Table 3) = βq/Q 1200" in text
    out = subprocess.run(
        [sys.executable, "-m", "hazmon", "hazard", "grade", str(SITE_FILE), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    grades = {i["id"]: i for i in json.loads(out)}
    h1 = grades["HI-01"]["gb18218"]
    assert (h1["s"], h1["alpha"], h1["r"], h1["grade"]) == (134.0, 2.0, 402.0, 1)
    assert [c["beta_q_over_Q"] for c in h1["chemicals"]] == [51.0, 150.0]
    assert grades["HI-03"]["gb18218"]["grade"] == 3 and grades["HI-03"]["monitoring_missing"] == []


@pytest.fixture
async def env(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Tokens, httpx.AsyncClient]]:
    async with demo_api(pg_url, tmp_path) as (rt, tokens, client):
        yield rt, tokens, client


async def test_api_installations_give_the_same_grades(env: tuple[Runtime, Tokens, httpx.AsyncClient]) -> None:
    _, tokens, client = env
    headers = {"Authorization": f"Bearer {tokens.regulator}"}
    r = await client.get("/api/v1/installations", headers=headers)
    assert r.status_code == 200, r.text
    cli = (
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hazmon", "hazard", "grade", str(SITE_FILE), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    api = {i["id"]: i["gb18218"] for i in r.json()}
    assert api == {i["id"]: i["gb18218"] for i in json.loads(cli)}
    one = await client.get("/api/v1/installations/HI-02", headers=headers)
    assert one.status_code == 200 and one.json()["site"] == SITE and one.json()["gb18218"]["r"] == 1440.0
    required = {m["requirement"] for m in one.json()["monitoring_required"]}
    assert {"level", "temperature", "pressure", "gas.toxic", "sis", "emergency_cutoff", "retention"} <= required
    assert (await client.get("/api/v1/installations/HI-99", headers=headers)).status_code == 404
    other = {"Authorization": f"Bearer {tokens.regulator_other}"}
    assert (await client.get("/api/v1/installations", headers=other)).json() == []
    assert (await client.get("/api/v1/installations/HI-02", headers=other)).status_code == 403
    assert (await client.get("/api/v1/installations")).status_code == 401


@pytest.mark.parametrize(
    ("name", "cas", "path", "says"),
    [
        ("盐酸", "7647-01-0", "cas-named", "by its CAS number 7647-01-0"),  # hydrochloric acid: anhydrous HCl's CAS
        ("盐酸", "7647-01-0", "scoped", "not hydrochloric acid"),
        ("氨", "1336-21-6", "cas", "is not that row's (7664-41-7)"),  # ammonia solution named as ammonia
        ("硝酸", None, "scoped", "nitric acid above 70%"),
    ],
)
def test_identifications_to_confirm_are_warnings(name: str, cas: str | None, path: str, says: str) -> None:
    site = _site_with(Chemical(name=name, cas=cas, quantity_t=10))
    errors, warnings = identification(site)
    assert errors == []
    field = "cas" if path == "cas" else "name"
    assert any(w.path == f"installations[0].chemicals[0].{field}" and says in w.message for w in warnings), warnings
    # stating Q settles it: no warning
    site = _site_with(Chemical(name=name, cas=cas, quantity_t=10, critical_quantity_t=500, category="J5"))
    assert identification(site) == ([], [])


def _site_with(chem: Chemical) -> Site:
    doc = load_site(SITE_FILE).model_dump(mode="json", by_alias=True)
    doc["installations"] = [{**doc["installations"][0], "chemicals": [chem.model_dump(mode="json")]}]
    doc["equipment"] = [e for e in doc["equipment"] if e["installation"] == doc["installations"][0]["id"]]
    keep = {e["id"] for e in doc["equipment"]}
    doc["tags"] = [t for t in doc["tags"] if t["equipment"] in keep]
    return Site.model_validate(doc)
