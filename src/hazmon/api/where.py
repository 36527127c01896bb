"""Where things are, for the routes: the runtime's directory of places (see hazmon.plant.directory)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException

from hazmon.plant.directory import NOWHERE, AmbiguousName, Directory, Place
from hazmon.runtime import Runtime

__all__ = ["NOWHERE", "Directory", "Place", "directory", "place_of", "qualified_alarm", "qualified_tag"]


def directory(runtime: Runtime) -> Directory:
    return runtime.directory()


def place_of(runtime: Runtime, owner: str) -> Place:
    return runtime.directory().place_of(owner)


def qualified_tag(runtime: Runtime, name: str, sees: Callable[[str | None], bool]) -> str:
    """A tag named ``site/tag``, or by its bare id where one site of the caller's has it; 422 if ambiguous."""
    try:
        return runtime.directory().resolve(name, sees)
    except AmbiguousName as e:
        raise HTTPException(422, f"tag {e}") from None


def qualified_alarm(runtime: Runtime, alarm_id: str, sees: Callable[[str | None], bool]) -> str:
    """An alarm named ``site/owner:condition``, or ``owner:condition`` where one site of the caller's has
    the owner; a system alarm (``hazmon.storage:comm.LOSS``) as it is; 422 if ambiguous."""
    try:
        return runtime.directory().resolve_alarm(alarm_id, sees)
    except AmbiguousName as e:
        raise HTTPException(422, f"alarm {alarm_id!r}: {e}") from None
