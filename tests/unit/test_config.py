"""Config validation: every kind of invalid config gives a precise error; `run` refuses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "replicas": [{"name": "a", "rest": "127.0.0.1:1", "grpc": "127.0.0.1:2", "pool": "gpu"}],
    "models": {"m": {"labels": {"stable": 1, "canary": 2}}},
}


def _with(path: str, value: object) -> dict[str, object]:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return data


def test_example_configs_validate() -> None:
    for f in sorted((ROOT / "config").glob("*.yaml")):
        load_config(f)


@pytest.mark.parametrize("path,value,expect", [
    ("listen.rest", "nohostport", "listen.rest: expected HOST:PORT"),
    ("replicas.0.rest", "1.2.3.4:99999", "replicas.0.rest: expected HOST:PORT"),
    ("replicas.0.weight", 0, "replicas.0.weight"),
    ("replicas.0.metrics", "ftp://x", "replicas.0.metrics: expected an http(s) URL"),
    ("replicas.0.colour", "red", "replicas.0.colour: unknown key"),
    ("models.m.balance", "fastest", "models.m.balance: 'fastest' is not one of"),
    ("models.m.routes", [{"split": {"stable": 0, "canary": 0}}], "weights must sum to a positive"),
    ("models.m.routes", [{"split": {"stable": -1, "canary": 5}}], "is negative"),
    ("models.m.routes", [{"split": {"beta": 10}}], "models.m.routes.0.split: unknown label 'beta'"),
    ("models.m.routes", [{"split": {"pool:cpu": 10}}], "unknown pool 'cpu'"),
    ("models.m.routes", [{"split": {"stable": 1}, "match": {"headers": {"x": {"regex": "("}}}}],
     "invalid regex"),
    ("models.m.sticky", {}, "sticky needs a header or a cookie"),
    ("models.m.labels", {"bad label": 1}, "may hold only"),
    ("cache", {"store": "memcached://x"}, "cache.store: store must be 'memory' or a redis:// URL"),
    ("autoscale", {"gpu": {"min_replicas": 5, "max_replicas": 2}}, "min_replicas 5 > max_replicas 2"),
    ("autoscale", {"gpu": {"up": {"p95_latency_ms": 100}, "down": {"p95_latency_ms": 150}}},
     "down.p95_latency_ms (150.0) must be below up.p95_latency_ms (100.0)"),
    ("autoscale", {"cpu": {}}, "autoscale.cpu: unknown pool"),
    ("models.m.rollout", {"canary": "canary", "steps": [50, 10]}, "steps must be increasing"),
])
def test_invalid_configs_name_key_and_reason(path: str, value: object, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with(path, value), "gw.yaml")
    msg = str(err.value)
    assert msg.startswith("gw.yaml: "), msg
    assert expect in msg, msg


def test_duplicate_replica_names() -> None:
    data = _with("replicas", [{"name": "a", "rest": "h:1"}, {"name": "a", "rest": "h:2"}])
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        parse_config(data, "gw.yaml")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("replicas:\n  - name: a\n   rest: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_config(f)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(f)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.commands.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_validate_and_run_refuse_bad_config(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_with("models.m.balance", "fastest")))
    res = _cli("validate", str(f))
    assert res.returncode != 0
    assert f"{f}: models.m.balance: 'fastest' is not one of" in res.stderr
    res = _cli("run", "--config", str(f))
    assert res.returncode != 0
    assert "refusing to start" in res.stderr and "models.m.balance" in res.stderr


def test_validate_good_config_prints_summary(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(BASE))
    res = _cli("validate", str(f))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1 and "1 replicas" in res.stdout
