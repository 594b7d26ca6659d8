"""`infergate scale simulate`: trace replay decisions and a PNG that decodes."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pytest

from gateway.commands.scale_simulate import load_trace, main, simulate
from gateway.scaling import PoolScalePolicy
from gateway.scaling.chart import Canvas, encode_png

ROOT = Path(__file__).resolve().parents[2]
RAMP = ROOT / "deploy" / "traces" / "ramp.csv"


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Check every chunk's CRC and return (width, height, RGB rows) of an 8-bit RGB PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + width * 3
    assert len(raw) == height * stride
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(r[0] == 0 for r in rows)  # filter type None
    return width, height, [r[1:] for r in rows]


def test_png_encoder_round_trips_pixels() -> None:
    c = Canvas(7, 5)
    c.pixel(2, 3, (10, 20, 30))
    c.line(0, 0, 6, 0, (255, 0, 0))
    w, h, rows = decode_png(c.png())
    assert (w, h) == (7, 5)
    assert rows[3][6:9] == bytes((10, 20, 30))
    assert rows[0][:21] == bytes((255, 0, 0)) * 7
    assert rows[4] == b"\xff" * 21
    with pytest.raises(ValueError):
        encode_png(2, 2, b"\x00" * 5)


def test_ramp_decisions_follow_hpa_rules() -> None:
    trace = load_trace(RAMP)
    policy = PoolScalePolicy()
    steps = simulate(trace, policy)
    by_t = {s.point.t_s: s.decision for s in steps}
    # p95 first leaves the 10 % tolerance band at t=795 (227 ms); the 60 s up window then needs every
    # recommendation newer than t-60 to agree: the t=780 one (within tolerance) drops out at 840.
    first_over = min(s.point.t_s for s in steps if (s.point.p95_latency_ms or 0) > 220)
    assert first_over == 795
    ups = [s for s in steps if s.decision.direction == "up"]
    assert ups[0].point.t_s == 840
    assert (ups[0].decision.current_replicas, ups[0].decision.desired_replicas) == (2, 3)
    assert ups[0].decision.reason == "p95_latency_ms 264.9 > 200"
    # Each step up stays within +50 % per 60 s and the peak is max_replicas.
    for s in ups:
        assert s.decision.desired_replicas <= math.ceil(s.decision.current_replicas * 1.5)
    assert max(d.desired_replicas for d in by_t.values()) == 20

    # Scale-down starts only after every signal has been below its down threshold for 300 s.
    def all_low(s: object) -> bool:
        p = s.point  # type: ignore[attr-defined]
        return p.p95_latency_ms < 50 and p.gpu_util < 0.2 and p.cpu_util < 0.3 and p.queue_depth < 10

    last_busy = max(s.point.t_s for s in steps if not all_low(s))
    downs = [s for s in steps if s.decision.direction == "down"]
    assert downs and downs[0].point.t_s >= last_busy + 300 - 15
    assert all(s.point.t_s > ups[-1].point.t_s for s in downs)  # no flapping between directions
    for s in downs:
        assert s.decision.desired_replicas >= int(s.decision.current_replicas * 0.8)
    assert steps[-1].decision.desired_replicas == 2


def test_cli_writes_table_and_valid_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ramp.png"
    assert main(["simulate", "--trace", str(RAMP), "--png", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "p95_latency_ms 264.9 > 200" in printed
    assert printed.strip().endswith(f"peak 20 replicas; final 2; timeline {out}")
    width, height, rows = decode_png(out.read_bytes())
    assert (width, height) == (1000, 730)
    black = sum(r.count(b"\x00\x00\x00") for r in rows)
    assert black > 1000  # axes, text and the desired-replicas line were drawn


def test_jsonl_unknown_and_unconfigured_columns(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    lines = [
        {"t_s": i * 30, "rps": 5, "p95_latency_ms": 20, "gpu_util": None, "queue_depth": 0} for i in range(40)
    ]
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    loaded = load_trace(trace)
    assert loaded.columns == frozenset({"gpu_util", "queue_depth"})
    steps = simulate(loaded, PoolScalePolicy(), initial_replicas=6)
    # gpu_util is configured but never answers: unknown, so no scale-down in 20 minutes.
    assert {s.decision.desired_replicas for s in steps} == {6}
    assert steps[-1].decision.reason == "gpu_util unknown, no scale-down"
    # Without the column the signal is not configured and the pool scales down.
    trace.write_text("\n".join(json.dumps({k: v for k, v in x.items() if k != "gpu_util"}) for x in lines))
    steps = simulate(load_trace(trace), PoolScalePolicy(), initial_replicas=6)
    assert steps[-1].decision.desired_replicas == 2


def test_capacity_config_and_provision_delay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("autoscale:\n  gpu:\n    min_replicas: 1\n    max_replicas: 6\n    window_up_s: 0\n")
    out = tmp_path / "x.png"
    rc = main(
        [
            "simulate",
            "--trace",
            str(RAMP),
            "--config",
            str(cfg),
            "--capacity-rps",
            "200",
            "--provision-delay-s",
            "45",
            "--png",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    summary = capsys.readouterr().out.strip()
    assert "peak 6 replicas" in summary and "final 1" in summary
    steps = simulate(
        load_trace(RAMP),
        PoolScalePolicy(min_replicas=1, max_replicas=6, window_up_s=0),
        capacity_rps_per_replica=200,
        provision_delay_s=45,
    )
    first_up = next(s for s in steps if s.decision.direction == "up")
    # rps_ratio drives the first step up, long before latency does (capacity 200 per replica).
    assert first_up.decision.reason.startswith("rps_ratio")
    assert first_up.point.t_s < 795
    later = [s for s in steps if first_up.point.t_s < s.point.t_s < first_up.point.t_s + 45]
    assert later and all(s.decision.current_replicas == first_up.decision.current_replicas for s in later)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t_s,rps\n0,1\n", "missing column p95_latency_ms"),
        ("t_s,rps,p95_latency_ms,gpu\n0,1,2,3\n", "unknown column gpu"),
        ("t_s,rps,p95_latency_ms\n0,1,fast\n", "t.csv:2: p95_latency_ms: expected a number, got 'fast'"),
        ("t_s,rps,p95_latency_ms\n10,1,2\n5,1,2\n", "t.csv:3: t_s 5 goes back in time"),
        ("t_s,rps,p95_latency_ms\n0,-1,2\n", "t.csv:2: rps: must not be negative"),
        ("t_s,rps,p95_latency_ms\n", "no rows"),
    ],
)
def test_bad_traces_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(content)
    assert main(["simulate", "--trace", str(trace), "--png", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
