"""The folder tree's rules, read from the code: import-linter's contracts in pyproject.toml
(layers that point down only, policies that import no gateway code, native engines that never
import the compat one, no TensorFlow), and no module in gateway/ or policies/ over 400 lines."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_LINES = 400


def test_import_contracts_hold() -> None:
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install '.[test]')")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_only_commands_import_app() -> None:
    """Said by the layers contract too; kept as a plain reading of the files so a failure names
    the file at once."""
    offenders = []
    for p in (ROOT / "gateway").rglob("*.py"):
        rel = p.relative_to(ROOT).as_posix()
        if rel.startswith(("gateway/app/", "gateway/commands/")):
            continue
        text = p.read_text()
        if "from gateway.app" in text or "import gateway.app" in text:
            offenders.append(rel)
    assert offenders == []


def test_no_module_is_over_400_lines() -> None:
    long = {p.relative_to(ROOT).as_posix(): n
            for d in ("gateway", "policies") for p in (ROOT / d).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
