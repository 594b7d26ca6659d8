"""Two targets for every conformance case: a replica reached directly, and the gateway in front of it.

One replica per test module serves half_plus_two (versions 1 and 2, labelled stable=1 and
canary=2 in its model config) and embed; the gateway's config owns the same labels, so a request
by label means the same version on both sides. A case sends the same request to both targets and
compares the outcomes (see tests/conformance/outcome.py).

The gRPC clients are the official tensorflow_serving.apis stubs over channels that raise their own
message limits (the Python default receive limit is 4 MiB), as a client of TF Serving must.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.integration.gwproc import GatewayProc
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

    @property
    def targets(self) -> tuple[Target, Target]:
        return self.direct, self.via


def start_pair(models: pathlib.Path, workdir: pathlib.Path, gateway_extra: dict[str, object] | None = None
               ) -> tuple[ReplicaProc, GatewayProc]:
    """A labelled replica and a gateway in front of it (gateway config owning the same labels)."""
    config = write_model_config(workdir / "models.config", models, labels=True)
    replica = start_replica(config, name="conf",
                            extra_args=["--allow_version_labels_for_unavailable_models"])
    try:
        replica.wait_available("half_plus_two", 2)
        replica.wait_available("embed")
        cfg: dict[str, object] = {
            "replicas": [{"name": "r0", "rest": f"127.0.0.1:{replica.rest_port}",
                          "grpc": f"127.0.0.1:{replica.grpc_port}"}],
            "models": {"half_plus_two": {"labels": dict(LABELS)}},
            **(gateway_extra or {}),
        }
        gateway = GatewayProc(cfg, workdir / "gw")
    except BaseException:
        replica.stop()
        raise
    return replica, gateway


@pytest.fixture(scope="module")
def pair(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("conformance")
    replica, gateway = start_pair(models_dir, workdir)
    channels = [grpc.insecure_channel(addr, options=CLIENT_OPTIONS)
                for addr in (replica.grpc_addr, gateway.grpc_addr)]
    try:
        yield Pair(replica, gateway,
                   Target("direct", replica.rest_url, replica.grpc_addr, channels[0]),
                   Target("gateway", gateway.rest_url, gateway.grpc_addr, channels[1]),
                   workdir / "models.config")
    finally:
        for ch in channels:
            ch.close()
        gateway.stop()
        replica.stop()
