"""Alarm rule sets: the YAML model, selectors and precedence, validation, and compilation to arrays.

A rule file holds ``rules:``, each with a selector (``select:``) and the conditions it sets:
``limits`` (HH, H, L, LL), ``rate_of_change`` (rising, falling), ``state`` (a discrete alarm
state) and ``quality`` (bad, out_of_range, frozen, stale). Format and precedence: docs/alarms.md.

Precedence: for every condition *field* of a tag (say ``limits.HH.on_delay_s``), the most specific
matching rule that sets the field wins. Specificity, highest first: ``tags`` (ids) > ``match``
(glob on the id) > ``equipment`` > ``substance`` > ``gas_class`` / ``signal`` > ``kind`` > an
empty selector. Among equals, a selector with more criteria wins, then the later rule (later
file on the command line, later in its file).

``compile_rules`` turns the resolved rules into arrays: a row per tag key, a column per condition
(:data:`COLUMNS`); NaN or -1 marks a disabled entry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hazmon.alarms.alarm import Priority
from hazmon.errors import InvalidFile, Problem, problems_from_validation, read_yaml
from hazmon.plant.site import GasClass, Ident, Signal, Site, Tag, TagKind

# --- columns of the compiled arrays -------------------------------------------------------------
COLUMNS: tuple[str, ...] = (
    "HH",
    "H",
    "L",
    "LL",
    "ROC_UP",
    "ROC_DOWN",
    "STATE",
    "BAD",
    "OUT_OF_RANGE",
    "FROZEN",
    "STALE",
)
HH, H, L, LL, ROC_UP, ROC_DOWN, STATE, BAD, OUT_OF_RANGE, FROZEN, STALE = range(len(COLUMNS))
K = len(COLUMNS)
N_LIMIT = 7  # columns of CompiledRules.limit: HH, H, L, LL, ROC_UP, ROC_DOWN (units/min), STATE
N_DEADBAND = 6  # columns of CompiledRules.deadband: HH..ROC_DOWN

DEFAULT_PRIORITY: dict[str, Priority] = {
    "HH": Priority.HIGH,
    "H": Priority.MEDIUM,
    "L": Priority.MEDIUM,
    "LL": Priority.HIGH,
    "ROC_UP": Priority.MEDIUM,
    "ROC_DOWN": Priority.MEDIUM,
    "STATE": Priority.HIGH,
    "BAD": Priority.LOW,
    "OUT_OF_RANGE": Priority.LOW,
    "FROZEN": Priority.LOW,
    "STALE": Priority.MEDIUM,
}
_ANALOG_ONLY = {"HH", "H", "L", "LL", "ROC_UP", "ROC_DOWN", "OUT_OF_RANGE", "FROZEN", "roc.window"}
_DISCRETE_ONLY = {"STATE"}


# --- the YAML model -----------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Common(_Model):
    enabled: bool = True
    priority: Priority | None = None
    on_delay_s: float | None = Field(default=None, ge=0, description="condition must hold this long")
    off_delay_s: float | None = Field(default=None, ge=0, description="condition must stay clear this long")
    latch: bool | None = Field(default=None, description="stay active until an operator resets")
    realarm_s: float | None = Field(default=None, ge=0, description="annunciate again if unacknowledged; 0: off")


class LimitSpec(_Common):
    value: float | None = Field(default=None, description="absolute limit, engineering units")
    percent: float | None = Field(default=None, description="limit in percent of the instrument range")
    deadband: float | None = Field(default=None, ge=0, description="engineering units")
    deadband_percent: float | None = Field(default=None, ge=0, le=100, description="percent of the span")

    @model_validator(mode="after")
    def _one_of(self) -> LimitSpec:
        if self.value is not None and self.percent is not None:
            raise ValueError("give value or percent, not both")
        if self.deadband is not None and self.deadband_percent is not None:
            raise ValueError("give deadband or deadband_percent, not both")
        return self


class Limits(_Model):
    HH: LimitSpec | None = None
    H: LimitSpec | None = None
    L: LimitSpec | None = None
    LL: LimitSpec | None = None


class RocSpec(_Common):
    per_min: float | None = Field(default=None, gt=0, description="engineering units per minute")
    deadband: float | None = Field(default=None, ge=0, description="units per minute")


class RateOfChange(_Model):
    window_s: float | None = Field(default=None, gt=0, description="rate measured over at least this span")
    rising: RocSpec | None = None
    falling: RocSpec | None = None


class StateSpec(_Common):
    alarm_when: int | str | None = Field(default=None, description="state value or state name that alarms")
    name: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]*$", description="condition: state.NAME")


class BadSpec(_Common):
    pass


class RangeSpec(_Common):
    margin_percent: float | None = Field(default=None, ge=0, le=100, description="tolerance beyond the range")


class FrozenSpec(_Common):
    after_s: float | None = Field(default=None, gt=0)
    tolerance: float | None = Field(default=None, ge=0, description="changes up to this count as unchanged")


class StaleSpec(_Common):
    after_s: float | None = Field(default=None, gt=0)


class QualityRules(_Model):
    bad: BadSpec | None = None
    out_of_range: RangeSpec | None = None
    frozen: FrozenSpec | None = None
    stale: StaleSpec | None = None


class Selector(_Model):
    tags: list[Ident] | None = Field(default=None, min_length=1)
    match: str | None = Field(default=None, min_length=1, description="glob on the tag id, e.g. 'V10?.LT'")
    equipment: list[Ident] | None = Field(default=None, min_length=1)
    kind: TagKind | None = None
    gas_class: GasClass | None = None
    substance: str | None = Field(default=None, min_length=1, description="case-insensitive")
    signal: Signal | None = None


class Text(_Model):
    """A text in Chinese and/or English."""

    zh: str | None = Field(default=None, min_length=1)
    en: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _some(self) -> Text:
        if self.zh is None and self.en is None:
            raise ValueError("give zh, en or both")
        return self


class AlarmResponse(_Model):
    """ISA-18.2 alarm rationalization: what an operator needs at the alarm, shown in the console."""

    cause: Text | None = None
    consequence: Text | None = None
    action: Text = Field(description="what the operator does")
    respond_within_min: float | None = Field(default=None, gt=0, description="time to respond, minutes")


ConditionKey = Literal["HH", "H", "L", "LL", "ROC_UP", "ROC_DOWN", "STATE", "BAD", "OUT_OF_RANGE", "FROZEN", "STALE"]


class Rule(_Model):
    name: str | None = None
    select: Selector
    limits: Limits | None = None
    rate_of_change: RateOfChange | None = None
    state: StateSpec | None = None
    quality: QualityRules | None = None
    response: dict[ConditionKey, AlarmResponse] | None = Field(
        default=None, description="alarm response per condition (HH, H, ..., STATE, BAD ...)"
    )


class RuleFile(_Model):
    rules: list[Rule] = Field(min_length=1)


# --- rule sets and precedence -------------------------------------------------------------------
_RANK = {"tags": 6, "match": 5, "equipment": 4, "substance": 3, "gas_class": 2, "signal": 2, "kind": 1}

# condition key -> (path inside a rule, attribute chain)
_CONDITIONS: dict[str, tuple[str, ...]] = {
    "HH": ("limits", "HH"),
    "H": ("limits", "H"),
    "L": ("limits", "L"),
    "LL": ("limits", "LL"),
    "ROC_UP": ("rate_of_change", "rising"),
    "ROC_DOWN": ("rate_of_change", "falling"),
    "STATE": ("state",),
    "BAD": ("quality", "bad"),
    "OUT_OF_RANGE": ("quality", "out_of_range"),
    "FROZEN": ("quality", "frozen"),
    "STALE": ("quality", "stale"),
}
# merged "fields": alternatives that count as one field
_ALIASES = {"value": "setpoint", "percent": "setpoint", "deadband_percent": "deadband"}


@dataclass(frozen=True)
class RuleRef:
    source: str
    index: int
    rule: Rule
    order: int  # global position over all files

    @property
    def path(self) -> str:
        return f"{self.source}:rules[{self.index}]"

    @property
    def specificity(self) -> tuple[int, int, int]:
        present = [k for k in _RANK if getattr(self.rule.select, k) is not None]
        return (max((_RANK[k] for k in present), default=0), len(present), self.order)


@dataclass
class RuleSet:
    rules: list[RuleRef]

    @property
    def sources(self) -> list[str]:
        return sorted({r.source for r in self.rules})


def _condition_spec(rule: Rule, key: str) -> Any:
    obj: Any = rule
    for attr in _CONDITIONS[key]:
        obj = getattr(obj, attr)
        if obj is None:
            return None
    return obj


def _spec_fields(spec: BaseModel) -> dict[str, tuple[str, Any]]:
    """Fields set explicitly in a spec: merged-field name -> (yaml field name, value)."""
    out: dict[str, tuple[str, Any]] = {}
    for name in spec.model_fields_set:
        value = getattr(spec, name)
        if value is None:
            continue
        out[_ALIASES.get(name, name)] = (name, value)
    return out


def _matches_group(sel: Selector, tag: Tag) -> bool:
    if sel.kind is not None and tag.kind is not sel.kind:
        return False
    if sel.gas_class is not None and (tag.gas is None or tag.gas.gas_class is not sel.gas_class):
        return False
    if sel.substance is not None and (tag.gas is None or tag.gas.substance.lower() != sel.substance.lower()):
        return False
    if sel.signal is not None and tag.signal is not sel.signal:
        return False
    return not (sel.equipment is not None and tag.equipment not in sel.equipment)


def _group_key(tag: Tag) -> tuple[Any, ...]:
    gas = (tag.gas.gas_class, tag.gas.substance.lower()) if tag.gas else (None, None)
    return (tag.kind, tag.equipment, *gas, tag.signal)


@dataclass
class _Resolved:
    """A tag's merged rule: condition key -> field -> (value, provenance path)."""

    fields: dict[str, dict[str, tuple[Any, str]]]


