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
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_ADMIN = "http://127.0.0.1:9901"
ACTIONS = ("pause", "resume", "promote", "abort")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
             timeout_s: float = 5.0, token: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            detail = json.loads(raw).get("error") or raw.decode(errors="replace")
        except (ValueError, AttributeError):
            detail = raw.decode(errors="replace").strip() or exc.reason
        code = 2 if exc.code >= 500 or exc.code == 405 or (exc.code == 404 and method == "GET") else 1
        raise CliError(f"{method} {url}: HTTP {exc.code}: {detail}", code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the admin API at {url}: {reason}", 2) from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise CliError(f"{method} {url}: the answer is not JSON", 2) from None
    if not isinstance(doc, dict):
        raise CliError(f"{method} {url}: expected a JSON object", 2)
    return doc


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


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return open(args.token_file, encoding="utf-8").read().strip() or None
        except OSError as exc:
            raise CliError(f"cannot read --token-file {args.token_file}: {exc.strerror}", 2) from None
    return os.environ.get("INFERGATE_ADMIN_TOKEN") or None


def run(args: argparse.Namespace) -> int:
    token = _token(args)
    base = args.admin.rstrip("/")
    if "://" not in base:
        base = "http://" + base
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
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except CliError as exc:
        print(f"infergate rollout: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
