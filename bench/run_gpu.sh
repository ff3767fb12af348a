#!/usr/bin/env bash
# The GPU run on a lent machine: bare, no network, one command of at most 10 minutes, about 15
# minutes of device time in all. Prepared beforehand by bench/gpu/prepare.sh (the wheels the
# machine lacks and the cuFFT shim, in .whl/), then run there by the device tool as
#     command: bash bench/run_gpu.sh      carry: [".whl"]      timeout_s: 540
# It installs the carried wheels, points ASTRA at the CUDA 12 runtime and at the cuFFT shim
# (forwarding to the cuFFT 12 of torch's CUDA 13), then runs bench/gpu/plan.py: the build, the
# CUDA tests and the benchmarks in order of value, under one deadline (480 s from the start of
# this script), each step under `timeout -s INT -k 10` with its own budget. $OUT receives
# run_<card>.log and at most 7 <step>_<card>.json files, <card> from nvidia-smi (e.g. h100_80gb_hbm3).
set -uo pipefail
T0=$(date +%s.%N)
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
card=$(python3 -c 'import sys; sys.path.insert(0, "bench/gpu"); import plan; print(plan.card_slug(plan.card_name()))')
LOG="$OUT/run_${card}.log"
say() { echo "$*" | tee -a "$LOG"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee -a "$LOG"

# 1. the wheels the machine lacks (deepinv, natsort, astra-toolbox, the CUDA 12 runtime)
if ! ls .whl/*.whl > /dev/null 2>&1 || ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl >> "$LOG" 2>&1; then
  say "no carried wheels could be installed: run bench/gpu/prepare.sh here first, and carry .whl"
  exit 1
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

# 2. ASTRA's libraries: libcudart.so.12 from its wheel, libcufft.so.11 = the shim, forwarding to
#    torch's cuFFT 12 (its path in U3D_CUFFT_LIBRARY)
CUFFT12=$(python3 - <<'PY'
import glob, os, site, torch
roots = site.getsitepackages() + [os.path.dirname(os.path.dirname(torch.__file__))]
hits = [h for r in roots for p in ("nvidia/cu13/lib/libcufft.so.12", "nvidia/cufft/lib/libcufft.so.12")
        for h in glob.glob(os.path.join(r, p))]
print(hits[0] if hits else "")
PY
)
export U3D_CUFFT_LIBRARY="$CUFFT12"
SHIM_DIR="$PWD/.whl/lib"
if ! python3 -c "import ctypes; ctypes.CDLL('$SHIM_DIR/libcufft.so.11')" 2>> "$LOG"; then
  say "the carried cuFFT shim does not load here; rebuilding it with this machine's cc"
  SHIM_DIR=/tmp/u3d_shim
  mkdir -p "$SHIM_DIR"
  cc -shared -fPIC -O2 -o "$SHIM_DIR/libcufft.so.11" bench/gpu/cufft_forward.c \
    -Wl,--version-script=bench/gpu/cufft_forward.map -Wl,-soname,libcufft.so.11 -ldl >> "$LOG" 2>&1 \
    || say "no shim: ASTRA's FDK_CUDA will fail (its projectors do not call cuFFT)"
fi
export LD_LIBRARY_PATH="$SHIM_DIR:/tmp/site/nvidia/cuda_runtime/lib${CUFFT12:+:$(dirname "$CUFFT12")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "cuFFT 12: ${CUFFT12:-not found}; shim: $SHIM_DIR"
python3 -c "import astra; print('astra', astra.__version__, 'cuda', astra.use_cuda())" >> "$LOG" 2>&1 \
  || say "astra does not import: its benchmark cases will be skipped"

# 3. the plan (bench/gpu/plan.py): build, CUDA tests, benchmarks, under the deadline
python3 bench/gpu/plan.py run --out "$OUT" --t0 "$T0"
