#!/usr/bin/env bash
# The GPU checks, in one run, for the first session lent a GPU (see benchmarks/RESULTS.md).
# Installs the project if needed, runs the GPU tests, bench_fnaf.py at 320x320 with fastMRI's
# 32-channel U-Net in fp32 and bf16 (auto batch size), and bench_scaling.py; every figure goes
# to $OUT (or ./gpu-results) as JSON and a log. Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1

python3 -c "import mri_audit" 2>/dev/null || python3 -m pip install -q -e ".[test]"
python3 - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
PY

status=0
step() {  # name, command...: run one check, keep going on failure, remember it
    local name=$1; shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" || { echo "=== $name FAILED (exit $?)"; status=1; }
    echo "=== $name took $((SECONDS - start)) s"
}

step gpu-tests python3 -m pytest -q -p no:cacheprovider -k "gpu or cuda" tests/
step fnaf-320-fp32 python3 benchmarks/bench_fnaf.py --chans 32 --size 320 --slices 8 \
    --device cuda --repeats 3 --json "$out/bench_fnaf_320_fp32.json"
step fnaf-320-bf16 python3 benchmarks/bench_fnaf.py --chans 32 --size 320 --slices 8 \
    --device cuda --repeats 3 --precision bf16 --json "$out/bench_fnaf_320_bf16.json"
step fnaf-160 python3 benchmarks/bench_fnaf.py --chans 16 --size 160 --slices 16 \
    --device cuda --repeats 3 --json "$out/bench_fnaf_160.json"
step scaling python3 benchmarks/bench_scaling.py --max-procs 1 --device cuda \
    --json "$out/bench_scaling.json"
# verify --replay's tolerance: an audit on the GPU replayed on the GPU, the CPU, 1 thread, bf16.
step replay-cpu-vs-gpu python3 benchmarks/calibrate_replay.py --audit-device cuda \
    --volumes 2 --slices 2
exit $status
