"""Shared fleet fixtures for integration tests: real replicas serving real SavedModels.

One fleet per test module (a replica costs ~3 s and ~550 MB), stopped by pid at module end.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.gwproc import GatewayProc
from tests.support.models import shared_models_dir
from tests.support.procs import ReplicaProc, start_replica


@dataclass
class Fleet:
    models: pathlib.Path
    replicas: list[ReplicaProc]
    config_file: pathlib.Path

    def replica_cfg(self, **extra: Any) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(self.replicas):
            item: dict[str, Any] = {
                "name": f"r{i}", "rest": f"127.0.0.1:{r.rest_port}", "grpc": f"127.0.0.1:{r.grpc_port}",
                "metrics": f"http://127.0.0.1:{r.rest_port}/monitoring/prometheus/metrics",
            }
            item.update(extra)
            out.append(item)
        return out


def model_config(models: pathlib.Path, dest: pathlib.Path, versions: str = "all {}") -> pathlib.Path:
    dest.write_text(
        "model_config_list {\n"
        f'  config {{ name: "half_plus_two" base_path: "{models / "half_plus_two"}" '
        f'model_platform: "tensorflow" model_version_policy {{ {versions} }} }}\n'
        f'  config {{ name: "embed" base_path: "{models / "embed"}" model_platform: "tensorflow" }}\n'
        "}\n")
    return dest


@pytest.fixture(scope="session")
def models_dir() -> pathlib.Path:
    return shared_models_dir()


def start_fleet(models: pathlib.Path, workdir: pathlib.Path, n: int = 2) -> Fleet:
    cfg = model_config(models, workdir / "models.config")
    replicas: list[ReplicaProc] = []
    try:
        for i in range(n):
            replicas.append(start_replica(cfg, name=f"r{i}"))
            replicas[-1].wait_available("half_plus_two", 2)
    except BaseException:
        for r in replicas:
            r.stop()
        raise
    return Fleet(models, replicas, cfg)


@pytest.fixture(scope="module")
def fleet(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(models_dir, tmp_path_factory.mktemp("fleet"))
    yield f
    for r in f.replicas:
        r.stop()


@pytest.fixture
def gateway_factory(tmp_path: pathlib.Path) -> Iterator[Any]:
    started: list[GatewayProc] = []

    def make(cfg: dict[str, Any], name: str = "gateway", **kw: Any) -> GatewayProc:
        g = GatewayProc(cfg, tmp_path / name, name=name, **kw)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()
