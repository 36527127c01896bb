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
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hazmon.alarm import PRIORITY_CODES, Priority
from hazmon.errors import InvalidFile, Problem, problems_from_validation, read_yaml
from hazmon.site import GasClass, Ident, Signal, Site, Tag, TagKind
from hazmon.tag import TagIndex

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


class Rule(_Model):
    name: str | None = None
    select: Selector
    limits: Limits | None = None
    rate_of_change: RateOfChange | None = None
    state: StateSpec | None = None
    quality: QualityRules | None = None


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


def _parse_all(paths: Iterable[Path | str], sites: Sequence[Site]) -> tuple[RuleSet, list[Problem]]:
    refs: list[RuleRef] = []
    problems: list[Problem] = []
    for path in paths:
        file_refs, file_problems = _parse_file(path, len(refs))
        refs.extend(file_refs)
        problems.extend(file_problems)
    if problems:  # structure first: references and contradictions once every file parses
        return RuleSet(refs), problems
    problems = _reference_problems(refs, sites)
    unresolvable = any("unknown" in p.message or "does not apply" in p.message for p in problems)
    if sites and not unresolvable:
        problems += _resolve(RuleSet(refs), sites, TagIndex.from_sites(sites))[1]
    return RuleSet(refs), problems


def load_rules(paths: Iterable[Path | str], sites: Sequence[Site] = ()) -> RuleSet:
    """Parse and validate rule files against the sites; raises InvalidFile listing every problem."""
    paths = list(paths)
    rule_set, problems = _parse_all(paths, sites)
    if problems:
        raise InvalidFile(", ".join(str(p) for p in paths), problems)
    return rule_set


def check_rules(paths: Iterable[Path | str], sites: Sequence[Site] = ()) -> list[Problem]:
    """Every problem in the rule files, each with a path like ``f.yaml:rules[3].limits.HH.value``."""
    return _parse_all(list(paths), sites)[1]


# --- compilation --------------------------------------------------------------------------------
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


