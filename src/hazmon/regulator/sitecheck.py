"""A site file checked the way a regulator reads it: the structure (`plant.site`), then every chemical
identified for GB 18218 grading (errors), then the required monitoring (warnings).

``load_graded_site`` is what anything that registers a site uses (`hazmon site load`, `hazmon serve`,
`PUT /api/v1/sites/{id}`): a chemical that cannot be graded is an error naming its path, never a
traceback at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hazmon.errors import InvalidFile, Problem
from hazmon.plant.site import Site, load_site, parse_site
from hazmon.regulator.gb18218 import identification
from hazmon.regulator.monitoring import monitoring_warnings


def graded(site: Site, source: str) -> tuple[Site, list[Problem]]:
    """Raises InvalidFile for chemicals that cannot be graded; returns the warnings."""
    errors, warnings = identification(site)
    if errors:
        raise InvalidFile(source, errors)
    return site, warnings + monitoring_warnings(site)


def load_graded_site(path: Path | str) -> tuple[Site, list[Problem]]:
    return graded(load_site(path), str(path))


def parse_graded_site(data: Any, source: str = "<site>") -> tuple[Site, list[Problem]]:
    return graded(parse_site(data, source), source)
