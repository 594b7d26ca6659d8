"""Install as users do: the wheel alone, in a clean virtual environment, must run the gateway.

What must always hold:
- every third-party module that gateway/ and policies/ import at run time belongs to a
  distribution that pyproject.toml's [project].dependencies declares; one imported only for an
  optional feature (inside ``try: ... except ImportError``) is declared there or in an extra;
  replica/ may also use the `replica` extra (static check, no processes);
- the wheel built the way the Dockerfile builds it, installed with only its declared
  dependencies (no extras) in a fresh venv, gives an ``infergate run`` that serves REST and gRPC
  predicts in front of a real replica, on both data-path engines, and serves its dashboard
  (package data); that venv holds no TensorFlow.

The dev venv hides undeclared dependencies (scripts/setup.sh used to install httptools and hpack
by name); only a clean install shows them. The replica and the gRPC client come from the dev
venv, which has TensorFlow.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml

from tests.support.models import write_model_config
from tests.support.procs import (
    REPO_ROOT,
    ManagedProcess,
    ReplicaProc,
    free_port,
    http_get,
    http_post,
    start_replica,
)

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# Generous: on a 2-core CI machine building the wheel in an isolated environment and installing
# grpcio, numpy, aiohttp and the rest from the wheel cache or PyPI takes minutes.
INSTALL_TIMEOUT_S = 900
BODY = {"instances": [1.0, 2.0, 5.0]}
V1 = [2.5, 3.0, 4.5]


# ------------------------------------------------------------------ imports -> declarations


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"pyproject.toml: cannot read a name in requirement {requirement!r}"
    return normalise(match.group(1))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(names in [project].dependencies, {extra: names}), PEP 503-normalised."""
    project = PYPROJECT["project"]
    required = {requirement_name(r) for r in project.get("dependencies", [])}
    extras = {
        extra: {requirement_name(r) for r in reqs}
        for extra, reqs in project.get("optional-dependencies", {}).items()
    }
    return required, extras


def first_party() -> set[str]:
    """Top-level packages the wheel ships ([tool.setuptools.packages.find].include)."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").split(".")[0] for pattern in include}


@dataclass(frozen=True)
class Imported:
    module: str  # top-level name, e.g. "yaml"
    path: pathlib.Path
    line: int
    optional: bool  # only reached inside ``try: ... except ImportError``

    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}
_DYNAMIC = {"import_module", "__import__"}


def _catches_import_error(node: ast.Try | ast.TryStar) -> bool:
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(k, ast.Name) and k.id in _IMPORT_ERRORS for k in kinds):
            return True
    return False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@dataclass
class _ModuleScan:
    """The imports of one file. Rules: ``if TYPE_CHECKING:`` bodies never run, so are skipped;
    ``importlib.import_module("x")`` with a literal counts as importing x; an import is optional
    when it sits in a ``try`` that catches ImportError, or in a function of the same file whose
    every call (by name) sits in such a ``try`` (gateway's agent loads pynvml that way)."""

    path: pathlib.Path
    found: list[tuple[str, int, bool, str | None]] = field(default_factory=list)
    calls: dict[str, list[bool]] = field(default_factory=dict)

    def visit(self, node: ast.AST, guarded: bool, function: str | None) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child, guarded, function)
            return
        if isinstance(node, ast.Try | ast.TryStar) and _catches_import_error(node):
            for child in node.body:
                self.visit(child, True, function)
            for rest in [*node.handlers, *node.orelse, *node.finalbody]:
                self.visit(rest, guarded, function)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                self.found.append((alias.name.split(".")[0], node.lineno, guarded, function))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            self.found.append((node.module.split(".")[0], node.lineno, guarded, function))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in _DYNAMIC and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    self.found.append((node.args[0].value.split(".")[0], node.lineno, guarded, function))
            if isinstance(node.func, ast.Name):
                self.calls.setdefault(node.func.id, []).append(guarded)
        for inner in ast.iter_child_nodes(node):
            self.visit(inner, guarded, function)

    def imports(self) -> list[Imported]:
        out = []
        for module, line, guarded, function in self.found:
            sites = self.calls.get(function or "", [])
            optional = guarded or (bool(sites) and all(sites))
            out.append(Imported(module, self.path, line, optional))
        return out


def third_party_imports(folder: str) -> list[Imported]:
    """Every import of a module that is neither the standard library's nor first-party."""
    skip = set(sys.stdlib_module_names) | first_party() | {"__future__"}
    out: list[Imported] = []
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        scan = _ModuleScan(path)
        scan.visit(ast.parse(path.read_text(), filename=str(path)), False, None)
        out.extend(i for i in scan.imports() if i.module not in skip)
    return out