@dataclass(eq=False)
class CompiledRules:
    """Rules as arrays. Row = tag key; column = :data:`COLUMNS` entry (or a per-tag parameter).

    ``priority`` (rows, K) int8: index into :data:`hazmon.alarm.PRIORITY_CODES`, -1 = disabled.
    ``timing`` (rows, K) uint16 indexes the small deduplicated tables ``on_delay_us``,
    ``off_delay_us`` and ``realarm_us`` (0 = no re-alarm). ``limit`` (rows, 7): HH, H, L, LL in
    engineering units, ROC_UP / ROC_DOWN in units per minute, STATE the alarming state value;
    NaN = disabled. ``deadband`` (rows, 6). Per tag: ``oor_lo``/``oor_hi`` (NaN: no check),
    ``frozen_us``/``stale_us``/``roc_window_us`` (-1: disabled), ``frozen_tol``.
    """

    tag_ids: list[str | None]
    kinds: list[str]
    state_names: list[str]
    priority: npt.NDArray[np.int8]
    latch: npt.NDArray[np.bool_]
    timing: npt.NDArray[np.uint16]
    on_delay_us: I64
    off_delay_us: I64
    realarm_us: I64
    limit: F64
    deadband: F64
    oor_lo: F64
    oor_hi: F64
    frozen_us: I64
    frozen_tol: F64
    stale_us: I64
    roc_window_us: I64
    in_service_rows: I32 = field(default_factory=lambda: np.zeros(0, np.int32))
    dependents_ptr: I64 = field(default_factory=lambda: np.zeros(1, np.int64))
    dependents: I32 = field(default_factory=lambda: np.zeros(0, np.int32))
    site_of: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.tag_ids)

    @classmethod
    def empty(cls, rows: int) -> CompiledRules:
        return cls(
            tag_ids=[None] * rows,
            kinds=[""] * rows,
            state_names=[""] * rows,
            priority=np.full((rows, K), -1, np.int8),
            latch=np.zeros((rows, K), np.bool_),
            timing=np.zeros((rows, K), np.uint16),
            on_delay_us=np.zeros(1, np.int64),
            off_delay_us=np.zeros(1, np.int64),
            realarm_us=np.zeros(1, np.int64),
            limit=np.full((rows, N_LIMIT), np.nan),
            deadband=np.zeros((rows, N_DEADBAND)),
            oor_lo=np.full(rows, np.nan),
            oor_hi=np.full(rows, np.nan),
            frozen_us=np.full(rows, -1, np.int64),
            frozen_tol=np.zeros(rows),
            stale_us=np.full(rows, -1, np.int64),
            roc_window_us=np.full(rows, -1, np.int64),
        )

    def condition_name(self, row: int, col: int) -> str:
        if col <= ROC_DOWN:
            return f"{self.kinds[row]}.{COLUMNS[col]}"
        if col == STATE:
            return f"state.{self.state_names[row]}"
        return f"quality.{COLUMNS[col]}"

    def column_of(self, row: int, condition: str) -> int | None:
        kind, _, name = condition.partition(".")
        if kind == "quality":
            col = COLUMNS.index(name) if name in COLUMNS[BAD:] else None
        elif kind == "state":
            col = STATE if name == self.state_names[row] else None
        elif kind == self.kinds[row] and name in COLUMNS[: ROC_DOWN + 1]:
            col = COLUMNS.index(name)
        else:
            col = None
        if col is None or self.priority[row, col] < 0:
            return None
        return col

    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in vars(self).values() if isinstance(v, np.ndarray))


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _state_value(tag: Tag, spec_value: Any, path: str, problems: list[Problem]) -> float | None:
    if isinstance(spec_value, int):
        if tag.states is not None and spec_value not in tag.states:
            problems.append(Problem(path, f"state {spec_value} is not one of {tag.id!r}'s states"))
            return None
        return float(spec_value)
    names = {v: k for k, v in (tag.states or {}).items()}
    if spec_value not in names:
        known = ", ".join(sorted(names)) or "none declared"
        problems.append(Problem(path, f"{tag.id!r} has no state {spec_value!r} (states: {known})"))
        return None
    return float(names[spec_value])


