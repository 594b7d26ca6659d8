"""`infergate rollout status|pause|resume|promote|abort MODEL [--admin URL]`: drive a gateway's
canary rollouts through its admin API (GET /api/rollouts, POST /api/rollouts/MODEL/ACTION).

Standard library only (urllib), so it works wherever the package is installed.

What must always hold: exit 0 only when the admin API answered and the action applied; 2 when
the admin API cannot be reached or answers nonsense; 1 when the model has no rollout or the
action does not apply in its state. Every failure prints one clear line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from gateway.commands.admin_client import DEFAULT_ADMIN, CliError, admin_base, run_command, token_of
from gateway.commands.admin_client import request as _request

ACTIONS = ("pause", "resume", "promote", "abort")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_CHECK_OPS = {"error_rate": "<=", "p95_ratio": "<=", "agreement": ">=", "requests": ">="}


def summary(model: str, r: dict[str, Any]) -> str:
    """A readable account of one rollout (a GET /api/rollouts entry)."""
    steps = r.get("steps") or []
    of = f"/{len(steps)}" if steps else ""
    lines = [f"{model}: {r.get('state', '?')}, step {r.get('step', '?')}{of}, "
             f"canary weight {_fmt(r.get('weight'))}%"]
    if r.get("canary") is not None:
        arms = (f"  canary {r['canary']} (version {_fmt(r.get('canary_version'))}), "
                f"stable {r.get('stable')} (version {_fmt(r.get('stable_version'))})")
        lines.append(arms)
    if steps:
        lines.append(f"  steps {', '.join(f'{s:g}%' for s in steps)}; this step "
                     f"{_fmt(r.get('step_elapsed_s'))} s of {_fmt(r.get('step_s'))} s")
    if r.get("reason"):
        lines.append(f"  reason: {r['reason']}")
    if r.get("promote_to") is not None:
        lines.append(f"  stable now serves: {r['promote_to']}")
    checks = r.get("checks") or {}
    if isinstance(checks, dict) and checks:
        lines.append("  checks:")
        for name, c in checks.items():
            if not isinstance(c, dict):
                continue
            ok = c.get("ok")
            # Too few requests is not a failure: the step simply lasts until there are enough.
            failed = ok is False and name != "requests"
            verdict = "ok" if ok is True else "FAIL" if failed else "waiting"
            lines.append(f"    {name:<11} {_fmt(c.get('value')):>8} {_CHECK_OPS.get(name, 'vs')} "
                         f"{_fmt(c.get('limit')):<8} {verdict}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infergate rollout",
                                description="Show and drive canary rollouts of a running gateway.")
    p.add_argument("action", choices=("status", *ACTIONS))
    p.add_argument("model", nargs="?", help="the model (status without it lists every rollout)")
    p.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin API base URL (default {DEFAULT_ADMIN})")
    p.add_argument("--reason", help="why (recorded in the rollout's history)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the gateway")
    p.add_argument("--token-file", default=None,
                   help="file holding the admin bearer token (default: $INFERGATE_ADMIN_TOKEN)")
    return p


def run(args: argparse.Namespace) -> int:
    token = token_of(args.token_file)
    base = admin_base(args.admin)
    if args.action == "status":
        doc = _request(f"{base}/api/rollouts", timeout_s=args.timeout, token=token)
        rollouts = doc.get("rollouts")
        if not isinstance(rollouts, dict):
            raise CliError(f"GET {base}/api/rollouts: no 'rollouts' in the answer", 2)
        if args.model is not None:
            if args.model not in rollouts:
                known = ", ".join(sorted(rollouts)) or "none"
                raise CliError(f"model {args.model!r} has no rollout (rollouts: {known})", 1)
            rollouts = {args.model: rollouts[args.model]}
        if args.json:
            print(json.dumps(rollouts, indent=2, sort_keys=True))
        elif not rollouts:
            print("no rollouts configured")
        for model, r in sorted(rollouts.items()):
            if not args.json:
                print(summary(model, r if isinstance(r, dict) else {}))
        return 0
    if args.model is None:
        raise CliError(f"{args.action} needs a MODEL", 1)
    url = f"{base}/api/rollouts/{urllib.parse.quote(args.model, safe='')}/{args.action}"
    body = {"reason": args.reason} if args.reason else {}
    doc = _request(url, "POST", body, timeout_s=args.timeout, token=token)
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else summary(args.model, doc))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("rollout", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
