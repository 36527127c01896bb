"""The installations of a site as a regulator files them: identification, grade, and the required
monitoring the site lacks (what `hazmon hazard grade --json` prints and `GET /api/v1/installations` serves)."""

from __future__ import annotations

from typing import Any

from hazmon.plant.site import Site
from hazmon.regulator.gb18218 import grade
from hazmon.regulator.monitoring import installation_requirements


def installation_grades(site: Site, retention_days: int | None = None) -> list[dict[str, Any]]:
    """What `hazard grade --json` prints and `GET /api/v1/installations` serves."""
    out = []
    for inst in site.installations:
        reqs = installation_requirements(site, inst, retention_days)
        out.append(
            {
                "id": inst.id,
                "site": site.id,
                "enterprise": site.enterprise.id,
                "name": inst.name,
                "kind": inst.kind.value,
                "people_within_500m": inst.people_within_500m,
                "gb18218": grade(inst).as_dict(),
                "monitoring_required": [r.as_dict() for r in reqs],
                "monitoring_missing": [r.as_dict() for r in reqs if not r.met],
            }
        )
    return out
