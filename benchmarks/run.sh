#!/bin/sh
# The benchmark in one command: ./benchmarks/run.sh [--duration S] [--reps N] ...
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m benchmarks "$@"