def _merge(refs: Sequence[RuleRef], discrete: bool) -> _Resolved:
    ordered = sorted(refs, key=lambda r: r.specificity, reverse=True)
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for key, chain in _CONDITIONS.items():
        if (key in _ANALOG_ONLY and discrete) or (key in _DISCRETE_ONLY and not discrete):
            continue
        merged: dict[str, tuple[Any, str]] = {}
        for ref in ordered:
            spec = _condition_spec(ref.rule, key)
            if spec is None:
                continue
            base = f"{ref.path}." + ".".join(chain)
            for fname, (yname, value) in _spec_fields(spec).items():
                if fname not in merged:
                    merged[fname] = (value, f"{base}.{yname}")
            merged.setdefault("_declared", (True, base))
        if merged:
            out[key] = merged
    if not discrete:
        for ref in ordered:
            roc = ref.rule.rate_of_change
            if roc is not None and roc.window_s is not None:
                out["roc.window"] = {"window_s": (roc.window_s, f"{ref.path}.rate_of_change.window_s")}
                break
    return _Resolved(out)


def _parse_file(path: Path | str, order0: int) -> tuple[list[RuleRef], list[Problem]]:
    source = str(path)
    try:
        data = read_yaml(path)
    except InvalidFile as e:
        return [], [Problem(f"{source}:{p.path}" if p.path else source, p.message) for p in e.problems]
    if not isinstance(data, dict):
        return [], [Problem(source, "a rule file must be a mapping with 'rules:'")]
    try:
        rf = RuleFile.model_validate(data)
    except ValidationError as e:
        return [], [Problem(f"{source}:{p.path}", p.message) for p in problems_from_validation(e)]
    return [RuleRef(source, i, r, order0 + i) for i, r in enumerate(rf.rules)], []