def undeclared(imports: list[Imported], required: set[str], optional: set[str]) -> list[str]:
    """One line per import whose distribution is not declared where it must be."""
    dists = importlib.metadata.packages_distributions()
    problems = []
    for imp in imports:
        names = {normalise(d) for d in dists.get(imp.module, [])}
        if not names:
            problems.append(
                f"{imp.where()}: imports `{imp.module}`, which no installed distribution provides: "
                "install it in the dev venv and declare it in pyproject.toml"
            )
            continue
        allowed = required | optional if imp.optional else required
        if not names & allowed:
            where = "[project].dependencies or an extra" if imp.optional else "[project].dependencies"
            problems.append(
                f"{imp.where()}: imports `{imp.module}` (distribution {', '.join(sorted(names))}), "
                f"which pyproject.toml's {where} does not declare"
            )
    return problems


def test_the_import_scan_sees_what_it_must() -> None:
    """The scanner itself: it finds plain, lazy, guarded and dynamic imports and skips
    TYPE_CHECKING ones (else the declaration test below could pass by seeing nothing)."""
    by_module: dict[str, list[Imported]] = {}
    for imp in third_party_imports("gateway"):
        by_module.setdefault(imp.module, []).append(imp)
    assert {"aiohttp", "grpc", "httptools", "hpack", "yaml", "pydantic"} <= by_module.keys()
    assert not any(i.optional for i in by_module["httptools"])
    assert all(i.optional for i in by_module["uvloop"])  # try: import uvloop / except ImportError
    assert all(i.optional for i in by_module["pynvml"])  # importlib.import_module("pynvml")
    assert not any(i.optional for i in by_module["numpy"])  # lazy, yet needed by the similarity cache


@pytest.mark.parametrize("folder", ["gateway", "policies"])
def test_every_gateway_import_is_declared(folder: str) -> None:
    required, extras = declared()
    features = set().union(*(names for extra, names in extras.items() if extra != "test"))
    problems = undeclared(third_party_imports(folder), required, features)
    assert not problems, "undeclared run-time dependencies:\n" + "\n".join(problems)


def test_every_replica_import_is_declared_with_the_replica_extra() -> None:
    required, extras = declared()
    problems = undeclared(third_party_imports("replica"), required | extras["replica"], set())
    assert not problems, "undeclared replica dependencies:\n" + "\n".join(problems)


# ------------------------------------------------------------------ the wheel in a clean venv


@dataclass(frozen=True)
class CleanVenv:
    root: pathlib.Path
    python: pathlib.Path
    infergate: pathlib.Path
    wheel: pathlib.Path
    env: dict[str, str]
    seconds: dict[str, float]


def clean_env() -> dict[str, str]:
    """The environment without anything that would let the dev venv or the checkout leak in."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(argv: list[str | os.PathLike[str]], *, env: dict[str, str], cwd: pathlib.Path,
        timeout: float = INSTALL_TIMEOUT_S) -> str:
    """Run to completion; fail with the command and its output's tail unless it exits 0."""
    result = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"`{shlex.join(str(a) for a in argv)}` exited with {result.returncode}:\n{output[-6000:]}"
    )
    return result.stdout


