"""`hazmon hazard grade FILE [--json]`: GB 18218 identification and grading of a site's installations."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hazmon.plant.site import Site


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hazard = sub.add_parser("hazard", help="GB 18218 major hazard identification and grading").add_subparsers(
        dest="hazard_command", metavar="ACTION", required=True
    )
    g = hazard.add_parser(
        "grade", help="per installation: S, R, α, the level, and each chemical's contribution βq/Q (GB 18218-2018)"
    )
    g.add_argument("file", type=Path, metavar="FILE", help="a site file (sites/*.yaml)")
    g.add_argument("--json", action="store_true", help="print the grading as JSON")
    g.set_defaults(handler=_grade)


def _grade(args: argparse.Namespace) -> int:
    from hazmon.regulator.installations import installation_grades
    from hazmon.regulator.sitecheck import load_graded_site

    site, warnings = load_graded_site(args.file)
    grades = installation_grades(site)
    if args.json:
        print(json.dumps(grades, indent=2, ensure_ascii=False))
        return 0
    for w in warnings:
        print(f"{args.file}: warning: {w}", file=sys.stderr)
    print(render(site, grades))
    return 0


def render(site: Site, grades: list[dict[str, Any]]) -> str:
    lines = [f"{site.enterprise.name} ({site.enterprise.uscc}) — site {site.id}"]
    for g in grades:
        h = g["gb18218"]
        level = f"level {h['grade']} ({h['grade_zh']})" if h["major_hazard"] else "not a major hazard installation"
        lines.append(
            f"{g['id']} {g['name']}: S = {h['s']:g}, α = {h['alpha']:g} ({g['people_within_500m']} people "
            f"within 500 m), R = {h['r']:g} → {level}"
        )
        for c in h["chemicals"]:
            named = f" = Table 1 no. {c['table1_no']} {c['standard_name']['zh']}" if c["table1_no"] else ""
            lines.append(
                f"    {c['name']}{named}: q {c['quantity_t']:g} t / Q {c['critical_quantity_t']:g} t "
                f"({c['critical_quantity_source']}) × β {c['beta']:g} ({c['beta_source']}) "
                f"= βq/Q {c['beta_q_over_Q']:g}"
            )
    return "\n".join(lines)
