"""The house rules that tools can check: ruff and mypy --strict on gateway/ and policies/, and
no TensorFlow import anywhere in them."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tool(module: str) -> None:
    if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
        pytest.skip(f"{module} is not installed (pip install '.[test]')")


def test_ruff() -> None:
    _tool("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "gateway", "policies"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]


def test_mypy_strict() -> None:
    _tool("mypy")
    res = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]


def test_gateway_never_imports_tensorflow() -> None:
    pattern = re.compile(r"^\s*(import\s+tensorflow|from\s+tensorflow[\w.]*\s+import\b)", re.M)
    offenders = [str(p.relative_to(ROOT)) for d in ("gateway", "policies")
                 for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
    # And at run time: importing the whole gateway loads no TensorFlow module.
    code = ("import sys, gateway.app.gateway, gateway.commands.cli, gateway.commands.agent, "
            "gateway.commands.batch; "
            "print([m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving')])")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_no_bare_create_task_in_gateway() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "gateway").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"asyncio\.(create_task|ensure_future)\(", line) and "noqa: TID251" not in line]
    assert hits == []
