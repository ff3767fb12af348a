#!/usr/bin/env bash
# Prepare the GPU run (bench/run_gpu.sh) where the package registries are reachable, before a GPU
# session asks for the machine:
#   1. download the wheels the lent machine lacks, for its Python 3.12 (bench/gpu/wheels.py lists
#      them), into .whl/ (git-ignored; the device call carries it: carry=[".whl"]);
#   2. build the cuFFT forwarding shim .whl/lib/libcufft.so.11 from bench/gpu/cufft_forward.c;
#   3. check: one wheel of each, the shim exports every cuFFT symbol ASTRA binds, every pytest
#      selection of the plan collects cases here, and what travels stays under 64 MiB.
# bench/gpu/prepare.sh --check does step 3 alone (it lists what would travel and its size).
# PYTHON names the interpreter whose pip downloads (default: python3); any Python will do, the
# wheels are chosen for CPython 3.12 whatever runs pip.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}

if [ "${1:-}" != "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # one version of each: a folder holding two makes the machine's install stop
  # shellcheck disable=SC2046
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp" $("$PY" bench/gpu/wheels.py --list)
  mkdir -p .whl/lib
  rm -f .whl/*.whl
  mv "$tmp"/*.whl .whl/
  cc -shared -fPIC -O2 -Wall -o .whl/lib/libcufft.so.11 bench/gpu/cufft_forward.c \
    -Wl,--version-script=bench/gpu/cufft_forward.map -Wl,-soname,libcufft.so.11 -ldl
  echo "prepared .whl/:"
  ls -l .whl .whl/lib
fi
"$PY" bench/gpu/wheels.py --verify .whl
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" bench/gpu/plan.py check --wheels
