"""`infergate drain REPLICA [--undrain] [--wait] [--admin URL]`: take a replica out of rotation
through a gateway's admin API (POST /api/replicas/REPLICA/drain): no new calls go to it, calls
in flight finish. With a Redis store every gateway on that Redis drains it.

`--wait` polls GET /api/replicas until the replica has no call in flight (or `--timeout`), so a
preStop hook can stop TF Serving only once it is idle.

What must always hold: exit 0 only when the gateway applied the drain (and, with --wait, the
replica went idle in time); 1 for an unknown replica or a wait that timed out; 2 when the admin
API cannot be reached. Every failure prints one clear line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse

from gateway.commands.admin_client import (
    DEFAULT_ADMIN,
    CliError,
    admin_base,
    request,
    run_command,
    token_of,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infergate drain",
                                description="Drain a replica (or put it back) on a running gateway.")
    p.add_argument("replica", help="the replica's name, as in /api/replicas")
    p.add_argument("--undrain", action="store_true", help="put the replica back into rotation")
    p.add_argument("--wait", action="store_true",
                   help="after draining, wait until the replica has no call in flight")
    p.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin API base URL (default {DEFAULT_ADMIN})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits at most")
    p.add_argument("--token-file", default=None,
                   help="file holding the admin bearer token (default: $INFERGATE_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    return p


def run(args: argparse.Namespace) -> int:
    token = token_of(args.token_file)
    base = admin_base(args.admin)
    action = "undrain" if args.undrain else "drain"
    url = f"{base}/api/replicas/{urllib.parse.quote(args.replica, safe='')}/{action}"
    doc = request(url, "POST", {}, timeout_s=5.0, token=token)
    print(json.dumps(doc, sort_keys=True) if args.json else
          f"{args.replica}: {doc.get('state', '?')}, {doc.get('in_flight', '?')} calls in flight")
    if args.undrain or not args.wait:
        return 0
    end = time.monotonic() + args.timeout
    while True:
        listing = request(f"{base}/api/replicas", timeout_s=5.0, token=token)
        mine = [r for r in listing.get("replicas", []) if r.get("name") == args.replica]
        in_flight = int(mine[0].get("in_flight", 0)) if mine else 0
        if in_flight == 0:
            print(f"{args.replica}: drained, no call in flight")
            return 0
        if time.monotonic() >= end:
            raise CliError(f"{args.replica} still has {in_flight} calls in flight after "
                           f"{args.timeout:g} s", 1)
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    return run_command("drain", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
