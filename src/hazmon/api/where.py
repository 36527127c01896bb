"""Where things are, for the routes: the runtime's directory of places (see hazmon.plant.directory)."""

from __future__ import annotations

from hazmon.plant.directory import NOWHERE, Directory, Place
from hazmon.runtime import Runtime

__all__ = ["NOWHERE", "Directory", "Place", "directory", "place_of"]


def directory(runtime: Runtime) -> Directory:
    return runtime.directory()


def place_of(runtime: Runtime, owner: str) -> Place:
    return runtime.directory().place_of(owner)
