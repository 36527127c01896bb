"""GB 18218-2018: identifying and grading a major hazard installation.

S = Σ qᵢ/Qᵢ (a major hazard installation when S >= 1); R = α · Σ(βᵢ · qᵢ/Qᵢ); level 1 (R >= 100) is
the highest, level 4 (R < 10) the lowest. Everything is computed in exact fractions: the quantities a
site file states are taken as the decimals written there, so no float rounding decides whether S
reaches 1 or R reaches 10, 50 or 100.

Where each number comes from (see docs/regulator.md):
- Q: the site file's ``critical_quantity_t``; else Table 1 (the chemical found by CAS, then by
  name: ``chemicals.py``); else Table 2 by the site file's ``category``. A chemical found by none of
  these cannot be graded: :func:`identification` reports it with its path.
- β: the site file's ``beta``; else Table 3 (named toxic gases); else Table 4 by the site file's
  ``category``, else by the category Table 1's data records (flammable gases W2, explosives W1.1,
  flammable liquids of category 1 W5.1); else 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hazmon.errors import Problem
from hazmon.plant.site import Chemical, Installation, Site
from hazmon.regulator.chemicals import NamedChemical, find, normalise

# Table 2: critical quantity by hazard category for chemicals not named in Table 1.
CATEGORY_QUANTITY_T: dict[str, Fraction] = {
    k: Fraction(v)
    for k, v in {
        "J1": "5", "J2": "50", "J3": "50", "J4": "50", "J5": "500",
        "W1.1": "1", "W1.2": "10", "W1.3": "50", "W2": "10", "W3": "150", "W4": "50",
        "W5.1": "10", "W5.2": "50", "W5.3": "1000", "W5.4": "5000",
        "W6.1": "10", "W7.1": "10", "W6.2": "50", "W7.2": "50", "W8": "50",
        "W9.1": "50", "W9.2": "200", "W10": "200", "W11": "200",
    }.items()
}  # fmt: skip

# Table 4: β by hazard category for everything Table 3 does not name (all other categories: 1).
CATEGORY_BETA: dict[str, Fraction] = {
    k: Fraction(v)
    for k, v in {
        "J1": "4", "J2": "1", "J3": "2", "J4": "2", "J5": "1",
        "W1.1": "2", "W1.2": "2", "W1.3": "2", "W2": "1.5", "W5.1": "1.5", "W6.1": "1.5", "W7.1": "1.5",
    }.items()
}  # fmt: skip

LEVEL_BOUNDS = ((Fraction(100), 1), (Fraction(50), 2), (Fraction(10), 3))
LEVEL_NAMES_ZH = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}


class GradingError(ValueError):
    """An installation holds a chemical that cannot be identified; ``problems`` say which."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def exact(x: float) -> Fraction:
    """The decimal a file states (``0.3`` is 3/10, not the binary float nearest to it)."""
    return Fraction(str(x))


def alpha(people_within_500m: int) -> Fraction:
    if people_within_500m >= 100:
        return Fraction(2)
    if people_within_500m >= 50:
        return Fraction(3, 2)
    if people_within_500m >= 30:
        return Fraction(6, 5)
    if people_within_500m >= 1:
        return Fraction(1)
    return Fraction(1, 2)


@dataclass(frozen=True, slots=True)
class Contribution:
    """One chemical's part in an installation's grade."""

    name: str
    cas: str | None
    named: NamedChemical | None  # the Table 1 (or Table 3) chemical it was identified as
    found_by: str  # "cas", "name" or "" (not a named chemical)
    quantity_t: Fraction
    critical_t: Fraction
    q_source: str  # "site file", "Table 1 no. N", "Table 2 W2"
    beta: Fraction
    beta_source: str  # "site file", "Table 3", "Table 4 W2", "default"

    @property
    def ratio(self) -> Fraction:  # q/Q
        return self.quantity_t / self.critical_t

    @property
    def weighted(self) -> Fraction:  # βq/Q
        return self.beta * self.ratio

    def as_dict(self) -> dict[str, Any]:
        n = self.named
        return {
            "name": self.name,
            "cas": self.cas,
            "table1_no": n.no if n is not None and n.no else None,
            "standard_name": None if n is None else {"zh": n.zh, "en": n.en},
            "found_by": self.found_by or None,
            "quantity_t": float(self.quantity_t),
            "critical_quantity_t": float(self.critical_t),
            "critical_quantity_source": self.q_source,
            "beta": float(self.beta),
            "beta_source": self.beta_source,
            "q_over_Q": round(float(self.ratio), 4),
            "beta_q_over_Q": round(float(self.weighted), 4),
        }


