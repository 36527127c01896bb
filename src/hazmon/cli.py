"""The `hazmon` command line. Each module in `hazmon.commands` adds its verbs through ``register``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from hazmon import __version__, commands
from hazmon.config import ConfigError
from hazmon.errors import InvalidFile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hazmon",
        description="Real-time monitoring of major hazard installations of hazardous chemicals.",
    )
    parser.add_argument("--version", action="version", version=f"hazmon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"hazmon.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except (ConfigError, InvalidFile) as e:
        print(f"hazmon: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result
