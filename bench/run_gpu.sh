#!/usr/bin/env bash
# The GPU check run on a lent machine (see README "Benchmarks"): builds the extension there,
# runs the CUDA/Triton tests and the CUDA benchmarks, and writes logs and JSON to $OUT.
# Expects wheels in .whl/ (deepinv, natsort, astra-toolbox, nvidia-cuda-runtime-cu12) and a
# cuFFT 11 stub in .whl/stub (ASTRA's projectors do not use cuFFT; its wheel links it).
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH="$PWD/.whl/stub:/tmp/site/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}"
t0=$(date +%s)
TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -m pip install -q --no-index --no-build-isolation --no-deps -e . \
  > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -m unrolled3d.cli info | tee -a "$OUT/gpu.txt"
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_projector.py tests/test_masked_gather.py tests/test_spectral_filter.py tests/test_masked_scatter_add.py tests/test_fused_chain.py \
  tests/test_build.py tests/test_cone_beam.py tests/test_normal.py -k "not fit_on_cone_beam" 2>&1 | tee "$OUT/tests.log" | tail -15
# the gather backprojector's CUDA tests (against the CPU, chunked views, determinism)
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_backproject_gather.py -k "cuda" 2>&1 \
  | tee "$OUT/tests_gather.log" | tail -5
# projector: forward, back ("cuda" = default scatter, "cuda_gather") and ASTRA at 256^3 and 512^3
for suite in projector fused normal; do
  limit=100; [ "$suite" = projector ] && limit=200
  timeout $limit python3 -m pytest -q -p no:cacheprovider "bench/test_bench_${suite}.py" -k "cuda" \
    --benchmark-json "$OUT/${suite}_cuda.json" --benchmark-columns=min,mean,rounds 2>&1 | tail -25
done
# partitioned vs full unrolled, memory and time of a training step (to 512^3) and of inference
# (to 256^3); full unrolled is expected to run out of memory at the large sizes (recorded as oom)
timeout 240 python3 -m pytest -q -p no:cacheprovider bench/test_bench_partition.py -k "cuda" \
  --benchmark-json "$OUT/partition_cuda.json" --benchmark-columns=min,mean,rounds 2>&1 | tail -25