@dataclass(frozen=True, slots=True)
class Grading:
    s_exact: Fraction  # Σ q/Q
    r_exact: Fraction  # α · Σ βq/Q
    alpha_exact: Fraction
    level: int | None  # 1 (highest) .. 4; None when not a major hazard installation
    contributions: tuple[Contribution, ...] = field(default=())

    @property
    def s(self) -> float:
        return float(self.s_exact)

    @property
    def r(self) -> float:
        return float(self.r_exact)

    @property
    def alpha(self) -> float:
        return float(self.alpha_exact)

    @property
    def is_major(self) -> bool:
        return self.s_exact >= 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "major_hazard": self.is_major,
            "s": round(self.s, 4),
            "alpha": self.alpha,
            "r": round(self.r, 2),
            "grade": self.level,
            "grade_zh": None if self.level is None else LEVEL_NAMES_ZH[self.level],
            "chemicals": [c.as_dict() for c in self.contributions],
        }


def level_of(r: Fraction) -> int:
    for bound, level in LEVEL_BOUNDS:
        if r >= bound:
            return level
    return 4


# Table 1 rows that cover one form or concentration only: a chemical found there by its CAS number
# or a generic name may be another form (hydrochloric acid has anhydrous hydrogen chloride's CAS).
SCOPED_ROWS: dict[int, str] = {
    8: "formaldehyde above 90% only",
    11: "anhydrous hydrogen chloride only, not hydrochloric acid",
    37: "dry nitrocellulose, or wetted with less than 25% water or alcohol",
    38: "unmodified nitrocellulose, or plasticized with less than 18% plasticizer",
    39: "nitrocellulose wetted with at least 25% alcohol",
    40: "nitrocellulose with at most 12.6% nitrogen",
    41: "nitrocellulose wetted with at least 25% water",
    42: "nitrocellulose solution, at most 12.6% nitrogen and 55% nitrocellulose",
    43: "ammonium nitrate with more than 0.2% combustible substances",
    44: "ammonium nitrate with at most 0.2% combustible substances",
    45: "ammonium nitrate fertilizer with at most 0.4% combustible substances",
    56: "compressed or liquefied oxygen",
    72: "methyl ethyl ketone peroxide, available oxygen above 10% up to 10.7%, at least 48% type A diluent",
    81: "nitric acid above 70%, other than red fuming",
}


def _identification_notes(chem: Chemical, named: NamedChemical, by: str) -> list[tuple[str, str]]:
    """Warnings for a Table 1 identification a person should confirm."""
    notes = []
    own_names = {normalise(n) for n in (named.zh, named.en, *named.aliases)}
    if by == "cas" and normalise(chem.name) not in own_names:
        notes.append(("name", f"{chem.name!r} is graded as {named.label} by its CAS number {chem.cas}"))
    if by == "name" and chem.cas is not None and named.cas and chem.cas not in named.cas:
        notes.append(
            (
                "cas",
                f"{chem.name!r} is graded as {named.label} by its name, but CAS {chem.cas} is not that row's "
                f"({', '.join(named.cas)}): if it is another substance, give its critical_quantity_t and category",
            )
        )
    if named.no in SCOPED_ROWS:
        notes.append(
            (
                "name",
                f"{named.label} covers {SCOPED_ROWS[named.no]}: if {chem.name!r} is another form or concentration, "
                "give its critical_quantity_t and category",
            )
        )
    return notes


