"""bench/experiments' baselines (issue 28): the layout mbirjax reads our volumes in, and the TV solver's
runs continued from checkpoints (mbirjax itself runs in its own environment, not here)."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.bench.experiments.baselines import TVPGD, volume_from_mbirjax, volume_to_mbirjax
from unrolled3d.physics import ConeBeamCT, standard_cone_beam


def test_our_volume_is_mbirjax_rows_cols_slices_with_y_mirrored():
    x = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 1, 3, 4, 5)  # (z, y, x)
    v = volume_to_mbirjax(x)
    assert v.shape == (4, 5, 3)  # (rows = -y, cols = x, slices = z)
    z, y, col = 2, 1, 3
    assert v[4 - 1 - y, col, z] == x[0, 0, z, y, col]
    assert torch.equal(volume_from_mbirjax(v), x)


def test_tv_runs_continued_from_checkpoints_are_one_long_run(one_thread):
    physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 2:6, 2:6, 3:5] = 1.0
    y = physics.A(x) + 0.01 * torch.randn(physics.A(x).shape, generator=torch.Generator().manual_seed(0))
    x0 = physics.A_dagger(y, window="hann")
    staged = TVPGD(0.01, inner=5).run(y, physics, x0, [3, 6])
    whole = TVPGD(0.01, inner=5).run(y, physics, x0, [6])
    torch.testing.assert_close(staged[6], whole[6], rtol=1e-5, atol=1e-6)
    # the iterations reduce the TV-regularised objective from the FDK start
    from deepinv.optim.prior import TVPrior

    def objective(u):
        return 0.5 * float((physics.A(u) - y).pow(2).sum()) + 0.01 * float(TVPrior().fn(u).sum())
    assert objective(whole[6]) < objective(staged[3]) < objective(x0)


def test_tv_refuses_a_non_positive_weight():
    with pytest.raises(ValueError, match="lam"):
        TVPGD(0.0)
