"""PSNR and SSIM against direct evaluations of their definitions."""
from __future__ import annotations

import math

import pytest
import torch

from unrolled3d.metrics import psnr, ssim


def _ssim_by_loops(x: torch.Tensor, y: torch.Tensor, data_range: float, sigma=1.5, radius=2) -> float:
    """SSIM straight from the definition: weighted window sums at every valid voxel (float64)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    w = w / w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    D, H, W = x.shape
    vals = []
    for k in range(radius, D - radius):
        for j in range(radius, H - radius):
            for i in range(radius, W - radius):
                a = x[k - radius:k + radius + 1, j - radius:j + radius + 1, i - radius:i + radius + 1]
                b = y[k - radius:k + radius + 1, j - radius:j + radius + 1, i - radius:i + radius + 1]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cab = (w * (a - ma) * (b - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(torch.stack(vals).mean())


def test_ssim_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((9, 8, 10), generator=gen, dtype=torch.float64)
    y = 0.7 * x + 0.2 * torch.rand((9, 8, 10), generator=gen, dtype=torch.float64) + 0.05
    ref = _ssim_by_loops(y, x, data_range=float(x.max() - x.min()))
    assert ssim(y, x, radius=2) == pytest.approx(ref, rel=1e-12)
    assert 0.2 < ref < 0.99  # a non-trivial value


def test_ssim_is_one_for_identical_volumes_and_falls_with_noise():
    x = torch.rand((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(1))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    noisy = [ssim(x + s * torch.randn_like(x), x) for s in (0.01, 0.1, 0.3)]
    assert noisy[0] > noisy[1] > noisy[2]


def test_psnr_matches_its_definition():
    x = torch.zeros(4, 4, 4)
    x[1:3, 1:3, 1:3] = 2.0
    e = x + 0.1
    assert psnr(e, x) == pytest.approx(10 * math.log10(4.0 / 0.01))
    assert psnr(x, x) == math.inf


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.zeros(12, 12, 12), torch.zeros(12, 12, 13))
    with pytest.raises(ValueError, match="longer than"):
        ssim(torch.zeros(8, 12, 12), torch.zeros(8, 12, 12))
    with pytest.raises(ValueError, match="data_range"):
        ssim(torch.zeros(12, 12, 12), torch.zeros(12, 12, 12))
