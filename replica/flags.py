"""Command line and config files: tensorflow_model_server's flags and text-proto configs.

Flags keep TF Serving's names and defaults (``--port``, ``--rest_api_port`` ...) in both the
``--flag=value`` and ``--flag value`` forms; the REST port defaults to 8501 here (TF Serving
leaves REST off unless asked). TF Serving flags the replica has no use for are accepted and
logged as ignored; an unknown flag is an error, as in TF Serving. The replica's own additions are
``--host`` and the test knobs, all off by default.

The MonitoringConfig proto is not shipped in the tensorflow-serving-api wheel, so its two small
messages are declared here (fields as in tensorflow_serving/config/monitoring_config.proto) in a
private descriptor pool.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from replica.knobs import Knobs

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# Real tensorflow_model_server flags that change nothing here.
IGNORED_FLAGS = (
    "grpc_socket_path",
    "rest_api_num_threads",
    "enable_batching",
    "batching_parameters_file",
    "enable_per_model_batching_parameters",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "flush_filesystem_caches",
    "use_alts_credentials",
    "ssl_config_file",
    "platform_config_file",
    "grpc_channel_arguments",
    "grpc_max_threads",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "prefer_tflite_model",
    "enable_profiler",
    "thread_pool_factory_config_file",
    "mixed_precision",
    "skip_initialize_tpu",
    "enable_grpc_healthcheck_service",
    "tensorflow_session_config_file",
    "per_process_gpu_memory_fraction",
    "remove_unused_fields_from_bundle_metagraph",
    "num_tflite_pools",
    "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check",
    "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled",
)


@dataclass(frozen=True)
class SessionOptions:
    """Session settings from the TF Serving flags that tune TensorFlow itself."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    tags: tuple[str, ...] = ("serve",)


@dataclass(frozen=True)
class ReplicaOptions:
    host: str = "0.0.0.0"
    grpc_port: int = 8500
    rest_port: int = 8501
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_poll_s: float = 0.0
    file_system_poll_s: float = 1.0
    monitoring_config_file: str = ""
    rest_timeout_ms: int = 30000
    cors: bool = False
    allow_labels_for_unavailable: bool = False
    tensor_content: bool = False
    inference_threads: int = 4
    session: SessionOptions = field(default_factory=SessionOptions)
    knobs: Knobs = field(default_factory=Knobs)
    ignored: tuple[str, ...] = ()
    show_version: bool = False


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", ""):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infergate replica",
        description="A TensorFlow-Serving-compatible model server for SavedModels on disk.",
        allow_abbrev=False,
    )
    flag = p.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (TF Serving's --port)")
    flag("--rest_api_port", type=int, default=8501, help="REST port; 0 disables REST")
    flag("--host", default="0.0.0.0", help="address to listen on (not a TF Serving flag)")
    flag("--model_name", default="default")
    flag("--model_base_path", default="")
    flag("--model_config_file", default="", help="text-proto ModelServerConfig")
    flag("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    flag("--file_system_poll_wait_seconds", type=float, default=1.0)
    flag("--monitoring_config_file", default="", help="text-proto MonitoringConfig")
    flag("--rest_api_timeout_in_ms", type=int, default=30000)
    for name in (
        "rest_api_enable_cors_support",
        "allow_version_labels_for_unavailable_models",
        "enable_serialization_as_tensor_content",
        "version",
    ):
        flag(f"--{name}", type=_bool, nargs="?", const=True, default=False)
    flag("--tensorflow_session_parallelism", type=int, default=0)
    flag("--tensorflow_intra_op_parallelism", type=int, default=0)
    flag("--tensorflow_inter_op_parallelism", type=int, default=0)
    flag("--saved_model_tags", default="serve")
    flag("--inference_threads", type=int, default=4, help="threads running models (not a TF Serving flag)")
    knobs = p.add_argument_group("test knobs (off by default; also settable via POST /infergate/knobs)")
    knobs.add_argument("--latency_ms", type=float, default=0.0)
    knobs.add_argument("--latency_jitter_ms", type=float, default=0.0)
    knobs.add_argument("--error_rate", type=float, default=0.0)
    knobs.add_argument("--gpu_util", type=float, default=None)
    ignored = p.add_argument_group("accepted for compatibility, ignored")
    for name in IGNORED_FLAGS:
        ignored.add_argument(f"--{name}", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str]) -> ReplicaOptions:
    """Flags -> options; exits with a usage message on a bad or unknown flag."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        knobs = Knobs(args.latency_ms, args.latency_jitter_ms, args.error_rate, args.gpu_util)
    except ValueError as exc:
        parser.error(str(exc))
    intra = args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism
    inter = args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism
    base_path = os.path.abspath(args.model_base_path) if args.model_base_path else ""
    return ReplicaOptions(
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        model_name=args.model_name,
        model_base_path=base_path,
        model_config_file=args.model_config_file,
        model_config_poll_s=args.model_config_file_poll_wait_seconds,
        file_system_poll_s=args.file_system_poll_wait_seconds,
        monitoring_config_file=args.monitoring_config_file,
        rest_timeout_ms=args.rest_api_timeout_in_ms,
        cors=args.rest_api_enable_cors_support,
        allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
        tensor_content=args.enable_serialization_as_tensor_content,
        inference_threads=max(1, args.inference_threads),
        session=SessionOptions(
            intra, inter, tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
        ),
        knobs=knobs,
        ignored=tuple(name for name in IGNORED_FLAGS if getattr(args, name) is not None),
        show_version=args.version,
    )


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """BuildSingleModelConfig: what --model_name/--model_base_path stand for."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return config


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-proto ModelServerConfig; OSError or text_format.ParseError on failure."""
    with open(path, encoding="utf-8") as handle:
        return text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())


def _monitoring_config_class() -> type[Message]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="infergate/replica/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    fdp = descriptor_pb2.FieldDescriptorProto
    prometheus = fd.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=fdp.TYPE_BOOL, label=fdp.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)
    monitoring = fd.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=fdp.TYPE_MESSAGE,
        label=fdp.LABEL_OPTIONAL,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    cls: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )
    return cls


def read_prometheus_path(path: str) -> str | None:
    """The Prometheus path a MonitoringConfig file enables, or None when it is off."""
    with open(path, encoding="utf-8") as handle:
        config = text_format.Parse(handle.read(), _monitoring_config_class()())
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return str(prometheus.path) or DEFAULT_PROMETHEUS_PATH
