#!/usr/bin/env bash
# The test suite: unit tests, then integration tests against real processes (replicas serving
# real SavedModels, Redis, the gateway as a subprocess). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Real Redis for the cache and rollout-state tests; Chromium for the dashboard's browser test;
# openssl and nginx for the TLS tests. Installed when absent and we may (root, as in CI).
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
[ -x /usr/bin/chromium ] || need="$need chromium"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
[ -x /usr/sbin/nginx ] || need="$need nginx-light"
if [ -n "$need" ] && [ "$(id -u)" = 0 ]; then
  echo "installing:$need"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/dev/null 2>&1 \
    || echo "could not install$need; the tests that need them will skip"
fi
bash scripts/setup.sh
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