def contribution(chem: Chemical) -> tuple[Contribution | None, list[tuple[str, str]], list[tuple[str, str]]]:
    """One chemical identified: its contribution, or None; and (field, message) errors and warnings."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    found = find(chem.name, chem.cas)
    named = found.chemical
    if found.problem is not None:
        errors.append(("cas" if chem.cas else "name", found.problem))
    if named is not None and named.no and found.problem is None and chem.critical_quantity_t is None:
        warnings += [(f, m) for f, m in _identification_notes(chem, named, found.by)]
    category = chem.category
    if category is not None and category not in CATEGORY_QUANTITY_T:
        errors.append(
            ("category", f"{category!r} is not a GB 18218 Table 2 category ({', '.join(CATEGORY_QUANTITY_T)})")
        )
        category = None
    critical: Fraction | None
    if chem.critical_quantity_t is not None:
        critical, q_source = exact(chem.critical_quantity_t), "site file"
        # a Q that differs from Table 1's is worth a word, unless the file says it is another form
        doubtful = named is not None and bool(_identification_notes(chem, named, found.by))
        if named is not None and named.q is not None and named.q != critical and not doubtful:
            warnings.append(
                ("critical_quantity_t", f"{named.label} has Q = {named.q} t; the site file's {critical} t is used")
            )
    elif named is not None and named.q is not None:
        critical, q_source = named.q, f"Table 1 no. {named.no}"
    elif category is not None:
        critical, q_source = CATEGORY_QUANTITY_T[category], f"Table 2 {category}"
    else:
        critical, q_source = None, ""
        if found.problem is None:
            where = f" (CAS {chem.cas})" if chem.cas else ""
            errors.append(
                (
                    "name",
                    f"{chem.name!r}{where} is not named in GB 18218 Table 1 by CAS or name: "
                    "give its hazard category (category: W2, J1 …) or critical_quantity_t",
                )
            )
    if chem.beta is not None:
        beta, beta_source = exact(chem.beta), "site file"
    elif named is not None and named.beta is not None:
        beta, beta_source = named.beta, "Table 3"
    elif category is not None:
        beta, beta_source = CATEGORY_BETA.get(category, Fraction(1)), f"Table 4 {category}"
    elif named is not None and named.category is not None:
        beta, beta_source = CATEGORY_BETA.get(named.category, Fraction(1)), f"Table 4 {named.category}"
    else:
        beta, beta_source = Fraction(1), "default"
    if critical is None or errors:
        return None, errors, warnings
    return (
        Contribution(
            name=chem.name,
            cas=chem.cas,
            named=named,
            found_by=found.by if named is not None else "",
            quantity_t=exact(chem.quantity_t),
            critical_t=critical,
            q_source=q_source,
            beta=beta,
            beta_source=beta_source,
        ),
        errors,
        warnings,
    )


def identification(site: Site) -> tuple[list[Problem], list[Problem]]:
    """Errors (a chemical that cannot be graded) and warnings, each with its path in the site file."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for i, inst in enumerate(site.installations):
        for j, chem in enumerate(inst.chemicals):
            _, errs, warns = contribution(chem)
            base = f"installations[{i}].chemicals[{j}]"
            errors += [Problem(f"{base}.{f}", m) for f, m in errs]
            warnings += [Problem(f"{base}.{f}", m) for f, m in warns]
    return errors, warnings


def grade(installation: Installation) -> Grading:
    contributions = []
    problems: list[Problem] = []
    for j, chem in enumerate(installation.chemicals):
        c, errs, _ = contribution(chem)
        problems += [Problem(f"{installation.id}.chemicals[{j}].{f}", m) for f, m in errs]
        if c is not None:
            contributions.append(c)
    if problems:
        raise GradingError(problems)
    s = sum((c.ratio for c in contributions), Fraction(0))
    a = alpha(installation.people_within_500m)
    r = a * sum((c.weighted for c in contributions), Fraction(0))
    return Grading(s, r, a, level_of(r) if s >= 1 else None, tuple(contributions))
