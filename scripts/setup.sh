#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with the gateway, the
# TF-Serving-compatible replica (TensorFlow CPU) and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
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
  .venv/bin/python -m pip install -q -e ".[test,gpu]" httptools hpack
} >"$log" 2>&1 || { tail -40 "$log"; echo "setup failed; see $log" >&2; exit 1; }
echo "$want" > "$stamp"
