"""Compilation of a resolved rule set to arrays: a row per tag key, a column per condition
(:data:`hazmon.alarms.rules.COLUMNS`); NaN or -1 marks a disabled entry. The engine reads only these
arrays (:class:`CompiledRules`), never the YAML model.
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

from hazmon.alarms.alarm import PRIORITY_CODES
from hazmon.alarms.rules import (
    BAD,
    COLUMNS,
    DEFAULT_PRIORITY,
    FROZEN,
    HH,
    LL,
    N_DEADBAND,
    N_LIMIT,
    OUT_OF_RANGE,
    ROC_DOWN,
    ROC_UP,
    STALE,
    STATE,
    H,
    K,
    L,
    RuleRef,
    RuleSet,
    _group_key,
    _matches_group,
    _merge,
    _parse_file,
    _reference_problems,
    _Resolved,
)
from hazmon.errors import InvalidFile, Problem
from hazmon.plant.site import Site, Tag, TagKind
from hazmon.plant.tag import TagIndex, tag_ref

# --- compilation --------------------------------------------------------------------------------
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


@dataclass(eq=False)
class CompiledRules:
    """Rules as arrays. Row = tag key; column = :data:`COLUMNS` entry (or a per-tag parameter).

    ``priority`` (rows, K) int8: index into :data:`hazmon.alarms.alarm.PRIORITY_CODES`, -1 = disabled.
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
    ref_of: dict[int, str] = {}  # id(tag) -> its reference: tag ids repeat across sites
    for site in sites:
        for t in site.tags:
            groups[_group_key(t)].append(t)
            ref_of[id(t)] = ref = tag_ref(site.id, t.id)
            out.site_of[ref] = site.id
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
        rows = np.array([tag_index.key(ref_of[id(t)]) for t in tags], dtype=np.int32)
        comp.apply(resolved, tags, rows)
    for t in (t for s in sites for t in s.tags):
        r = tag_index.key(ref_of[id(t)])
        out.tag_ids[r] = ref_of[id(t)]
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
                by_equipment[t.equipment].append(tag_index.key(tag_ref(site.id, t.id)))
        for e in site.equipment:
            if e.in_service_tag is None:
                continue
            is_row = tag_index.key(tag_ref(site.id, e.in_service_tag))
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
