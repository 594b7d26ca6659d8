#!/usr/bin/env bash
# The test suite: unit tests, then integration tests against real processes (replicas serving
# real SavedModels, Redis, the gateway as a subprocess). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 || true
  fi
fi
bash scripts/setup.sh
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
