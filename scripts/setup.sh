#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with the gateway, the
# TF-Serving-compatible replica (TensorFlow CPU) and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter: the system's python3.11 first, when it can make a virtual environment.
# Distribution builds are compiled with optimisations a plain source build (pyenv's default)
# lacks, as is the python:3.11-slim image of the Dockerfile; on the benchmark machine the
# gateway's per-call Python ran about 20 % faster on Debian's python3.11 (docs/benchmarks.md).
pick() {
  for c in "$@"; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  echo python3
}
PY=${PYTHON:-$(pick /usr/bin/python3.11 python3.11 python3)}
stamp=.venv/.infergate-setup
want="$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/setup.log
echo "setting up .venv (log: $log) ..."
{
  .venv/bin/python -m pip install -q --upgrade pip || true
  # tensorflow-serving-api depends on the full `tensorflow` distribution; install it without
  # dependencies next to tensorflow-cpu, which provides the same modules.
  .venv/bin/python -m pip install -q "tensorflow-cpu==2.21.0" numpy &&
  .venv/bin/python -m pip install -q --no-deps "tensorflow-serving-api==2.21.0" &&
  .venv/bin/python -m pip install -q -e ".[test,gpu,tracing,replay]"
} >"$log" 2>&1 || { tail -40 "$log"; echo "setup failed; see $log" >&2; exit 1; }
echo "$want" > "$stamp"