def _reference_problems(refs: Sequence[RuleRef], sites: Sequence[Site]) -> list[Problem]:
    tags = {t.id: t for s in sites for t in s.tags}
    equipment = {e.id for s in sites for e in s.equipment}
    problems: list[Problem] = []
    for ref in refs:
        problems.extend(_rule_local_problems(ref))
        if not sites:
            continue
        sel = ref.rule.select
        for j, tag_id in enumerate(sel.tags or []):
            tag = tags.get(tag_id)
            if tag is None:
                problems.append(Problem(f"{ref.path}.select.tags[{j}]", f"unknown tag {tag_id!r}"))
                continue
            discrete = tag.is_discrete
            for key in _CONDITIONS:
                if _condition_spec(ref.rule, key) is None:
                    continue
                if (key in _ANALOG_ONLY and discrete) or (key in _DISCRETE_ONLY and not discrete):
                    what = "a state tag" if discrete else f"a {tag.kind} tag"
                    problems.append(
                        Problem(
                            f"{ref.path}." + ".".join(_CONDITIONS[key]),
                            f"does not apply to {tag_id!r}, {what}",
                        )
                    )
        for j, eq in enumerate(sel.equipment or []):
            if eq not in equipment:
                problems.append(Problem(f"{ref.path}.select.equipment[{j}]", f"unknown equipment {eq!r}"))
    return problems


