"""Test SavedModels made once and shared: by every test of a session and by later sessions.

The models are written by ``python -m replica.testmodels`` in a subprocess, so a test process
never imports TensorFlow. They land in a cache folder under the system temp dir whose name
carries a hash of replica/testmodels.py, so a changed generator gets a fresh folder; a file lock
makes concurrent test workers wait for one writer. Treat the folder as read-only: a test that
adds or removes versions copies what it needs into its own tmp_path first.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from tests.support.procs import REPO_ROOT

_READY = ".ready"


def _generator_hash() -> str:
    source = (REPO_ROOT / "replica" / "testmodels.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


def ensure_test_models(dest: pathlib.Path, timeout: float = 180.0) -> pathlib.Path:
    """Make half_plus_two/{1,2} and embed/1 under ``dest`` unless they are already complete."""
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / _READY).exists():
        return dest
    with open(dest.parent / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / _READY).exists():
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            result = subprocess.run(
                [sys.executable, "-m", "replica.testmodels", str(dest)],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if result.returncode != 0:
                raise RuntimeError(f"make-test-models failed ({result.returncode}):\n{result.stderr[-4000:]}")
            (dest / _READY).write_text("ok\n")
    return dest


def shared_models_dir() -> pathlib.Path:
    """The cached models folder for the current generator (made on first use)."""
    root = pathlib.Path(tempfile.gettempdir()) / f"infergate-test-models-{_generator_hash()}"
    return ensure_test_models(root)


def write_model_config(path: pathlib.Path, models: pathlib.Path, *, labels: bool = True) -> pathlib.Path:
    """A text-proto ModelServerConfig serving half_plus_two (all versions, optionally labelled
    stable=1 and canary=2) and embed from ``models``. Labels on versions that are not loaded yet
    need ``--allow_version_labels_for_unavailable_models`` at start-up, as in TF Serving."""
    label_lines = (
        '    version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }\n'
        if labels
        else ""
    )
    path.write_text(
        "model_config_list {\n"
        "  config {\n"
        '    name: "half_plus_two"\n'
        f'    base_path: "{models / "half_plus_two"}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { all {} }\n"
        f"{label_lines}"
        "  }\n"
        "  config {\n"
        '    name: "embed"\n'
        f'    base_path: "{models / "embed"}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )
    return path


def add_version(src: pathlib.Path, base: pathlib.Path, version: int) -> pathlib.Path:
    """Copy a version folder into ``base`` as ``version``, appearing at once (copy, then rename)."""
    staging = base / f".staging-{version}"
    shutil.copytree(src, staging)
    return staging.rename(base / str(version))
