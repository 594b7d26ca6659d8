"""What REST and gRPC share: servable lookup, knobs, off-loop execution, status and metadata.

``ServingCore.run`` is the one place an inference call passes: it holds the servable (so an
unload waits for the call), applies the test knobs (injected UNAVAILABLE, added latency), runs
the blocking model code on the inference thread pool and enforces the call's deadline. The event
loop never runs TensorFlow. Metrics are recorded by the transports, which know TF Serving's
per-entrypoint rules.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, status_pb2

from replica.errors import ServingError, deadline_exceeded, invalid_argument, unavailable
from replica.knobs import INJECTED_ERROR_MESSAGE, Knobs
from replica.metrics import ReplicaMetrics
from replica.models import ModelManager
from replica.servable import Servable

T = TypeVar("T")

SIGNATURE_DEF_FIELD = "signature_def"
# What a session that ran out of its RunOptions timeout reports (DirectSession).
TIMEOUT_MESSAGE = "Timed out waiting for notification"


def spec_version(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) of a ModelSpec's version_choice oneof."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class ServingCore:
    def __init__(
        self,
        manager: ModelManager,
        metrics: ReplicaMetrics,
        executor: Executor,
        knobs: Knobs,
        rng: random.Random,
        *,
        tensor_content: bool = False,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.knobs = knobs
        self.tensor_content = tensor_content
        self._executor = executor
        self._rng = rng

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        version, label = spec_version(spec)
        servable = self.manager.resolve(spec.name, version, label)
        assert isinstance(servable, Servable)
        return servable

    async def run(self, servable: Servable, fn: Callable[..., T], *args: Any, deadline: float | None) -> T:
        """Run ``fn(*args)`` for an inference call on ``servable`` (see the module docstring)."""
        loop = asyncio.get_running_loop()
        with self.manager.hold(servable):
            knobs = self.knobs
            if knobs.should_fail(self._rng):
                raise unavailable(INJECTED_ERROR_MESSAGE)
            delay = knobs.delay_s(self._rng)
            if delay > 0:
                if deadline is not None and loop.time() + delay >= deadline:
                    await asyncio.sleep(max(0.0, deadline - loop.time()))
                    raise deadline_exceeded(TIMEOUT_MESSAGE)
                await asyncio.sleep(delay)
            future = loop.run_in_executor(self._executor, fn, *args)
            if deadline is None:
                return await future
            try:
                return await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
            except TimeoutError as exc:
                raise deadline_exceeded(TIMEOUT_MESSAGE) from exc

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work that is not an inference call (e.g. answer formatting)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusImpl: the label is ignored; only an explicit version narrows the answer."""
        version, _ = spec_version(spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for record in self.manager.status(spec.name, version):
            item = response.model_version_status.add(version=record.version, state=int(record.state))
            item.status.CopyFrom(status_proto(record.error))
        return response

    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadataImpl (signature_def is the only metadata field there is)."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self.resolve(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signatures.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


def status_proto(error: ServingError | None) -> status_pb2.StatusProto:
    if error is None:
        return status_pb2.StatusProto()
    return status_pb2.StatusProto(error_code=error.code.value[0], error_message=error.message)
