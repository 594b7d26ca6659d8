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
