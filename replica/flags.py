"""Command line and config files: tensorflow_model_server's flags and text-proto configs.

Flags keep TF Serving's names and defaults (``--port``, ``--rest_api_port`` ...) in both the
``--flag=value`` and ``--flag value`` forms; the REST port defaults to 8501 here (TF Serving
leaves REST off unless asked). TF Serving flags the replica has no use for are accepted and
logged as ignored; an unknown flag is an error, as in TF Serving. The replica's own additions are
``--host`` and the test knobs, all off by default.

The MonitoringConfig and SSLConfig protos are not shipped in the tensorflow-serving-api wheel, so
their small messages are declared here (fields as in tensorflow_serving/config/
monitoring_config.proto and ssl_config.proto) in a private descriptor pool. An SSLConfig file holds
the PEM texts themselves (not paths), written as text-proto strings with ``\\n`` escapes.
"""

from __future__ import annotations

import argparse
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any

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
    ssl_config_file: str = ""
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
    flag("--ssl_config_file", default="", help="text-proto SSLConfig: TLS (and mTLS) on the gRPC port")
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
        ssl_config_file=args.ssl_config_file,
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


@dataclass(frozen=True)
class SslConfig:
    """An SSLConfig message: PEM texts for the gRPC port's TLS, and whether clients must show a
    certificate signed by ``custom_ca``."""

    server_key: str
    server_cert: str
    custom_ca: str
    client_verify: bool


def _config_classes() -> dict[str, type[Message]]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="infergate/replica/serving_configs.proto", package="tensorflow.serving", syntax="proto3"
    )
    fdp = descriptor_pb2.FieldDescriptorProto

    def scalar(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int) -> None:
        message.field.add(name=name, number=number, type=kind, label=fdp.LABEL_OPTIONAL)

    prometheus = fd.message_type.add(name="PrometheusConfig")
    scalar(prometheus, "enable", 1, fdp.TYPE_BOOL)
    scalar(prometheus, "path", 2, fdp.TYPE_STRING)
    monitoring = fd.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=fdp.TYPE_MESSAGE,
        label=fdp.LABEL_OPTIONAL,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    ssl = fd.message_type.add(name="SSLConfig")
    scalar(ssl, "server_key", 1, fdp.TYPE_STRING)
    scalar(ssl, "server_cert", 2, fdp.TYPE_STRING)
    scalar(ssl, "custom_ca", 3, fdp.TYPE_STRING)
    scalar(ssl, "client_verify", 4, fdp.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("MonitoringConfig", "SSLConfig")
    }


def _read_text_proto(path: str, message_name: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return text_format.Parse(handle.read(), _config_classes()[message_name]())


def read_ssl_config(path: str) -> SslConfig:
    """Parse a text-proto SSLConfig; OSError, text_format.ParseError or ValueError on failure.

    TF Serving hands the PEM texts to gRPC as they are, and gRPC only finds a bad one when the
    port is opened, where it looks like a failed bind. Missing or unloadable PEMs (a key that is
    not the certificate's, a CA that is not a certificate) are refused here instead, with a
    message that says so, before any model is loaded.
    """
    config = _read_text_proto(path, "SSLConfig")
    result = SslConfig(
        str(config.server_key), str(config.server_cert), str(config.custom_ca), bool(config.client_verify)
    )
    if not result.server_key or not result.server_cert:
        raise ValueError(f"{path}: SSLConfig needs both server_key and server_cert")
    if result.client_verify and not result.custom_ca:
        # gRPC (Python) cannot require client certificates without roots to check them against.
        raise ValueError(f"{path}: SSLConfig client_verify needs custom_ca")
    _check_pems(path, result)
    return result


def _check_pems(path: str, config: SslConfig) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads only files: the PEMs go to a private (0700) folder, removed at once.
    with tempfile.TemporaryDirectory(prefix="replica-ssl-") as folder:
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for name, text in ((cert, config.server_cert), (key, config.server_key)):
            with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                handle.write(text)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ValueError(f"{path}: SSLConfig server_key/server_cert do not load: {exc}") from exc
    if config.custom_ca:
        try:
            context.load_verify_locations(cadata=config.custom_ca)
        except ssl.SSLError as exc:
            raise ValueError(f"{path}: SSLConfig custom_ca does not load: {exc}") from exc


def read_prometheus_path(path: str) -> str | None:
    """The Prometheus path a MonitoringConfig file enables, or None when it is off."""
    config = _read_text_proto(path, "MonitoringConfig")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return str(prometheus.path) or DEFAULT_PROMETHEUS_PATH
