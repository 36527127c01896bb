"""Path-precise validation errors shared by every declarative file hazmon loads.

Site files, rule sets, gateway maps and scenarios all report problems as
``path: message`` lines, e.g. ``installations[2].chemicals[0].quantity_t: must be > 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidFile(Exception):
    """A declarative file failed validation; ``problems`` lists every error with its path."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} error(s)\n{lines}")


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "greater_than": lambda ctx: f"must be > {_num(ctx.get('gt'))}",
    "greater_than_equal": lambda ctx: f"must be >= {_num(ctx.get('ge'))}",
    "less_than": lambda ctx: f"must be < {_num(ctx.get('lt'))}",
    "less_than_equal": lambda ctx: f"must be <= {_num(ctx.get('le'))}",
    "missing": lambda ctx: "is required",
    "extra_forbidden": lambda ctx: "unknown field",
}


def problems_from_validation(e: ValidationError, prefix: str = "") -> list[Problem]:
    problems = []
    for err in e.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = format_loc(loc)
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
        make = _MESSAGES.get(err["type"])
        msg = make(err.get("ctx") or {}) if make else err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(Problem(path, msg))
    return problems


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses ~10x faster


def read_yaml(path: Path | str) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidFile(str(p), [Problem("", f"cannot read file: {e.strerror}")]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # a safe loader: libyaml when present
    except yaml.YAMLError as e:
        raise InvalidFile(str(p), [Problem("", f"not valid YAML: {e}")]) from None


def validate_model(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidFile(source, problems_from_validation(e)) from None