class _Compiler:
    def __init__(self, out: CompiledRules) -> None:
        self.out = out
        self.problems: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.timing_ids: dict[tuple[int, int, int], int] = {(0, 0, 0): 0}

    def problem(self, path: str, message: str, tag_id: str) -> None:
        self.problems[(path, message)].append(tag_id)

    def timing(self, on: int, off: int, realarm: int) -> int:
        key = (on, off, realarm)
        if key not in self.timing_ids:
            self.timing_ids[key] = len(self.timing_ids)
        return self.timing_ids[key]

    def apply(self, resolved: _Resolved, tags: list[Tag], rows: I32) -> None:
        """Write one merged rule into the rows of the tags it governs (all of one discrete-ness)."""
        out = self.out
        discrete = tags[0].is_discrete
        if not discrete:
            lo = np.array([t.range[0] if t.range else np.nan for t in tags])
            hi = np.array([t.range[1] if t.range else np.nan for t in tags])
            span = hi - lo
        for key, fields in resolved.fields.items():
            if key == "roc.window":
                continue
            col = COLUMNS.index(key)

            def get(name: str, default: Any = None, fields: dict[str, tuple[Any, str]] = fields) -> Any:
                return fields[name][0] if name in fields else default

            declared_at = fields["_declared"][1]
            if not get("enabled", True):
                continue
            prio = get("priority", DEFAULT_PRIORITY[key])
            tmg = self.timing(_us(get("on_delay_s", 0.0)), _us(get("off_delay_s", 0.0)), _us(get("realarm_s", 0.0)))
            if col <= LL:
                sp = fields.get("setpoint")
                if sp is None:
                    for t in tags:
                        self.problem(declared_at, "no value or percent set for this limit", t.id)
                    continue
                (yname, x) = self._raw(sp)
                value = lo + x / 100.0 * span if yname == "percent" else np.full(len(tags), float(x))
                db = fields.get("deadband")
                if db is None:
                    dbv = np.zeros(len(tags))
                else:
                    dname, dx = self._raw(db)
                    dbv = dx / 100.0 * span if dname == "deadband_percent" else np.full(len(tags), float(dx))
                out.limit[rows, col] = value
                out.deadband[rows, col] = dbv
            elif col in (ROC_UP, ROC_DOWN):
                per_min = get("per_min")
                if per_min is None:
                    for t in tags:
                        self.problem(declared_at, "no per_min set for this rate of change", t.id)
                    continue
                window = resolved.fields.get("roc.window", {}).get("window_s")
                if window is None:
                    for t in tags:
                        self.problem(declared_at, "no rate_of_change.window_s for this tag", t.id)
                    continue
                out.limit[rows, col] = per_min
                out.deadband[rows, col] = get("deadband", 0.0)
                out.roc_window_us[rows] = _us(window[0])
            elif col == STATE:
                when = fields.get("alarm_when")
                if when is None:
                    for t in tags:
                        self.problem(declared_at, "no alarm_when set for this state alarm", t.id)
                    continue
                probs: list[Problem] = []
                for r, t in zip(rows.tolist(), tags, strict=True):
                    v = _state_value(t, when[0], when[1], probs)
                    out.limit[r, STATE] = np.nan if v is None else v
                    out.state_names[r] = get("name") or (t.signal.upper() if t.signal else "STATE")
                for p in probs:
                    self.problem(p.path, p.message, "")
            elif col == OUT_OF_RANGE:
                margin = get("margin_percent", 0.0) / 100.0 * span
                out.oor_lo[rows] = lo - margin
                out.oor_hi[rows] = hi + margin
            elif col in (FROZEN, STALE):
                after = get("after_s")
                if after is None:
                    for t in tags:
                        self.problem(declared_at, "no after_s set", t.id)
                    continue
                if col == FROZEN:
                    out.frozen_us[rows] = _us(after)
                    out.frozen_tol[rows] = get("tolerance", 0.0)
                else:
                    out.stale_us[rows] = _us(after)
            out.priority[rows, col] = PRIORITY_CODES.index(prio)
            out.latch[rows, col] = bool(get("latch", False))
            out.timing[rows, col] = tmg
        if not discrete:
            self._check_order(resolved, tags, rows)

    @staticmethod
    def _raw(item: tuple[Any, str]) -> tuple[str, float]:
        value, path = item
        return path.rsplit(".", 1)[1], float(value)

    def _check_order(self, resolved: _Resolved, tags: list[Tag], rows: I32) -> None:
        lim = self.out.limit[rows]
        pr = self.out.priority[rows]
        for a, b, word in ((H, HH, "above"), (LL, L, "above"), (L, H, "above")):
            both = (pr[:, a] >= 0) & (pr[:, b] >= 0)
            bad = both & ((lim[:, a] >= lim[:, b]) if a == L else (lim[:, a] > lim[:, b]))
            if not bad.any():
                continue
            fa = resolved.fields[COLUMNS[a]]["setpoint"][1]
            fb = resolved.fields[COLUMNS[b]]["setpoint"][1]
            same_rule = fa.split(".limits.")[0] == fb.split(".limits.")[0]
            if same_rule and fa.rsplit(".", 1)[1] == fb.rsplit(".", 1)[1]:
                continue  # reported once, by the rule's own check
            for i in np.flatnonzero(bad).tolist():
                self.problem(
                    fa,
                    f"{COLUMNS[a]} ({lim[i, a]:g}) is {word} {COLUMNS[b]} ({lim[i, b]:g}, set at {fb})",
                    tags[i].id,
                )

    def problem_list(self) -> list[Problem]:
        out = []
        for (path, message), tag_ids in self.problems.items():
            ids = [t for t in tag_ids if t]
            suffix = ""
            if ids:
                shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
                suffix = f" (tag{'s' if len(ids) > 1 else ''} {shown})"
            out.append(Problem(path, message + suffix))
        return out


