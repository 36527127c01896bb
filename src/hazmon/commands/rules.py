"""`hazmon rules check FILE... [--site SITE]`: validate alarm rule files, every error with its path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hazmon.alarms.alarm import PRIORITY_CODES, Priority
from hazmon.alarms.compiler import check_rules, compile_rules, load_rules
from hazmon.alarms.rules import COLUMNS, RuleSet, responses_for
from hazmon.alarms.rules import _selects as selects
from hazmon.errors import InvalidFile
from hazmon.plant.site import Site, load_site
from hazmon.plant.tag import TagIndex, tag_ref


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = sub.add_parser("rules", help="check alarm rule files").add_subparsers(
        dest="rules_command", metavar="ACTION", required=True
    )
    check = rules.add_parser(
        "check", help="validate rule files (against site files: unknown tags, contradictory limits)"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument(
        "--site", action="append", type=Path, default=[], metavar="SITE", help="site file(s) the rules apply to"
    )
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    sites: list[Site] = []
    for path in args.site:
        try:
            sites.append(load_site(path))
        except InvalidFile as e:
            print(e, file=sys.stderr)
            return 1
    problems = check_rules(args.files, sites)
    if problems:
        print(f"{len(problems)} error(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    rule_set = load_rules(args.files, sites)
    against = f" against {', '.join(s.id for s in sites)}" if sites else ""
    # A selector that matches no tag of the sites: a `match` glob is a mistake (error); a selection by
    # kind, gas, substance or signal is a preset that does not apply here (warning).
    unmatched = unmatched_selectors(rule_set, sites)
    of = f"of {', '.join(s.id for s in sites)}"
    mistakes = [(path, sel) for path, sel, specific in unmatched if specific]
    for path, sel, specific in unmatched:
        if not specific:
            print(f"warning: {path}.select {sel} matches no tag {of}", file=sys.stderr)
    if mistakes:
        print(f"{len(mistakes)} error(s):", file=sys.stderr)
        for path, sel in mistakes:
            print(f"  {path}.select.match: {sel} matches no tag {of}", file=sys.stderr)
        return 1
    print(f"ok: {len(rule_set.rules)} rules in {len(args.files)} file(s){against}")
    missing = missing_responses(rule_set, sites)
    if missing:
        print(
            f"note: {len(missing)} alarm(s) of high or critical priority have no alarm response "
            "(response: cause, consequence, action, respond_within_min):"
        )
        for alarm_id, priority in missing[:50]:
            print(f"  {alarm_id} ({priority})")
        if len(missing) > 50:
            print(f"  ... and {len(missing) - 50} more")
    return 0


def missing_responses(rule_set: RuleSet, sites: list[Site]) -> list[tuple[str, str]]:
    """Alarms of high or critical priority (after precedence) whose rules give no ``response:``, by their
    site-scoped ids (``<site>/<tag>:<condition>``, as the console asks for their response)."""
    index = TagIndex.from_sites(sites)
    compiled = compile_rules(rule_set, sites, index)
    urgent = {PRIORITY_CODES.index(Priority.CRITICAL), PRIORITY_CODES.index(Priority.HIGH)}
    out: list[tuple[str, str]] = []
    for site in sites:
        for tag in site.tags:
            ref = tag_ref(site.id, tag.id)
            row = index.key(ref)
            have = responses_for(rule_set, tag)
            for col, key in enumerate(COLUMNS):
                code = int(compiled.priority[row, col])
                if code in urgent and key not in have:
                    out.append((f"{ref}:{compiled.condition_name(row, col)}", PRIORITY_CODES[code].value))
    return out


def unmatched_selectors(rule_set: RuleSet, sites: list[Site]) -> list[tuple[str, str, bool]]:
    """(rule path, selector, has a `match` glob) of each rule that selects no tag of ``sites``."""
    if not sites:
        return []
    tags = [t for s in sites for t in s.tags]
    out = []
    for ref in rule_set.rules:
        if not any(selects(ref.rule.select, t) for t in tags):
            sel = ref.rule.select.model_dump(mode="json", exclude_none=True)
            text = ", ".join(f"{k}: {v}" for k, v in sel.items())
            out.append((ref.path, "{" + text + "}", ref.rule.select.match is not None))
    return out
