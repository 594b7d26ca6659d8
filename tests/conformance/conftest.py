"""Two targets for every conformance case: a replica reached directly, and the gateway in front of it.

One replica per test module serves half_plus_two (versions 1 and 2, labelled stable=1 and
canary=2 in its model config) and embed; the gateway's config owns the same labels, so a request
by label means the same version on both sides. A case sends the same request to both targets and
compares the outcomes (see tests/conformance/outcome.py). Every case runs once per gateway
engine (listen.engine: compat and native), against the same replica.

The gRPC clients are the official tensorflow_serving.apis stubs over channels that raise their own
message limits (the Python default receive limit is 4 MiB), as a client of TF Serving must.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.integration.gwproc import EngineGateway, GatewayProc
from tests.support.models import write_model_config
from tests.support.procs import ReplicaProc, start_replica

# The stubs import TensorFlow; keep its start-up chatter out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# What a TF Serving client sets to move messages over 4 MiB; the gateway allows 2 GiB.
CLIENT_MAX_MESSAGE = 64 * 1024 * 1024
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
    ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
]
LABELS = {"stable": 1, "canary": 2}


@dataclass
class Target:
    """One side of a comparison: where to send REST and gRPC calls."""

    name: str  # "direct" | "gateway"
    rest_url: str
    grpc_addr: str
    channel: grpc.Channel


@dataclass
class Pair:
    replica: ReplicaProc
    gateway: GatewayProc
    direct: Target
    via: Target
    model_config: pathlib.Path  # the replica's text-proto model config
    engine: str  # the gateway's listen.engine

    @property
    def targets(self) -> tuple[Target, Target]:
        return self.direct, self.via


ENGINES = ("compat", "native")  # listen.engine: aiohttp + grpc.aio, or the gateway's own layers


def start_replica_for_conformance(models: pathlib.Path, workdir: pathlib.Path) -> ReplicaProc:
    """A replica serving half_plus_two (1 and 2, labelled stable=1, canary=2) and embed."""
    config = write_model_config(workdir / "models.config", models, labels=True)
    replica = start_replica(config, name="conf",
                            extra_args=["--allow_version_labels_for_unavailable_models"])
    try:
        replica.wait_available("half_plus_two", 2)
        replica.wait_available("embed")
    except BaseException:
        replica.stop()
        raise
    return replica


def gateway_config(replica: ReplicaProc) -> dict[str, Any]:
    """One replica, and the same labels as the replica's own model config."""
    return {"replicas": [{"name": "r0", "rest": f"127.0.0.1:{replica.rest_port}",
                          "grpc": f"127.0.0.1:{replica.grpc_port}"}],
            "models": {"half_plus_two": {"labels": dict(LABELS)}}}


@dataclass
class Direct:
    replica: ReplicaProc
    target: Target
    model_config: pathlib.Path


@pytest.fixture(scope="module")
def direct(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    workdir = tmp_path_factory.mktemp("conformance")
    replica = start_replica_for_conformance(models_dir, workdir)
    channel = grpc.insecure_channel(replica.grpc_addr, options=CLIENT_OPTIONS)
    try:
        yield Direct(replica, Target("direct", replica.rest_url, replica.grpc_addr, channel),
                     workdir / "models.config")
    finally:
        channel.close()
        replica.stop()


@pytest.fixture(scope="module", params=ENGINES)
def pair(request: pytest.FixtureRequest, direct: Direct,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """The replica and a gateway in front of it, once per engine (tests are grouped by engine,
    so each module starts one gateway per engine and one replica in all)."""
    engine: str = request.param
    gateway = EngineGateway(gateway_config(direct.replica), tmp_path_factory.mktemp(engine), engine)
    channel = grpc.insecure_channel(gateway.grpc_addr, options=CLIENT_OPTIONS)
    try:
        yield Pair(direct.replica, gateway, direct.target,
                   Target(f"gateway-{engine}", gateway.rest_url, gateway.grpc_addr, channel),
                   direct.model_config, engine)
    finally:
        channel.close()
        gateway.stop()
