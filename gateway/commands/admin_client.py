"""The admin API as the command-line tools reach it: one JSON request with the bearer token,
and errors as one clear line with an exit code (2: the gateway cannot be reached or answers
nonsense; 1: it refused the action).

Standard library only (urllib), so the tools work wherever the package is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

DEFAULT_ADMIN = "http://127.0.0.1:9901"


def admin_base(url: str) -> str:
    base = url.rstrip("/")
    return base if "://" in base else "http://" + base


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_command(name: str, parser: argparse.ArgumentParser,
                run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """A command's main: parse `argv` (sys.argv's by default), run it, and turn a CliError into
    its message on stderr and its exit code."""
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except CliError as exc:
        print(f"infergate {name}: {exc}", file=sys.stderr)
        return exc.code


def request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
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


def token_of(token_file: str | None) -> str | None:
    """The admin bearer token: from `token_file`, else $INFERGATE_ADMIN_TOKEN."""
    if token_file:
        try:
            return open(token_file, encoding="utf-8").read().strip() or None
        except OSError as exc:
            raise CliError(f"cannot read --token-file {token_file}: {exc.strerror}", 2) from None
    return os.environ.get("INFERGATE_ADMIN_TOKEN") or None
