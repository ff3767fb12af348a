"""Training on complex MRI volumes: the complex phantom dataset, the magnitude PSNR, and the
training loop with the multi-coil operator and the complex diagonal-circulant H."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrolled3d.data import ComplexPhantomDataset, smooth_phase
from unrolled3d.data.datasets import PhantomDataset
from unrolled3d.metrics import magnitude_psnr
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, variable_density_mask
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

N, P = 12, 6


# ----------------------------------------------------------------------------- data
def test_smooth_phase_range_and_determinism():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    phi = smooth_phase((7, 8, 9), gen(), max_phase=1.2, degree=2, dtype=torch.float64)
    assert phi.shape == (7, 8, 9) and torch.equal(phi, smooth_phase((7, 8, 9), gen(), 1.2, 2, torch.float64))
    # phi - phi0 reaches its amplitude in [max_phase / 2, max_phase] (the polynomial is normalised);
    # phi0 is unknown, but the spread max - min lies between the amplitude and twice it
    spread = float(phi.max() - phi.min())
    assert 0.6 - 1e-9 <= spread <= 2 * 1.2 + 1e-9
    # smooth: neighbouring voxels differ by much less than the range
    assert float((phi[1:] - phi[:-1]).abs().max()) < 0.5 * spread
    assert torch.allclose(smooth_phase((4, 4, 4), gen(), max_phase=0.0), smooth_phase((4, 4, 4), gen(), 0.0).mean())


def test_complex_phantom_dataset_keeps_the_magnitude_and_is_deterministic():
    base = PhantomDataset(4, (N, N, N), n_ellipsoids=(3, 5), seed=1)
    ds = ComplexPhantomDataset(base, seed=7, max_phase=2.0)
    item = ds[2]
    assert item.shape == (2, N, N, N) and item.dtype == torch.float32 and len(ds) == 4
    torch.testing.assert_close(torch.linalg.vector_norm(item, dim=0), base[2][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(ds[2], ComplexPhantomDataset(base, seed=7, max_phase=2.0)[2])
    assert torch.equal(ds[-2], ds[2])
    assert not torch.allclose(ds[2], ComplexPhantomDataset(base, seed=8, max_phase=2.0)[2])
    inside = base[2][0] > 0
    assert float(item[1][inside].abs().mean()) > 0.05  # a genuinely complex image


def test_complex_dataset_bad_arguments():
    base = PhantomDataset(2, (4, 4, 4))
    with pytest.raises(TypeError, match="magnitudes"):
        ComplexPhantomDataset(3)
    with pytest.raises(ValueError, match="seed"):
        ComplexPhantomDataset(base, seed=-1)
    with pytest.raises(ValueError, match="max_phase"):
        ComplexPhantomDataset(base, max_phase=float("nan"))
    with pytest.raises(ValueError, match="degree"):
        smooth_phase((4, 4, 4), degree=0)
    with pytest.raises(ValueError, match="magnitude items"):
        ComplexPhantomDataset([torch.zeros(2, 4, 4, 4)])[0]


def test_magnitude_psnr_against_a_hand_computation():
    mag = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64).reshape(1, 1, 4)
    phase = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64).reshape(1, 1, 4)
    truth = torch.cat([mag * phase.cos(), mag * phase.sin()], dim=1)
    rotated = torch.cat([mag * (phase + 1).cos(), mag * (phase + 1).sin()], dim=1)
    assert magnitude_psnr(rotated, truth) > 250  # the phase does not count (rounding only)
    est = torch.cat([(mag + 0.1) * phase.cos(), (mag + 0.1) * phase.sin()], dim=1)
    expected = 10 * math.log10(4.0**2 / 0.1**2)  # peak 4, every magnitude off by 0.1
    assert abs(magnitude_psnr(est, truth) - expected) < 1e-9
    assert abs(magnitude_psnr(est, truth, peak=2.0) - 10 * math.log10(2.0**2 / 0.1**2)) < 1e-9
    with pytest.raises(ValueError, match="real, imaginary"):
        magnitude_psnr(mag, mag)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def mri() -> MultiCoilMRI3D:
    mask = variable_density_mask((N, N, N), 3.0, (4, 4), seed=0, kind="poisson")
    return MultiCoilMRI3D(mask, birdcage_maps(4, (N, N, N)))


@pytest.fixture(scope="module")
def complex_data() -> ComplexPhantomDataset:
    return ComplexPhantomDataset(PhantomDataset(16, (N, N, N), n_ellipsoids=(3, 6), seed=1), seed=2)


def _rec(seed=0):
    torch.manual_seed(seed)
    model = UnrolledPGD(UNet3D(in_channels=2, out_channels=2, base=4, depth=1), n_iter=2, step_size=1.0)
    return PartitionedReconstructor(model, (N, N, N), (P, P, P), n_sweeps=1)


@pytest.mark.parametrize("mode", ["exact", "H"])
def test_training_on_complex_mri_lowers_the_loss(mri, complex_data, mode):
    physics = mri
    if mode == "H":
        physics = DiagCirculantWrapper(mri, (N, N, N))
        physics.fit(n_iter=30, lr=5e-2, progress=False)
    rec = _rec()
    x_val = ComplexPhantomDataset(PhantomDataset(1, (N, N, N), n_ellipsoids=5, seed=99), seed=99)[0][None]
    y_val = mri.A(x_val)
    before = evaluate(rec, physics, [(x_val, y_val)], metric=magnitude_psnr)
    hist = train(rec, physics, complex_data, TrainConfig(steps=12, lr=3e-3, seed=0, noise_std=0.01, progress=False,
                                                         val_every=12),
                 val_data=[(x_val, y_val)], val_metric=magnitude_psnr)
    assert len(hist["losses"]) == 12 and all(math.isfinite(v) and v > 0 for v in hist["losses"])
    assert np.mean(hist["losses"][-4:]) < np.mean(hist["losses"][:4])
    after = hist["val"][-1]["psnr"]
    print(f"{mode}: magnitude PSNR {before['psnr']:.2f} -> {after:.2f} dB after 12 steps")
    assert after > before["psnr"]
