"""Replica lifecycle: versions appearing and vanishing on disk, config reloads, start-up rules, flags.

Each test starts its own replica (these tests change what a replica serves).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.support.models import add_version, write_model_config
from tests.support.procs import ProcessFailed, ReplicaProc, http_get, http_post, start_replica

pytestmark = pytest.mark.integration

V1_PREDICTIONS = b'{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
V2_PREDICTIONS = b'{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}'
INSTANCES = {"instances": [1.0, 2.0, 5.0]}


def _wait_states(
    replica: ReplicaProc, model: str, expected: list[tuple[str, str]], timeout: float = 30.0
) -> None:
    replica.wait_until(
        lambda: [(s["version"], s["state"]) for s in replica.model_status(model)] == expected,
        timeout=timeout,
        what=f"showing {expected}",
    )


def test_versions_load_and_unload_while_polling(models_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    base = tmp_path / "half_plus_two"
    base.mkdir()
    add_version(models_dir / "half_plus_two" / "1", base, 1)
    replica = start_replica(base, extra_args=["--file_system_poll_wait_seconds=0.2"])
    try:
        _wait_states(replica, "half_plus_two", [("1", "AVAILABLE")])
        add_version(models_dir / "half_plus_two" / "2", base, 2)
        _wait_states(replica, "half_plus_two", [("2", "AVAILABLE"), ("1", "END")])
        url = f"{replica.rest_url}/v1/models/half_plus_two:predict"
        assert http_post(url, INSTANCES) == (200, V2_PREDICTIONS)

        shutil.rmtree(base / "2")
        _wait_states(replica, "half_plus_two", [("2", "END"), ("1", "AVAILABLE")])
        assert http_post(url, INSTANCES) == (200, V1_PREDICTIONS)

        with grpc.insecure_channel(replica.grpc_addr) as ch:
            stub = model_service_pb2_grpc.ModelServiceStub(ch)
            reload = model_management_pb2.ReloadConfigRequest()
            model = reload.config.model_config_list.config.add(
                name="half_plus_two", base_path=str(base), model_platform="tensorflow"
            )
            model.version_labels["stable"] = 5
            with pytest.raises(grpc.RpcError) as info:
                stub.HandleReloadConfigRequest(reload, timeout=30)
            error = info.value
            assert (error.code(), error.details()) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "Request to assign label to version 5 of model half_plus_two, which is not currently "
                "available for inference",
            )
            model.version_labels["stable"] = 1
            answer = stub.HandleReloadConfigRequest(reload, timeout=30)
            assert answer.status.error_code == 0
        assert http_post(f"{replica.rest_url}/v1/models/half_plus_two/labels/stable:predict", INSTANCES) == (
            200,
            V1_PREDICTIONS,
        )
    finally:
        replica.stop()


def test_labels_on_unloaded_versions_fail_start_up_as_in_tf_serving(
    models_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "models.config"
    write_model_config(config, models_dir)
    with pytest.raises(ProcessFailed, match="Request to assign label to version"):
        start_replica(config, timeout=60)


def test_model_config_text_proto_policies(models_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name="half_plus_two", base_path=str(models_dir / "half_plus_two")
    )
    model.model_version_policy.specific.versions.append(1)
    path = tmp_path / "specific.config"
    path.write_text(text_format.MessageToString(config))
    replica = start_replica(path, monitoring=False)
    try:
        assert [(s["version"], s["state"]) for s in replica.model_status("half_plus_two")] == [
            ("1", "AVAILABLE")
        ]
        assert http_get(f"{replica.rest_url}/monitoring/prometheus/metrics")[0] == 404  # monitoring off
    finally:
        replica.stop()


def test_cli_rejects_unknown_flags_and_accepts_tf_serving_ones() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "replica", "--model_base_path=/x", "--no_such_flag=1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert bad.returncode == 2
    assert "--no_such_flag" in bad.stderr
    empty = subprocess.run(
        [sys.executable, "-m", "replica", "--grpc_max_threads=4", "--enable_batching"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert empty.returncode == 2
    assert "Both server_model_config_file and model_base_path are empty!" in empty.stderr
    assert "--grpc_max_threads is accepted" in empty.stderr
