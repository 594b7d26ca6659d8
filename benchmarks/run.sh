#!/bin/sh
# The benchmark in one command: ./benchmarks/run.sh [--duration S] [--reps N] ...
# The fleet benchmark: ./benchmarks/run.sh fleet [--quick] ... (python -m benchmarks.fleet)
# Installs its load generators and baselines (wrk, h2load, nginx, HAProxy for
# `python -m benchmarks.fleet`) when absent and run as root.
cd "$(dirname "$0")/.." || exit 1
need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v h2load >/dev/null 2>&1 || need="$need nghttp2-client"
[ -x /usr/sbin/nginx ] || need="$need nginx-light"
[ -x /usr/sbin/haproxy ] || need="$need haproxy"
if [ -n "$need" ] && [ "$(id -u)" = 0 ]; then
  echo "installing:$need"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/dev/null 2>&1 \
    || echo "could not install$need"
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ "$1" = fleet ]; then
  shift
  exec "$PY" -m benchmarks.fleet "$@"
fi
exec "$PY" -m benchmarks "$@"