def _resolve(rule_set: RuleSet, sites: Sequence[Site], tag_index: TagIndex) -> tuple[CompiledRules, list[Problem]]:
    out = CompiledRules.empty(tag_index.size)
    comp = _Compiler(out)
    groups: dict[tuple[Any, ...], list[Tag]] = defaultdict(list)
    for site in sites:
        for t in site.tags:
            groups[_group_key(t)].append(t)
            out.site_of[t.id] = site.id
    globs = {id(r): re.compile(fnmatch.translate(r.rule.select.match)) for r in rule_set.rules if r.rule.select.match}
    tag_sets = {id(r): set(r.rule.select.tags) for r in rule_set.rules if r.rule.select.tags}
    by_refs: dict[tuple[int, ...], list[Tag]] = defaultdict(list)
    for tags in groups.values():
        candidates = [(i, r) for i, r in enumerate(rule_set.rules) if _matches_group(r.rule.select, tags[0])]
        for t in tags:
            key = tuple(
                i
                for i, r in candidates
                if (id(r) not in tag_sets or t.id in tag_sets[id(r)])
                and (id(r) not in globs or globs[id(r)].match(t.id))
            )
            by_refs[(int(t.is_discrete), *key)].append(t)
    for key, tags in by_refs.items():
        resolved = _merge([rule_set.rules[i] for i in key[1:]], bool(key[0]))
        rows = np.array([tag_index.key(t.id) for t in tags], dtype=np.int32)
        comp.apply(resolved, tags, rows)
    for t in (t for s in sites for t in s.tags):
        r = tag_index.key(t.id)
        out.tag_ids[r] = t.id
        out.kinds[r] = str(t.kind)
        if not out.state_names[r]:
            out.state_names[r] = t.signal.upper() if t.signal else "STATE"
    table = sorted(comp.timing_ids.items(), key=lambda kv: kv[1])
    out.on_delay_us = np.array([k[0] for k, _ in table], np.int64)
    out.off_delay_us = np.array([k[1] for k, _ in table], np.int64)
    out.realarm_us = np.array([k[2] for k, _ in table], np.int64)
    _suppression(out, sites, tag_index)
    return out, comp.problem_list()


def _suppression(out: CompiledRules, sites: Sequence[Site], tag_index: TagIndex) -> None:
    is_rows: list[int] = []
    ptr = [0]
    deps: list[int] = []
    for site in sites:
        by_equipment: dict[str, list[int]] = defaultdict(list)
        for t in site.tags:
            if t.kind is not TagKind.GAS:  # a leak matters whether or not the equipment runs
                by_equipment[t.equipment].append(tag_index.key(t.id))
        for e in site.equipment:
            if e.in_service_tag is None:
                continue
            is_row = tag_index.key(e.in_service_tag)
            is_rows.append(is_row)
            deps.extend(r for r in by_equipment[e.id] if r != is_row)
            ptr.append(len(deps))
    out.in_service_rows = np.array(is_rows, np.int32)
    out.dependents_ptr = np.array(ptr, np.int64)
    out.dependents = np.array(deps, np.int32)


def compile_rules(rule_set: RuleSet, sites: Sequence[Site], tag_index: TagIndex) -> CompiledRules:
    """Arrays for the engine; raises InvalidFile when a tag's merged rules are incomplete or contradictory."""
    compiled, problems = _resolve(rule_set, sites, tag_index)
    if problems:
        raise InvalidFile(", ".join(rule_set.sources) or "<rules>", problems)
    return compiled
