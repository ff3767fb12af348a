"""Which implementation the fused ops run (:mod:`unrolled3d.ops.dispatch`)."""
import os

import pytest
import torch

from fused_testing import INTERP, PAD, PATCH, R32, VOL, rand
from unrolled3d import ops


def test_dispatch_rules():
    default = os.environ.get("UNROLLED3D_FUSED_BACKEND", "auto")
    assert ops.get_backend() == default
    assert ops.triton_enabled_for(torch.device("cpu")) == INTERP
    assert ops.triton_enabled_for(torch.device("cuda")) is True
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("cuda")
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == default
    if not INTERP:
        with ops.use_backend("triton"), pytest.raises(RuntimeError, match="cannot run on cpu"):
            ops.masked_gather(rand(VOL, R32), (0, 0, 0), PATCH, PAD)


def test_reference_backend_is_what_runs(monkeypatch):
    """The choice is read when the op runs: the twin is called under "reference"."""
    from unrolled3d.kernels import masked_gather as mg

    calls = []
    real = mg.masked_gather_ref
    monkeypatch.setattr(mg, "masked_gather_ref", lambda *a: calls.append(1) or real(*a))
    with ops.use_backend("reference"):
        ops.masked_gather(rand(VOL, R32), (0, 0, 0), PATCH, PAD)
    assert calls == [1]