def _rule_local_problems(ref: RuleRef) -> list[Problem]:
    """Contradictions visible inside one rule: H above HH, L below LL, L above H."""
    problems: list[Problem] = []
    lim = ref.rule.limits
    if lim is None:
        return problems

    def val(spec: LimitSpec | None) -> tuple[str, float] | None:
        if spec is None:
            return None
        if spec.value is not None:
            return ("value", spec.value)
        if spec.percent is not None:
            return ("percent", spec.percent)
        return None

    pairs = (("H", "HH", "above"), ("LL", "L", "above"), ("L", "H", "above"))
    for lo_name, hi_name, word in pairs:
        lo, hi = val(getattr(lim, lo_name)), val(getattr(lim, hi_name))
        if lo is None or hi is None or lo[0] != hi[0]:
            continue
        if lo[1] > hi[1] or (lo_name == "L" and lo[1] >= hi[1]):
            problems.append(
                Problem(
                    f"{ref.path}.limits.{lo_name}.{lo[0]}",
                    f"{lo_name} ({lo[1]:g}) is {word} {hi_name} ({hi[1]:g})",
                )
            )
    return problems


def condition_key(condition: str) -> str:
    """The rule-file key of an alarm condition: ``level.HH`` -> ``HH``, ``state.SIS_TRIP`` -> ``STATE``,
    ``quality.BAD`` -> ``BAD``."""
    kind, _, name = condition.partition(".")
    return "STATE" if kind == "state" else name


def responses_for(rule_set: RuleSet, tag: Tag) -> dict[str, AlarmResponse]:
    """The alarm response of each condition of ``tag``: from the most specific rule that selects the tag
    and gives one (the precedence of limits)."""
    out: dict[str, AlarmResponse] = {}
    for ref in sorted(rule_set.rules, key=lambda r: r.specificity, reverse=True):
        resp = ref.rule.response
        if not resp or not _selects(ref.rule.select, tag):
            continue
        for key, r in resp.items():
            out.setdefault(key, r)
    return out


def _selects(sel: Selector, tag: Tag) -> bool:
    if not _matches_group(sel, tag):
        return False
    if sel.tags is not None and tag.id not in sel.tags:
        return False
    return sel.match is None or fnmatch.fnmatchcase(tag.id, sel.match)
