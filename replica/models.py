"""Model versions on disk -> loaded servables: the replica's version manager.

It follows TF Serving's ServerCore with a FileSystemStoragePathSource and the default
AvailabilityPreservingPolicy:
- a model's versions are the numeric folders under its base path (holding a saved_model.pb or
  .pbtxt; a folder still being written is not a version yet); the version policy picks the
  aspired ones (latest N, default 1; all; specific);
- new aspired versions load highest first (START -> LOADING -> AVAILABLE, or END with the load
  error); versions no longer aspired unload (UNLOADING -> END) once an aspired version is
  AVAILABLE, so a model is never left without a serving version while its successor loads;
- END versions stay in the status; a version whose load failed is not retried until its folder
  goes away and comes back;
- labels live in the model config and, as in TF Serving, may only point at AVAILABLE versions
  unless --allow_version_labels_for_unavailable_models is given.

Invariants: every state change happens on the event loop thread, under ``_lock`` for changes that
await; loads and unloads run on the loader executor, directory listings on a worker thread. A
servable is closed only after its in-flight count drops to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from tensorflow_serving.config import model_server_config_pb2

from replica.errors import ServingError, failed_precondition, invalid_argument, not_found

log = logging.getLogger("replica.models")

_VERSION_DIR = re.compile(r"^\s*[+-]?\d+\s*$")
_DRAIN_TIMEOUT_S = 30.0


class State(enum.IntEnum):
    """ModelVersionStatus.State."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


class Loaded(Protocol):
    """What the manager needs from a loaded model (replica.servable.Servable)."""

    name: str
    version: int
    inflight: int


@dataclass
class VersionRecord:
    version: int
    state: State
    servable: Loaded | None = None
    error: ServingError | None = None


@dataclass
class ModelEntry:
    name: str
    config: model_server_config_pb2.ModelConfig | None = None
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)


def list_versions(base_path: str) -> dict[int, str]:
    """Numeric version folders under ``base_path`` that hold a SavedModel (blocking)."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in sorted(names):
        if not _VERSION_DIR.match(name):
            continue
        path = os.path.join(base_path, name)
        if os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
            os.path.join(path, "saved_model.pbtxt")
        ):
            found[int(name)] = path
    return found


def aspired_versions(config: model_server_config_pb2.ModelConfig, on_disk: dict[int, str]) -> dict[int, str]:
    """FileSystemStoragePathSource's version policy: latest N (default 1), all, or specific."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return dict(on_disk)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return {v: p for v, p in on_disk.items() if v in wanted}
    count = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    newest = sorted(on_disk, reverse=True)[:count]
    return {v: on_disk[v] for v in newest}


