"""GB 18218-2018 Table 1 as data (`gb18218_table1.yaml`): the 85 named chemicals, looked up by CAS number
first, then by any of their names (Chinese or English, aliases included).

Names are compared after Unicode NFKC normalisation (full-width ``（），`` become ``(),``), case
folding and whitespace collapsing, so ``液化石油气``, ``LPG`` and ``Liquefied Petroleum Gas`` are the
same chemical.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True, slots=True)
class NamedChemical:
    no: int  # row in Table 1; 0 for a chemical named only in Table 3 (carbon monoxide)
    zh: str
    en: str
    aliases: tuple[str, ...]
    cas: tuple[str, ...]
    q: Fraction | None  # critical quantity, tonnes (None: not in Table 1)
    beta: Fraction | None  # Table 3 β of a named toxic gas
    category: str | None  # the hazard category that sets β by Table 4, where unambiguous

    @property
    def label(self) -> str:
        return f"{self.zh} ({self.en})" if self.no == 0 else f"Table 1 no. {self.no} {self.zh} ({self.en})"


def normalise(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


@dataclass(frozen=True)
class Catalogue:
    chemicals: tuple[NamedChemical, ...]
    by_cas: dict[str, tuple[NamedChemical, ...]]
    by_name: dict[str, NamedChemical]

    def table1(self) -> list[NamedChemical]:
        return [c for c in self.chemicals if c.no]


def _entry(raw: dict[str, object], no: int) -> NamedChemical:
    def text_list(key: str) -> tuple[str, ...]:
        v = raw.get(key) or []
        assert isinstance(v, list)
        return tuple(str(x) for x in v)

    q = raw.get("q")
    beta = raw.get("beta")
    category = raw.get("category")
    return NamedChemical(
        no=no,
        zh=str(raw["zh"]),
        en=str(raw["en"]),
        aliases=text_list("aliases"),
        cas=text_list("cas"),
        q=None if q is None else Fraction(str(q)),
        beta=None if beta is None else Fraction(str(beta)),
        category=None if category is None else str(category),
    )


@cache
def catalogue() -> Catalogue:
    text = resources.files("hazmon.regulator").joinpath("gb18218_table1.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    chemicals = [_entry(raw, int(raw["no"])) for raw in doc["chemicals"]]
    chemicals += [_entry(raw, 0) for raw in doc.get("table3_only", [])]
    by_cas: dict[str, list[NamedChemical]] = {}
    by_name: dict[str, NamedChemical] = {}
    for c in chemicals:
        for cas in c.cas:
            by_cas.setdefault(cas, []).append(c)
        for name in (c.zh, c.en, *c.aliases):
            # a name shared by several rows (e.g. 甲醛 is no. 8's alias only) keeps its first row
            by_name.setdefault(normalise(name), c)
    return Catalogue(tuple(chemicals), {k: tuple(v) for k, v in by_cas.items()}, by_name)


@dataclass(frozen=True, slots=True)
class Found:
    chemical: NamedChemical | None
    by: str  # "cas", "name" or "" (not found)
    problem: str | None = None  # a contradiction between CAS and name, or an ambiguous CAS


def find(name: str, cas: str | None) -> Found:
    """The named chemical a site file means: by CAS first (a CAS shared by several rows is settled by
    the name), then by name. A CAS naming one chemical and a name naming another is a problem."""
    cat = catalogue()
    by_name = cat.by_name.get(normalise(name))
    if cas is not None and cas in cat.by_cas:
        rows = cat.by_cas[cas]
        if len(rows) == 1:
            hit = rows[0]
            if by_name is not None and by_name is not hit:
                return Found(hit, "cas", f"CAS {cas} is {hit.label}, but the name {name!r} is {by_name.label}")
            return Found(hit, "cas")
        if by_name is not None and by_name in rows:
            return Found(by_name, "cas")
        choices = "; ".join(f"no. {r.no} {r.zh} Q {r.q} t" for r in rows)
        return Found(
            None, "cas", f"CAS {cas} is shared by Table 1 rows {choices}: name the row or give critical_quantity_t"
        )
    if by_name is not None:
        return Found(by_name, "name")
    return Found(None, "")
