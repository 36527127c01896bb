"""`hazmon hub receive`: the regulator hub's uplink receiver (see hazmon.hub)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from hazmon.hub.cli import add_arguments, receive

    hub = sub.add_parser("hub", help="the regulator hub: receive enterprises' uplinks").add_subparsers(
        dest="hub_command", metavar="ACTION", required=True
    )
    p = hub.add_parser("receive", help="receive uplinks (POST /api/v1/uplink), decrypt, keep them in --out")
    add_arguments(p)
    p.set_defaults(handler=receive)