class ModelManager:
    """Owns every model's versions, their states and the label map."""

    def __init__(
        self,
        *,
        load: Callable[[str, int, str], Loaded],
        unload: Callable[[Loaded], None],
        loader: Executor,
        allow_labels_for_unavailable: bool = False,
    ) -> None:
        self._load_fn = load
        self._unload_fn = unload
        self._loader = loader
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._models: dict[str, ModelEntry] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._config = model_server_config_pb2.ModelServerConfig()
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ lookups (event loop only)

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        return self._config

    def resolve(self, name: str, version: int | None, label: str | None) -> Loaded:
        """ServerCore::GetServableHandle for a ModelSpec's name, version or label."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        if label is not None:
            labelled = self._labels.get(name, {}).get(label)
            if labelled is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labelled
        entry = self._models.get(name)
        records = entry.versions if entry is not None else {}
        if version is None:
            available = [r for r in records.values() if r.state == State.AVAILABLE]
            if not available:
                raise not_found(f"Servable not found for request: Latest({name})")
            servable = max(available, key=lambda r: r.version).servable
        else:
            record = records.get(version)
            if record is None or record.state != State.AVAILABLE:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            servable = record.servable
        assert servable is not None  # AVAILABLE records always hold their servable
        return servable

    def status(self, name: str, version: int | None) -> list[VersionRecord]:
        """GetModelStatusImpl: one version, or every version newest first (END ones included)."""
        entry = self._models.get(name)
        records = entry.versions if entry is not None else {}
        if version is not None:
            record = records.get(version)
            if record is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [record]
        if not records:
            raise not_found(f"Could not find any versions of model {name}")
        return [records[v] for v in sorted(records, reverse=True)]

    def labels(self, name: str) -> dict[str, int]:
        return dict(self._labels.get(name, {}))

    @contextlib.contextmanager
    def hold(self, servable: Loaded) -> Iterator[Loaded]:
        """Keep ``servable`` loaded while a request uses it."""
        servable.inflight += 1
        try:
            yield servable
        finally:
            servable.inflight -= 1

    # ------------------------------------------------------------ changes

    async def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """ServerCore::ReloadConfig: validate, update labels, then bring every model in line."""
        async with self._lock:
            kind = config.WhichOneof("config")
            if kind is None:
                log.info("Taking no action for empty config.")
                return
            if kind != "model_config_list":
                raise invalid_argument("Invalid ServerModelConfig")
            self._validate(config.model_config_list)
            self._labels = self._label_map(config.model_config_list)
            self._config = model_server_config_pb2.ModelServerConfig()
            self._config.CopyFrom(config)
            configured = {mc.name: mc for mc in config.model_config_list.config}
            for name, mc in configured.items():
                self._models.setdefault(name, ModelEntry(name)).config = mc
            for name, entry in self._models.items():
                if name not in configured:
                    entry.config = None
            log.info("Adding/updating models.")
            for entry in list(self._models.values()):
                await self._reconcile(entry)
            log.info("Finished adding/updating models")

    async def poll(self) -> None:
        """One pass of the file-system poller over every model."""
        async with self._lock:
            for entry in list(self._models.values()):
                await self._reconcile(entry)

    async def run_poller(self, wait_s: float) -> None:
        while True:
            await asyncio.sleep(wait_s)
            try:
                await self.poll()
            except (ServingError, OSError) as exc:
                log.error("Model poll failed: %s", exc)

    async def unload_all(self) -> None:
        async with self._lock:
            for entry in self._models.values():
                for record in list(entry.versions.values()):
                    if record.state == State.AVAILABLE:
                        await self._unload(entry, record)

    def startup_failures(self) -> list[str]:
        """Configured models with no AVAILABLE version because a load failed."""
        failures = []
        for entry in self._models.values():
            if entry.config is None or not entry.failed:
                continue
            if not any(r.state == State.AVAILABLE for r in entry.versions.values()):
                errors = "; ".join(
                    f"version {r.version}: {r.error.message}"
                    for r in entry.versions.values()
                    if r.error is not None
                )
                failures.append(f"{entry.name} ({errors})")
        return failures

    # ------------------------------------------------------------ internals

    def _validate(self, config_list: model_server_config_pb2.ModelConfigList) -> None:
        names: set[str] = set()
        for mc in config_list.config:
            if mc.name in names:
                raise invalid_argument(f"Illegal to list model {mc.name} multiple times in config list")
            names.add(mc.name)
        for mc in config_list.config:
            if not os.path.isabs(mc.base_path) and "://" not in mc.base_path:
                raise invalid_argument(
                    f"Expected model {mc.name} to have an absolute path or URI; "
                    f"got base_path()={mc.base_path}"
                )

    def _label_map(self, config_list: model_server_config_pb2.ModelConfigList) -> dict[str, dict[str, int]]:
        """ServerCore::UpdateModelVersionLabelMap."""
        new_map: dict[str, dict[str, int]] = {}
        for mc in config_list.config:
            entry = self._models.get(mc.name)
            for label, version in mc.version_labels.items():
                allowed = False
                if self._allow_unavailable_labels:
                    existing = self._labels.get(mc.name, {}).get(label)
                    allowed = existing is None or existing == version
                record = entry.versions.get(version) if entry is not None else None
                if not allowed and (record is None or record.state != State.AVAILABLE):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {mc.name}, "
                        "which is not currently available for inference"
                    )
                new_map.setdefault(mc.name, {})[label] = version
        return new_map

    async def _reconcile(self, entry: ModelEntry) -> None:
        if entry.config is None:
            aspired: dict[int, str] = {}
        else:
            on_disk = await asyncio.to_thread(list_versions, entry.config.base_path)
            if not on_disk:
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget to name "
                    "your leaf directory as a number (eg. '/1/')?",
                    entry.name,
                    entry.config.base_path,
                )
            aspired = aspired_versions(entry.config, on_disk)
        entry.failed &= set(aspired)
        for version in sorted(aspired, reverse=True):
            record = entry.versions.get(version)
            if (record is not None and record.state != State.END) or version in entry.failed:
                continue
            await self._load(entry, version, aspired[version])
        serving_unaspired = sorted(
            (r for r in entry.versions.values() if r.state == State.AVAILABLE and r.version not in aspired),
            key=lambda r: r.version,
        )
        aspired_available = any(
            entry.versions[v].state == State.AVAILABLE for v in aspired if v in entry.versions
        )
        if not aspired or aspired_available:
            to_unload = serving_unaspired
        else:
            to_unload = serving_unaspired[:-1]  # keep one serving until a successor is up
        for record in to_unload:
            await self._unload(entry, record)

    async def _load(self, entry: ModelEntry, version: int, path: str) -> None:
        record = VersionRecord(version, State.START)
        entry.versions[version] = record
        log.info("Approving load for servable version {name: %s version: %d}", entry.name, version)
        record.state = State.LOADING
        loop = asyncio.get_running_loop()
        try:
            servable = await loop.run_in_executor(self._loader, self._load_fn, entry.name, version, path)
        except ServingError as exc:
            record.state = State.END
            record.error = exc
            entry.failed.add(version)
            log.error("Loading servable: {name: %s version: %d} failed: %s", entry.name, version, exc)
            return
        record.servable = servable
        record.state = State.AVAILABLE

    async def _unload(self, entry: ModelEntry, record: VersionRecord) -> None:
        servable = record.servable
        record.state = State.UNLOADING
        record.servable = None
        if servable is not None:
            waited = 0.0
            while servable.inflight > 0 and waited < _DRAIN_TIMEOUT_S:
                await asyncio.sleep(0.005)
                waited += 0.005
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._loader, self._unload_fn, servable)
        record.state = State.END
