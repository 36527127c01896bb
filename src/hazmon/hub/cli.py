"""`hazmon hub receive` (also ``python -m hazmon.hub receive``): run the hub's uplink receiver.

The credentials are those the authority issued to the enterprise (the same as its ``uplink``
settings); secrets can come from the environment instead of the command line:
``HAZMON_HUB_APP_SECRET``, ``HAZMON_HUB_SM4_KEY``, ``HAZMON_HUB_SM4_IV``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8600)
    p.add_argument("--app-id", required=True)
    p.add_argument("--app-secret", default=os.environ.get("HAZMON_HUB_APP_SECRET"))
    p.add_argument("--sm4-key", default=os.environ.get("HAZMON_HUB_SM4_KEY"), help="32 hex digits")
    p.add_argument("--sm4-iv", default=os.environ.get("HAZMON_HUB_SM4_IV"), help="32 hex digits")
    p.add_argument("--out", type=Path, default=Path("hub-received.jsonl"), help="where received messages go")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--log-level", default="warning")


def receive(args: argparse.Namespace) -> int:
    import uvicorn

    from hazmon.hub.receiver import create_receiver
    from hazmon.hub.sink import JsonlSink
    from hazmon.regulator.sm4 import SM4Error, parse_hex_key
    from hazmon.regulator.uplink_payload import Credentials

    if bool(args.tls_cert) != bool(args.tls_key):
        print("hazmon hub: give --tls-cert and --tls-key together", file=sys.stderr)
        return 2
    missing = [n for n in ("app_secret", "sm4_key", "sm4_iv") if not getattr(args, n)]
    if missing:
        print(f"hazmon hub: give {', '.join('--' + m.replace('_', '-') for m in missing)}", file=sys.stderr)
        return 2
    try:
        creds = Credentials(
            args.app_id,
            args.app_secret.encode(),
            parse_hex_key(args.sm4_key, "--sm4-key"),
            parse_hex_key(args.sm4_iv, "--sm4-iv"),
        )
    except SM4Error as e:
        print(f"hazmon hub: {e}", file=sys.stderr)
        return 2
    sink = JsonlSink(args.out)
    app = create_receiver({creds.app_id: creds}, sink)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
            ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        )
    finally:
        sink.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hazmon.hub", description="the hub's uplink receiver")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("receive", help="receive uplinks over HTTP"))
    args = parser.parse_args(argv)
    return receive(args)
