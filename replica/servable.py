"""One loaded SavedModel version: its MetaGraphDef, a TensorFlow session, and a way to run it.

The model runs the way tensorflow_model_server runs it: the SavedModel is loaded into a graph-mode
session and each call feeds tensors by name and fetches tensors by name (Session::Run). Feeding by
name is what lets ``instances: [1.0, 2.0, 5.0]`` reach a signature input declared as [-1, 1] in TF
Serving's own half_plus_two model, so the public ``Session.make_callable`` (which checks static
shapes in Python) is not used; ``_make_callable_from_options`` is TensorFlow's C++ callable path.

Invariants: a ``Servable`` is created and closed on a loader thread and run on inference threads;
``inflight`` is touched only by the event loop thread (the manager drains it before closing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

from replica.errors import ServingError, code_from_number, internal
from replica.flags import SessionOptions

log = logging.getLogger("replica.servable")

_Callable = Callable[..., list[np.ndarray]]


class Servable:
    """A SavedModel version ready to run; thread-safe for concurrent ``run`` calls."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        session: tf.compat.v1.Session,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self.inflight = 0
        self._session = session
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], _Callable] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def signatures(self) -> Mapping[str, meta_graph_pb2.SignatureDef]:
        signatures: Mapping[str, meta_graph_pb2.SignatureDef] = self.meta_graph.signature_def
        return signatures

    def run(self, feeds: Sequence[tuple[str, np.ndarray]], fetches: Sequence[str]) -> list[np.ndarray]:
        """Session::Run: feed tensors by name, fetch tensors by name; TF errors become ServingError.

        Deadlines are enforced by the caller (the event loop stops waiting); a per-call session
        timeout would need one callable per distinct timeout value.
        """
        key = (tuple(name for name, _ in feeds), tuple(fetches))
        try:
            fn = self._callable(key)
            return list(fn(*[value for _, value in feeds]))
        except tf.errors.OpError as exc:
            raise ServingError(code_from_number(exc.error_code), exc.message) from exc
        except (TypeError, ValueError) as exc:
            # numpy -> Tensor conversion failures (e.g. ragged object arrays).
            raise ServingError(code_from_number(3), str(exc)) from exc

    def _callable(self, key: tuple[tuple[str, ...], tuple[str, ...]]) -> _Callable:
        fn = self._callables.get(key)
        if fn is not None:
            return fn
        with self._lock:
            if self._closed:
                raise internal("Servable has been unloaded")
            fn = self._callables.get(key)
            if fn is None:
                options = config_pb2.CallableOptions(feed=list(key[0]), fetch=list(key[1]))
                fn = self._session._make_callable_from_options(options)
                self._callables[key] = fn
            return fn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._callables.clear()
        self._session.close()


def load_servable(name: str, version: int, path: str, options: SessionOptions) -> Servable:
    """Load one SavedModel version (blocking: call it on a loader thread)."""
    config = config_pb2.ConfigProto(
        intra_op_parallelism_threads=options.intra_op_threads,
        inter_op_parallelism_threads=options.inter_op_threads,
        allow_soft_placement=True,
    )
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(options.tags), path)
    except tf.errors.OpError as exc:
        session.close()
        raise ServingError(code_from_number(exc.error_code), exc.message) from exc
    except (OSError, RuntimeError, ValueError) as exc:
        session.close()
        raise ServingError(code_from_number(2), f"{type(exc).__name__}: {exc}") from exc
    graph.finalize()
    log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
    return Servable(name, version, path, meta_graph, session)


def close_servable(servable: Servable) -> None:
    servable.close()
    log.info("Done unloading servable version {name: %s version: %d}", servable.name, servable.version)
