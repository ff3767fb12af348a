#!/usr/bin/env bash
# mbirjax (model-based iterative reconstruction with a qGGMRF prior, JAX on the CPU) in a virtual
# environment of its own: a peer of the quality bench, never a dependency of unrolled3d. The bench
# talks to it through files (bench/experiments/peers/mbirjax_recon.py, run with this venv's python).
#
#   bash bench/experiments/peers/setup_mbirjax.sh [VENV]     # default /work/.peers/mbirjax-venv
#
# then pass --mbirjax-python VENV/bin/python to bench/experiments/quality_peers.py. The versions of
# the committed figures: mbirjax 0.7.3 (pinned here), with the jax and jaxlib pip resolved for it
# (recorded in each result file).
set -euo pipefail
VENV="${1:-/work/.peers/mbirjax-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --retries 1 "mbirjax==0.7.3" jax jaxlib
JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import mbirjax  # noqa: F401 - fails here if the install is broken
print("mbirjax", version("mbirjax"), "jax", version("jax"), "jaxlib", version("jaxlib"))
PY
echo "peer ready: --mbirjax-python $VENV/bin/python"
