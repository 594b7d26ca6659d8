"""`infergate agent`: started as a real process on a free port, scraped over HTTP.

On a machine without an NVIDIA driver the agent must say so once and still serve CPU figures; on a
GPU machine the same test checks the dcgm-exporter samples instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.commands.agent import CpuSampler, GpuReading, Snapshot, render

ROOT = Path(__file__).resolve().parents[2]


def _read_first_line(stream: object, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)  # type: ignore[attr-defined]
    t.start()
    t.join(timeout)
    if not box:
        raise AssertionError(f"no output line within {timeout}s")
    return box[0]


@pytest.fixture
def agent() -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.commands.agent", "--listen", "127.0.0.1:0", "--interval", "0.2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_first_line(proc.stdout, 30.0)
        assert line.startswith("infergate agent listening on http://127.0.0.1:"), line
        yield proc, line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_agent_serves_cpu_and_reports_nvml_state(agent: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = agent
    metrics: dict[str, list[tuple[dict[str, str], float]]] = {}
    for _ in range(100):  # bounded: the CPU figure needs two samples 0.2 s apart
        metrics = _scrape(url)
        if "infergate_agent_cpu_util" in metrics:
            break
        time.sleep(0.1)
    [(_, cpu)] = metrics["infergate_agent_cpu_util"]
    assert 0.0 <= cpu <= 1.0
    modes = {labels["mode"] for labels, _ in metrics["infergate_agent_cpu_seconds_total"]}
    assert {"user", "system", "idle"} <= modes
    [(_, nvml)] = metrics["infergate_agent_nvml_available"]
    with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=5) as resp:
        assert resp.read() == b"ok\n"
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    err = proc.stderr.read()
    if nvml == 0.0:
        assert "DCGM_FI_DEV_GPU_UTIL" not in metrics
        assert err.count("NVML unavailable, serving CPU figures only") == 1, err
    else:
        assert nvml == 1.0
        assert all(0.0 <= v <= 100.0 for _, v in metrics["DCGM_FI_DEV_GPU_UTIL"])


def test_agent_refuses_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "gateway.commands.agent", "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_render_matches_dcgm_exporter_and_the_gateway_parser() -> None:
    gpus = (
        GpuReading(0, "GPU-aaaa", "NVIDIA H200", "00000000:19:00.0", 0, 37.0, 1024.0, 139_000.5),
        GpuReading(1, "GPU-bbbb", 'Odd "name"\\', "00000000:3B:00.0", 1, 63.0, 2048.0, 138_000.0),
    )
    text = render(Snapshot(True, gpus, 0.25, {"user": 1.5, "idle": 10.0}, 2), "node-1")
    assert (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaaa",pci_bus_id="00000000:19:00.0",device="nvidia0",'
        'modelName="NVIDIA H200",Hostname="node-1"} 37\n'
    ) in text
    assert "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n" in text
    samples = {
        (s.name, s.labels.get("gpu", "")): (s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    labels, value = samples[("DCGM_FI_DEV_GPU_UTIL", "1")]
    assert labels["modelName"] == 'Odd "name"\\' and value == 63.0
    assert samples[("DCGM_FI_DEV_FB_FREE", "0")][1] == 139_000.5
    assert samples[("DCGM_FI_DEV_FB_USED", "1")][1] == 2048.0
    assert samples[("infergate_agent_nvml_available", "")][1] == 1.0
    assert samples[("infergate_agent_gpus", "")][1] == 2.0
    assert samples[("infergate_agent_nvml_errors_total", "")][1] == 2.0
    from gateway.fleet.health import parse_load_metrics

    gpu_util, mem, cpu = parse_load_metrics(text)
    assert gpu_util == pytest.approx(0.5)
    assert cpu == 0.25
    assert mem == pytest.approx(3072.0 / (3072.0 + 277_000.5))


def test_cpu_sampler_uses_proc_stat_deltas(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\n")
    sampler = CpuSampler(str(stat))
    util, seconds = sampler.sample()
    assert util is None  # one reading has no interval yet
    assert seconds["idle"] > 0
    # +60 user, +20 system, +100 idle, +20 iowait: busy 80 of 200 ticks.
    stat.write_text("cpu  160 0 70 900 70 0 0 0 0 0\n")
    util, _ = sampler.sample()
    assert util == pytest.approx(0.4)
    assert CpuSampler(str(tmp_path / "missing")).sample() == (None, {})
