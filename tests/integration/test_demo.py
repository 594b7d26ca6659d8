"""The README's demo command end to end: replicas, gateway, sample traffic, clean stop."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_runs_and_stops_everything(tmp_path: pathlib.Path) -> None:
    res = subprocess.run([sys.executable, "-m", "gateway.commands.cli", "demo", "--duration", "1",
                          "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "gateway ready" in out
    assert "version 1:" in out and "version 2:" in out  # the 90/10 split reached both versions
    assert "header rule x-canary: always -> version 2" in out
    assert "unknown model -> 404" in out
    assert "dashboard      http://127.0.0.1:" in out
    # Every process it started is gone: nothing listens on the demo's logged pids any more.
    for log in tmp_path.glob("*.log"):
        assert log.stat().st_size > 0
    ps = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout
