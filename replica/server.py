"""``main``: start a replica, serve gRPC and REST until SIGTERM/SIGINT, then stop cleanly.

Start-up follows tensorflow_model_server: read the model config (or --model_name and
--model_base_path), load the aspired versions, and only then open the ports, so a replica whose
REST port answers has its models loaded. A model config that TF Serving would refuse (labels on
versions that are not loaded, duplicate names, relative base paths) or a model whose every load
failed ends start-up with exit status 1. A model with no version on disk yet does not block
start-up (TF Serving would wait); the poller loads it when it appears. With --ssl_config_file
the gRPC port speaks TLS only (mTLS with client_verify) and REST stays plain HTTP, as in TF
Serving; an unreadable or incomplete SSLConfig ends start-up with exit status 1 before any load.

Background work (the file-system poller, the config-file poller) runs as named tasks whose
failures are logged; TensorFlow runs only on the loader and inference thread pools.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import signal
import sys
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from replica.flags import (
    ReplicaOptions,
    SslConfig,
    parse_args,
    read_model_config,
    read_prometheus_path,
    read_ssl_config,
    single_model_config,
)

log = logging.getLogger("replica")


def main(argv: list[str] | None = None) -> int:
    """Run a replica with tensorflow_model_server's flags; returns the process exit status."""
    options = parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    # TensorFlow reads this when it is first imported, which happens below.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if options.show_version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: infergate-replica\nTensorFlow Library: {tf.__version__}")
        return 0
    for name in options.ignored:
        log.info("Flag --%s is accepted for compatibility with tensorflow_model_server and ignored", name)
    try:
        if options.model_config_file:
            config = read_model_config(options.model_config_file)
        elif options.model_base_path:
            config = single_model_config(options.model_name, options.model_base_path)
        else:
            log.error("Both server_model_config_file and model_base_path are empty!")
            return 2
        prometheus_path = (
            read_prometheus_path(options.monitoring_config_file) if options.monitoring_config_file else None
        )
        ssl = read_ssl_config(options.ssl_config_file) if options.ssl_config_file else None
    except (OSError, text_format.ParseError, ValueError) as exc:
        log.error("Cannot read a config file: %s", exc)
        return 1
    try:
        return asyncio.run(_serve(options, config, prometheus_path, ssl))
    except KeyboardInterrupt:
        return 0


def _spawn(coro: Coroutine[Any, Any, None], name: str, tasks: set[asyncio.Task[None]]) -> None:
    """Start a background task that is kept referenced and whose failure is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    tasks.add(task)

    def done(t: asyncio.Task[None]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("Background task %s died", name, exc_info=t.exception())

    task.add_done_callback(done)


async def _watch_config_file(manager: Any, path: str, wait_s: float) -> None:
    """--model_config_file_poll_wait_seconds: reload the file whenever its content changes."""
    from replica.errors import ServingError

    while True:
        await asyncio.sleep(wait_s)
        try:
            config = await asyncio.to_thread(read_model_config, path)
        except (OSError, text_format.ParseError) as exc:
            log.error("Cannot read model config file %s: %s", path, exc)
            continue
        if config == manager.config:
            continue
        try:
            await manager.reload_config(config)
        except ServingError as exc:
            log.error("Reloading model config failed: %s", exc.message)


async def _serve(
    options: ReplicaOptions,
    config: model_server_config_pb2.ModelServerConfig,
    prometheus_path: str | None,
    ssl: SslConfig | None,
) -> int:
    # Heavy imports (TensorFlow) happen here, after the flags are known to be good.
    import tensorflow as tf
    from aiohttp import web

    from replica.core import ServingCore
    from replica.errors import ServingError
    from replica.grpc_service import build_server
    from replica.metrics import ReplicaMetrics
    from replica.models import ModelManager
    from replica.rest import RestApi
    from replica.servable import close_servable, load_servable

    tf.get_logger().setLevel(logging.ERROR)
    loader = ThreadPoolExecutor(1, thread_name_prefix="replica-load")
    inference = ThreadPoolExecutor(options.inference_threads, thread_name_prefix="replica-infer")
    manager = ModelManager(
        load=functools.partial(load_servable, options=options.session),
        unload=close_servable,  # type: ignore[arg-type]
        loader=loader,
        allow_labels_for_unavailable=options.allow_labels_for_unavailable,
    )
    try:
        await manager.reload_config(config)
    except ServingError as exc:
        log.error("Model server config rejected: %s", exc.message)
        return 1
    failures = manager.startup_failures()
    if failures:
        log.error("Some servables were not available: %s", ", ".join(failures))
        return 1

    core = ServingCore(
        manager,
        ReplicaMetrics(),
        inference,
        options.knobs,
        random.Random(),
        tensor_content=options.tensor_content,
    )
    grpc_server = None
    runner = None
    try:
        if options.grpc_port:
            address = f"{options.host}:{options.grpc_port}"
            grpc_server = build_server(core, address, ssl)
            await grpc_server.start()
            log.info("Running gRPC ModelServer at %s%s ...", address, " (TLS)" if ssl else "")
        if options.rest_port:
            api = RestApi(
                core, timeout_ms=options.rest_timeout_ms, cors=options.cors, prometheus_path=prometheus_path
            )
            runner = web.AppRunner(api.app(), access_log=None, auto_decompress=False)
            await runner.setup()
            await web.TCPSite(runner, options.host, options.rest_port).start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_port)
    except (OSError, RuntimeError) as exc:
        log.error("Cannot listen: %s", exc)
        if grpc_server is not None:
            await grpc_server.stop(None)
        if runner is not None:
            await runner.cleanup()
        return 1

    tasks: set[asyncio.Task[None]] = set()
    if options.file_system_poll_s > 0:
        _spawn(manager.run_poller(options.file_system_poll_s), "file-system-poller", tasks)
    if options.model_config_file and options.model_config_poll_s > 0:
        _spawn(
            _watch_config_file(manager, options.model_config_file, options.model_config_poll_s),
            "config-file-poller",
            tasks,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("Shutting down")
    for task in list(tasks):
        task.cancel()
    if grpc_server is not None:
        await grpc_server.stop(1.0)
    if runner is not None:
        await runner.cleanup()
    await manager.unload_all()
    inference.shutdown(wait=False, cancel_futures=True)
    loader.shutdown(wait=False)
    return 0
