"""PSNR and SSIM against direct evaluations of their definitions."""
from __future__ import annotations

import math

import pytest
import torch

from unrolled3d.metrics import VolumePSNR, VolumeSSIM, psnr, psnr_per_sample, ssim, ssim_per_sample


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


def test_per_sample_metrics_are_the_pooled_ones_of_each_item():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand((3, 2, 9, 8, 10), generator=gen, dtype=torch.float64)
    x[1] *= 4.0  # items of different ranges: each is scored with its own
    y = 0.8 * x + 0.1 * torch.rand(x.shape, generator=gen, dtype=torch.float64)
    per_ssim = ssim_per_sample(y, x, radius=2)
    per_psnr = psnr_per_sample(y, x)
    assert per_ssim.shape == per_psnr.shape == (3,)
    for i in range(3):
        r = float(x[i].max() - x[i].min())
        # SSIM's channels: the mean over the item's channels of the definition, computed by loops
        by_loops = sum(_ssim_by_loops(y[i, c], x[i, c], data_range=r) for c in range(2)) / 2
        assert float(per_ssim[i]) == pytest.approx(by_loops, rel=1e-12)
        assert float(per_psnr[i]) == pytest.approx(psnr(y[i], x[i]), rel=1e-12)
    assert len({round(float(v), 6) for v in per_psnr}) == 3  # not one pooled figure
    # as deepinv metrics (what a Trainer logs): the same values, reduced by deepinv on request
    torch.testing.assert_close(VolumeSSIM(radius=2)(y, x), per_ssim)
    torch.testing.assert_close(VolumePSNR(reduction="mean")(y, x), per_psnr.mean())
    assert VolumeSSIM().lower_better is False and VolumePSNR().lower_better is False
    with pytest.raises(ValueError, match="constant"):
        psnr_per_sample(y, torch.zeros_like(x))
    with pytest.raises(ValueError, match="batch axis"):
        ssim_per_sample(y[0, 0], x[0, 0], radius=2)


# ------------------------------------------------------------ the two SSIM definitions (issue 30)
def _pair(shape=(2, 1, 14, 15, 16), seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    x[1] *= 3.0  # items of different ranges
    return 0.7 * x + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64), x


def test_ssim_is_scikit_image_s():
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is in requirements-test.txt")
    y, x = _pair()
    for i in range(2):
        r = float(x[i].max() - x[i].min())
        ref = skimage_metrics.structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), gaussian_weights=True,
                                                    sigma=1.5, use_sample_covariance=False, data_range=r)
        assert ssim(y[i, 0], x[i, 0]) == pytest.approx(ref, rel=1e-12)
        assert float(ssim_per_sample(y, x)[i]) == pytest.approx(ref, rel=1e-12)


def test_deepinv_definition_is_deepinv_s_own():
    """``definition="deepinv"`` against deepinv's SSIM (torchmetrics underneath) on volumes, with
    its default range (1) and with each truth's range; float64, so the two agree to rounding."""
    from deepinv.loss.metric import SSIM

    y, x = _pair()
    theirs_unit = SSIM()(y, x)  # max_pixel=1, min_pixel=0
    theirs_own = SSIM(max_pixel=None, min_pixel=None)(y, x)
    ours_unit = VolumeSSIM(data_range=1.0, definition="deepinv")(y, x)
    ours_own = VolumeSSIM(definition="deepinv")(y, x)
    torch.testing.assert_close(ours_unit, theirs_unit.double(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_own, theirs_own.double(), rtol=1e-10, atol=1e-12)
    assert ssim(y[0], x[0], definition="deepinv") == pytest.approx(float(theirs_own[0]), rel=1e-10)
    # on an object in air the definitions differ widely (the border windows, mostly air, weigh in
    # deepinv's): the figures are not interchangeable
    cube = torch.zeros(1, 1, 16, 16, 16, dtype=torch.float64)
    cube[..., 4:12, 4:12, 4:12] = 1.0
    noisy = cube + 0.1 * torch.randn(cube.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(VolumeSSIM()(noisy, cube)) - float(SSIM()(noisy, cube)) > 0.3


def test_ssim_definition_bad_input():
    x = torch.rand(12, 12, 12)
    with pytest.raises(ValueError, match="definition"):
        ssim(x, x, definition="torchmetrics")
    with pytest.raises(ValueError, match="definition"):
        VolumeSSIM(definition="skimage ")
    with pytest.raises(ValueError, match="longer than 5"):
        ssim(torch.rand(5, 12, 12), torch.rand(5, 12, 12), definition="deepinv")
    # 6 slices: the reflect padding of the 11-tap window fits; SSIM is 1 for equal volumes, in (-1, 1) otherwise
    # (two independent random volumes can score below 0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 12, 12, generator=gen), torch.rand(6, 12, 12, generator=gen)
    assert ssim(x, x, definition="deepinv") == pytest.approx(1.0, abs=1e-6)  # float32
    assert -1 < ssim(x, y, definition="deepinv") < 1