def copy_build_context(dest: pathlib.Path) -> None:
    """Copy what the Dockerfile's build stage COPYs (before its first RUN), so a source the
    image needs but the Dockerfile forgets fails here too."""
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    copies = []
    for line in lines:
        words = line.split()
        if words[:1] == ["RUN"]:
            break
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copies.append(words[1:])
    assert copies, "Dockerfile: no COPY before the first RUN of the build stage"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for *sources, target in copies:
        for source in sources:
            src = REPO_ROOT / source
            dst = dest / target / src.name if target.endswith("/") or len(sources) > 1 else dest / target
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=ignore)
            else:
                shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CleanVenv]:
    root = tmp_path_factory.mktemp("wheel")
    env = clean_env()
    seconds: dict[str, float] = {}
    start = time.monotonic()
    context = root / "src"
    copy_build_context(context)
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], env=env, cwd=root)
    python = venv / "bin" / "python"
    seconds["venv"] = time.monotonic() - start
    # As the Dockerfile: `pip wheel` of the sources (with build isolation, as users get), then
    # install only that wheel; pip brings its declared dependencies and no extras.
    mark = time.monotonic()
    run([python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", root / "wheels", context],
        env=env, cwd=root)
    wheels = sorted((root / "wheels").glob("infergate-*.whl"))
    assert len(wheels) == 1, wheels
    seconds["wheel"] = time.monotonic() - mark
    mark = time.monotonic()
    run([python, "-m", "pip", "install", wheels[0]], env=env, cwd=root)
    seconds["install"] = time.monotonic() - mark
    seconds["total"] = time.monotonic() - start
    print(f"clean venv: {json.dumps({k: round(v, 1) for k, v in seconds.items()})}")
    yield CleanVenv(root, python, venv / "bin" / "infergate", wheels[0], env, seconds)
    shutil.rmtree(venv, ignore_errors=True)  # ~300 MB; the wheel and the logs stay for a look


@pytest.fixture(scope="module")
def replica(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    config = write_model_config(tmp_path_factory.mktemp("replica") / "models.config", models_dir,
                                labels=False)
    proc = start_replica(config, timeout=180.0)
    try:
        proc.wait_available("half_plus_two", 1, timeout=180.0)
        yield proc
    finally:
        proc.stop()


@dataclass
class InstalledGateway:
    proc: ManagedProcess
    rest_port: int
    grpc_port: int
    admin_port: int


@pytest.fixture(scope="module", params=["native", "compat"])
def gateway(
    request: pytest.FixtureRequest, clean_venv: CleanVenv, replica: ReplicaProc
) -> Iterator[InstalledGateway]:
    """`infergate run` of the clean venv (its console script, cwd outside the checkout)."""
    engine: str = request.param
    rest, grpc_port, admin = free_port(), free_port(), free_port()
    cfg = {
        "listen": {"engine": engine, "rest": f"127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc_port}",
                   "admin": f"127.0.0.1:{admin}"},
        "replicas": [{"name": "r0", "rest": f"127.0.0.1:{replica.rest_port}",
                      "grpc": replica.grpc_addr,
                      "metrics": f"{replica.rest_url}/monitoring/prometheus/metrics"}],
        "health": {"interval_s": 0.5, "timeout_s": 2.0, "metrics_interval_s": 0.5},
    }
    workdir = clean_venv.root / f"gateway-{engine}"
    workdir.mkdir(exist_ok=True)
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = ManagedProcess(
        [str(clean_venv.infergate), "run", "--config", str(config)],
        name=f"wheel-gateway-{engine}",
        env={**clean_venv.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": ""},
        cwd=workdir,
        log_path=workdir / "gateway.log",
    )
    try:
        proc.wait_for_url(f"http://127.0.0.1:{admin}/readyz", timeout=120.0)
        yield InstalledGateway(proc, rest, grpc_port, admin)
    finally:
        proc.stop(timeout=20.0)


@pytest.mark.integration
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_clean_venv_runs_the_wheel_without_tensorflow(clean_venv: CleanVenv) -> None:
    probe = (
        "import importlib.metadata as md, importlib.util as u, json, gateway\n"
        "print(json.dumps({'gateway': gateway.__file__,\n"
        "  'modules': [m for m in ('tensorflow', 'tensorflow_serving') if u.find_spec(m)],\n"
        "  'dists': sorted(d.metadata['Name'] for d in md.distributions()\n"
        "                  if d.metadata['Name'].lower().startswith('tensorflow'))}))\n"
    )
    seen = json.loads(run([clean_venv.python, "-c", probe], env=clean_venv.env, cwd=clean_venv.root,
                          timeout=120))
    venv = clean_venv.python.parent.parent
    assert pathlib.Path(seen["gateway"]).is_relative_to(venv), seen["gateway"]  # not the checkout
    assert seen["modules"] == [] and seen["dists"] == [], seen


@pytest.mark.integration
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_installed_command_validates_the_shipped_config(clean_venv: CleanVenv) -> None:
    out = run([clean_venv.infergate, "validate", REPO_ROOT / "config" / "gateway.yaml"],
              env=clean_venv.env, cwd=clean_venv.root, timeout=120)
    assert ": ok:" in out


@pytest.mark.integration
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 600)
def test_rest_predict_and_dashboard_through_the_installed_gateway(gateway: InstalledGateway) -> None:
    status, body = http_post(
        f"http://127.0.0.1:{gateway.rest_port}/v1/models/half_plus_two/versions/1:predict", BODY,
        timeout=30.0)
    assert status == 200, body[-2000:]
    assert json.loads(body)["predictions"] == V1
    status, page = http_get(f"http://127.0.0.1:{gateway.admin_port}/", timeout=30.0)
    assert status == 200 and b"<html" in page.lower(), (status, page[:500])  # package data shipped


@pytest.mark.integration
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 600)
def test_grpc_predict_through_the_installed_gateway(gateway: InstalledGateway) -> None:
    # Imported here, not at the top: they load TensorFlow, which the static tests above do not need.
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 1
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)])
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=BODY["instances"]))
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, timeout=30.0)
    assert list(answer.outputs["y"].float_val) == V1
    assert answer.model_spec.version.value == 1
