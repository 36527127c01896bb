"""GB 18218-2018: identifying and grading a major hazard installation.

R = α · Σ(βᵢ · qᵢ / Qᵢ); level 1 (R >= 100) is the highest, level 4 (R < 10) the lowest.
Tables transcribed from the standard (see shared/domain/gb18218.md); a site file may state Q and β
explicitly for chemicals the tables here do not name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hazmon.plant.site import Chemical, Installation

# Table 1 (selection): critical quantity Q in tonnes for named chemicals.
CRITICAL_QUANTITY_T: dict[str, float] = {
    "phosgene": 0.3,
    "methyl isocyanate": 0.75,
    "hydrogen cyanide": 1,
    "hydrogen fluoride": 1,
    "acetylene": 1,
    "chlorine": 5,
    "hydrogen sulfide": 5,
    "hydrogen": 5,
    "1,3-butadiene": 5,
    "formaldehyde": 5,
    "ammonia": 10,
    "ethylene oxide": 10,
    "propylene oxide": 10,
    "methyl bromide": 10,
    "diethyl ether": 10,
    "sulfur dioxide": 20,
    "hydrogen chloride": 20,
    "coal gas": 20,
    "liquefied petroleum gas": 50,
    "methane": 50,
    "natural gas": 50,
    "ethylene": 50,
    "vinyl chloride": 50,
    "benzene": 50,
    "acrylonitrile": 50,
    "carbon disulfide": 50,
    "calcium carbide": 100,
    "gasoline": 200,
    "oxygen": 200,
    "methanol": 500,
    "ethanol": 500,
    "toluene": 500,
    "acetone": 500,
    "styrene": 500,
}

# Table 2: critical quantity by hazard category for chemicals not named in Table 1.
CATEGORY_QUANTITY_T: dict[str, float] = {
    "J1": 5, "J2": 50, "J3": 50, "J4": 50, "J5": 500,
    "W1.1": 1, "W1.2": 10, "W1.3": 50, "W2": 10, "W3": 150, "W4": 50,
    "W5.1": 10, "W5.2": 50, "W5.3": 1000, "W5.4": 5000,
    "W6.1": 10, "W7.1": 10, "W6.2": 50, "W7.2": 50, "W8": 50,
    "W9.1": 50, "W9.2": 200, "W10": 200, "W11": 200,
}  # fmt: skip

# Table 3: β for named toxic gases.
TOXIC_BETA: dict[str, float] = {
    "carbon monoxide": 2, "sulfur dioxide": 2, "ammonia": 2, "ethylene oxide": 2,
    "hydrogen chloride": 3, "methyl bromide": 3,
    "chlorine": 4,
    "hydrogen sulfide": 5, "hydrogen fluoride": 5,
    "nitrogen dioxide": 10, "hydrogen cyanide": 10,
    "phosgene": 20, "phosphine": 20, "methyl isocyanate": 20,
}  # fmt: skip

# Table 4: β by hazard category for everything else (all other categories: 1).
CATEGORY_BETA: dict[str, float] = {
    "J1": 4, "J2": 1, "J3": 2, "J4": 2, "J5": 1,
    "W1.1": 2, "W1.2": 2, "W1.3": 2, "W2": 1.5, "W5.1": 1.5, "W6.1": 1.5, "W7.1": 1.5,
}  # fmt: skip

# Flammable gases named in Table 1 whose category is W2 (β 1.5 by Table 4).
_FLAMMABLE_GASES = {
    "liquefied petroleum gas", "methane", "natural gas", "ethylene", "hydrogen", "acetylene",
    "1,3-butadiene", "vinyl chloride", "coal gas",
}  # fmt: skip


class GradingError(ValueError):
    pass


def alpha(people_within_500m: int) -> float:
    if people_within_500m >= 100:
        return 2.0
    if people_within_500m >= 50:
        return 1.5
    if people_within_500m >= 30:
        return 1.2
    if people_within_500m >= 1:
        return 1.0
    return 0.5


def critical_quantity(chem: Chemical) -> float:
    if chem.critical_quantity_t is not None:
        return chem.critical_quantity_t
    name = chem.name.strip().lower()
    if name in CRITICAL_QUANTITY_T:
        return CRITICAL_QUANTITY_T[name]
    if chem.category is not None and chem.category in CATEGORY_QUANTITY_T:
        return CATEGORY_QUANTITY_T[chem.category]
    raise GradingError(f"{chem.name}: not named in GB 18218 Table 1; give category or critical_quantity_t")


def beta(chem: Chemical) -> float:
    if chem.beta is not None:
        return chem.beta
    name = chem.name.strip().lower()
    if name in TOXIC_BETA:
        return TOXIC_BETA[name]
    if chem.category is not None:
        return CATEGORY_BETA.get(chem.category, 1.0)
    if name in _FLAMMABLE_GASES:
        return 1.5
    return 1.0


@dataclass(frozen=True, slots=True)
class Grading:
    s: float  # Σ q/Q: the installation is a major hazard installation when S >= 1
    r: float
    level: int | None  # 1 (highest) .. 4; None when not a major hazard installation

    @property
    def is_major(self) -> bool:
        return self.s >= 1.0


def grade(installation: Installation) -> Grading:
    s = 0.0
    weighted = 0.0
    for chem in installation.chemicals:
        ratio = chem.quantity_t / critical_quantity(chem)
        s += ratio
        weighted += beta(chem) * ratio
    r = alpha(installation.people_within_500m) * weighted
    if s < 1.0:
        return Grading(s, r, None)
    level = 1 if r >= 100 else 2 if r >= 50 else 3 if r >= 10 else 4
    return Grading(s, r, level)
