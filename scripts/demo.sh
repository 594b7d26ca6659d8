#!/usr/bin/env bash
# The demo: local TF-Serving-compatible replicas with real SavedModels, the gateway in front,
# sample traffic, and where to look. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/infergate demo "$@"
