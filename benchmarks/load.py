"""Load generators (wrk for HTTP/1.1, h2load for gRPC over h2c) and CPU accounting from /proc.

What must always hold: a run reports what the tools measured (requests/s, latency percentiles,
errors) and the CPU the process under test spent during exactly that run, so "CPU us per
request" = (utime + stime delta of the process and its children) / completed requests.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    rps: float = 0.0
    requests: int = 0
    errors: int = 0
    p50_us: float | None = None
    p99_us: float | None = None
    cpu_us_per_req: float | None = None
    note: str = ""
    raw: str = field(default="", repr=False)


def family(pid: int) -> list[int]:
    """`pid` and its direct children (nginx workers, gateway workers)."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _dur_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, conns: int, seconds: float, script: Path, cpu: str,
        pids: list[int] | None = None, threads: int = 1, timeout_s: int = 2) -> RunResult:
    cmd = ["taskset", "-c", cpu, "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s",
           f"--timeout={timeout_s}s", "--latency", "-s", str(script), url]
    before = cpu_seconds(pids) if pids else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    after = cpu_seconds(pids) if pids else 0.0
    r = RunResult(raw=out)
    m = re.search(r"(\d+) requests in", out)
    r.requests = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r.rps = float(m.group(1)) if m else 0.0
    for pct, attr in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        if m:
            setattr(r, attr, _dur_us(m.group(1)))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r.errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r.errors += sum(int(g) for g in m.groups())
    if pids and r.requests:
        r.cpu_us_per_req = (after - before) * 1e6 / r.requests
    return r


def h2load(url: str, clients: int, streams: int, seconds: float, data: Path, headers: list[str],
           cpu: str, pids: list[int] | None = None, log: Path | None = None,
           threads: int = 1) -> RunResult:
    cmd = ["taskset", "-c", cpu, "h2load", "-t", str(threads), "-c", str(clients), "-m",
           str(streams), "-D", str(max(1, round(seconds))), "-d", str(data)]
    for h in headers:
        cmd += ["-H", h]
    if log is not None:
        cmd += ["--log-file", str(log)]
    cmd.append(url)
    before = cpu_seconds(pids) if pids else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    after = cpu_seconds(pids) if pids else 0.0
    r = RunResult(raw=out)
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        r.requests = int(m.group(2))
        r.errors = int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    r.rps = float(m.group(1)) if m else 0.0
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r.errors += sum(int(g) for g in m.groups()[1:])
    if log is not None and log.exists():
        lat = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                     if line.count("\t") >= 2)
        if lat:
            r.p50_us = float(lat[len(lat) // 2])
            r.p99_us = float(lat[min(len(lat) - 1, int(len(lat) * 0.99))])
        log.unlink()
    if pids and r.requests:
        r.cpu_us_per_req = (after - before) * 1e6 / r.requests
    return r


def median_result(runs: list[RunResult]) -> RunResult:
    """The per-field median of repeated runs (each field on its own)."""
    def med(values: list[float | None]) -> float | None:
        vs = [v for v in values if v is not None]
        return statistics.median(vs) if vs else None

    out = RunResult()
    out.rps = med([r.rps for r in runs]) or 0.0
    out.requests = sum(r.requests for r in runs)
    out.errors = sum(r.errors for r in runs)
    out.p50_us = med([r.p50_us for r in runs])
    out.p99_us = med([r.p99_us for r in runs])
    out.cpu_us_per_req = med([r.cpu_us_per_req for r in runs])
    out.note = "; ".join(sorted({r.note for r in runs if r.note}))
    return out
