"""`hazmon rules check FILE... [--site SITE]`: validate alarm rule files, every error with its path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hazmon.alarms.compiler import check_rules, load_rules
from hazmon.errors import InvalidFile
from hazmon.plant.site import Site, load_site


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
    print(f"ok: {len(rule_set.rules)} rules in {len(args.files)} file(s){against}")
    return 0
