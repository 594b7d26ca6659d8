#!/usr/bin/env bash
# GPU check for `infergate agent`, for a machine with an NVIDIA GPU and driver.
#
# Starts the agent from this source tree (python -m gateway.commands.agent, nothing else of the project is
# needed), scrapes /metrics and asserts that NVML is available and that every
# DCGM_FI_DEV_GPU_UTIL sample lies in 0..100. Prints what it read next to nvidia-smi's view.
#
# Needs python3 (>= 3.10). If aiohttp or nvidia-ml-py are not importable it installs them with
# `pip install --target` into a temporary folder (WHEELS=DIR installs offline from a wheel folder).
# Exit status: 0 pass, 1 check failed, 2 setup failed.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if ! "$PY" -c 'import aiohttp, pynvml' 2>/dev/null; then
    echo "gpu_check: installing aiohttp prometheus-client nvidia-ml-py into $work/site"
    pip_args=(install --quiet --disable-pip-version-check --target "$work/site")
    if [[ -n "${WHEELS:-}" ]]; then pip_args+=(--no-index --find-links "$WHEELS"); fi
    if ! "$PY" -m pip "${pip_args[@]}" aiohttp prometheus-client nvidia-ml-py; then
        echo "gpu_check: SETUP FAILED: could not install the agent's dependencies" >&2
        exit 2
    fi
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -m gateway.commands.agent --listen 127.0.0.1:0 --interval 0.5 >"$work/out" 2>"$work/err" &
pid=$!
url=""
for _ in $(seq 1 300); do
    url=$(awk '/listening on/ {print $NF; exit}' "$work/out")
    [[ -n "$url" ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
done
if [[ -z "$url" ]]; then
    echo "gpu_check: SETUP FAILED: the agent did not start" >&2
    cat "$work/err" >&2
    exit 2
fi
sleep 1.5  # two sampling intervals, so the CPU figure exists as well

status=0
"$PY" - "$url" <<'PYEOF' || status=$?
import sys
import urllib.request

url = sys.argv[1]
text = urllib.request.urlopen(url, timeout=10).read().decode()
samples = {}
for line in text.splitlines():
    if line and not line.startswith("#"):
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0]
        samples.setdefault(name, []).append((head, float(value)))
try:
    from prometheus_client.parser import text_string_to_metric_families
    families = [f.name for f in text_string_to_metric_families(text)]
    print(f"gpu_check: exposition parses ({len(families)} families)")
except ImportError:
    print("gpu_check: prometheus-client not importable, skipped the strict parse")

failures = []
nvml = samples.get("infergate_agent_nvml_available", [("", -1.0)])[0][1]
if nvml != 1.0:
    failures.append(f"infergate_agent_nvml_available is {nvml}, expected 1")
util = samples.get("DCGM_FI_DEV_GPU_UTIL", [])
if not util:
    failures.append("no DCGM_FI_DEV_GPU_UTIL sample")
for head, value in util:
    print(f"gpu_check: {head} {value:g}")
    if not 0.0 <= value <= 100.0:
        failures.append(f"{head} = {value} outside 0..100")
for name in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "infergate_agent_cpu_util"):
    got = samples.get(name, [])
    if not got:
        failures.append(f"no {name} sample")
    for head, value in got:
        print(f"gpu_check: {head} {value:g}")
for f in failures:
    print(f"gpu_check: FAIL: {f}")
sys.exit(1 if failures else 0)
PYEOF

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.free --format=csv || true
fi
echo "gpu_check: agent log:"
sed 's/^/  /' "$work/err"
if [[ $status -eq 0 ]]; then echo "gpu_check: PASS"; else echo "gpu_check: FAIL"; fi
exit "$status"
