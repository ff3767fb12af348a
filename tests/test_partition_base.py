"""The base-model protocol of the partitioned reconstructor: x_init passed explicitly (a compiled
base gets it too), deepinv's own models adapted and run in H mode, bases that cannot take physics
refused at construction."""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch
from deepinv.models import Reconstructor
from deepinv.optim import L2, PnP, TVPrior, optim_builder
from deepinv.physics import LinearPhysics
from deepinv.unfolded import unfolded_builder

from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantNormal, DiagCirculantWrapper, init_from_psf
from unrolled3d.partition import PartitionedReconstructor, StartPointAdapter, as_base_reconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry
from unrolled3d.physics.patch import crop

F64 = torch.float64
SHAPE = (12, 12, 12)
PATCH, STRIDE = (8, 8, 8), (4, 4, 4)


def _ct() -> ConeBeamCT:
    g = ConeBeamGeometry.circular(16, 60.0, 30.0, (18, 20), 1.3, SHAPE, voxel_size=1.0)
    return ConeBeamCT(g, normalize=True)


def _volume(seed=0):
    return torch.rand((1, 1, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------- x_init explicitly
def test_compiled_base_gets_its_start_point():
    # Regression: torch.compile(base) has the signature (*args, **kwargs), so sniffing the signature
    # dropped x_init and the compiled base started from A_dagger(y_p) instead (0.136 off eager).
    # The "eager" backend is enough to reproduce it (the wrapper, not code generation, hid the
    # argument) and keeps the test fast.
    physics = _ct()
    x = _volume()
    y = physics.A(x)
    torch.manual_seed(0)
    base = UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2).double()
    x0 = physics.A_dagger(y)
    patch = (8, 12, 12)  # two patches: each position recompiles the projector's frames (its offset is a constant)
    with torch.no_grad():
        eager = PartitionedReconstructor(base, SHAPE, patch, stride=STRIDE)(y, physics, x_init=x0)
        compiled = PartitionedReconstructor(torch.compile(base, backend="eager"), SHAPE, patch, stride=STRIDE)
        out = compiled(y, physics, x_init=x0)
        # what dropping x_init gives (the base starting from the patch's A_dagger): must differ
        dropped = PartitionedReconstructor(StartPointAdapter(base, start="none"), SHAPE, patch, stride=STRIDE)
        wrong = dropped(y, physics, x_init=x0)
    torch.testing.assert_close(out, eager, rtol=1e-12, atol=1e-12)
    assert float((wrong - eager).abs().max()) > 1e-3


def test_bases_that_cannot_take_physics_are_refused_at_construction():
    with pytest.raises(TypeError, match="denoiser D\\(x, sigma\\) \\(DRUNet\\)"):
        PartitionedReconstructor(dinv.models.DRUNet(1, 1, nc=(4, 4, 4, 4), nb=1, dim=3, pretrained=None), SHAPE,
                                 PATCH)
    with pytest.raises(TypeError, match="denoiser"):  # compiled, still a denoiser
        PartitionedReconstructor(torch.compile(dinv.models.MedianFilter(), backend="eager"), SHAPE, PATCH)
    with pytest.raises(TypeError, match="denoiser D\\(x, sigma\\) \\(UNet3D\\)"):
        PartitionedReconstructor(UNet3D(base=2, depth=0), SHAPE, PATCH)

    class Plain(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="forward\\(y, physics, x_init=None\\)"):
        PartitionedReconstructor(Plain(), SHAPE, PATCH)

    class NoStart(torch.nn.Module):
        def forward(self, y, physics):
            return physics.A_adjoint(y)

    with pytest.raises(TypeError, match="StartPointAdapter"):
        PartitionedReconstructor(NoStart(), SHAPE, PATCH)
    rec = PartitionedReconstructor(StartPointAdapter(NoStart(), start="none"), SHAPE, PATCH)
    assert isinstance(rec.base, StartPointAdapter)
    with pytest.raises(ValueError, match="start"):
        StartPointAdapter(NoStart(), start="x0")
    with pytest.raises(TypeError, match="base_reconstructor"):
        as_base_reconstructor(lambda y, physics: y)


# ----------------------------------------------------------------------------- deepinv's models in H mode
class FullVolumeH(LinearPhysics):
    """The patch problem built by hand from the full-volume H: ``S H S^T`` by embedding the patch in
    zeros, applying the whole-volume ``H`` (``DiagCirculantNormal.apply``: its doubled volume
    grid, not the patch grid) and cropping; in normal-equation form like the patch operator
    (``A = H_p``, ``A^T`` the identity on ``b``, ``A_dagger`` the start point)."""

    def __init__(self, normal, offset, shape):
        super().__init__()
        self.normal, self.offset, self.shape = normal, tuple(offset), tuple(shape)
        self.x_start = None

    def A(self, x, **kwargs):
        full = x.new_zeros((*x.shape[:2], *self.normal.img_shape))
        crop(full, self.offset, self.shape).copy_(x)
        return crop(self.normal.apply(full), self.offset, self.shape)

    def A_adjoint(self, y, **kwargs):
        return y

    def A_dagger(self, y, **kwargs):
        return self.x_start

    def A_adjoint_A(self, x, **kwargs):
        return self.A(x)

    def data_gradient(self, x, b):
        return self.A(x) - b


class HandBuiltNormal(DiagCirculantNormal):
    """The same H whose patch operators are built by hand (FullVolumeH): they read H's parameters
    when applied, so refreshing them is a no-op."""

    def restrict(self, offset, shape):
        return FullVolumeH(self, offset, shape)

    def refresh(self, patches):
        pass


def _deepinv_model(kind: str) -> Reconstructor:
    torch.manual_seed(0)
    if kind == "optim_pgd_tv":
        return optim_builder("PGD", prior=TVPrior(n_it_max=20), data_fidelity=L2(), max_iter=4,
                             params_algo={"stepsize": 0.5, "lambda": 0.01})
    den = UNet3D(base=4, depth=1).double()  # a deepinv Denoiser D(x, sigma): small, so the test is fast
    if kind == "unfolded_pgd":
        return unfolded_builder("PGD", params_algo={"stepsize": [0.5] * 3, "g_param": [0.05] * 3},
                                trainable_params=["stepsize"], data_fidelity=L2(), prior=PnP(denoiser=den), max_iter=3)
    return dinv.models.ArtifactRemoval(den, mode="adjoint")


@pytest.mark.parametrize("kind", ["optim_pgd_tv", "unfolded_pgd", "artifact_removal"])
@pytest.mark.parametrize("patch_batch_size", [1, 4])
def test_deepinv_models_run_partitioned_in_H_mode(kind, patch_batch_size):
    physics = _ct()
    x = _volume(seed=1)
    y = physics.A(x) + 0.01 * torch.randn(physics.A(x).shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    w = DiagCirculantWrapper(physics, SHAPE, dtype=F64).init_from_psf()
    hand = init_from_psf(HandBuiltNormal(SHAPE, dtype=F64), physics)
    torch.testing.assert_close(hand.fourier_filter, w.fourier_filter, rtol=0, atol=0)
    x0 = physics.A_dagger(y)
    # a fresh model per run: deepinv's TV prox warm-starts from its previous call (state in the model)
    with torch.no_grad():
        rec = PartitionedReconstructor(_deepinv_model(kind), SHAPE, PATCH, stride=STRIDE, n_sweeps=1,
                                       patch_batch_size=patch_batch_size)
        out = rec(y, w, x_init=x0)
        expected = PartitionedReconstructor(_deepinv_model(kind), SHAPE, PATCH, stride=STRIDE, n_sweeps=1,
                                            patch_batch_size=patch_batch_size)(y, physics, x_init=x0, normal=hand)
    # float64; the two patch operators differ only in their FFT grids (patch vs volume): rounding
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    assert float((out - x0).abs().max()) > 1e-3  # the model did something
    # one patch by hand: the model on b = S A^T (y - A x_ctx) + H_p x_ctx[p] with the hand-built H_p
    offset = (4, 0, 4)
    h_p = hand.restrict(offset, PATCH)
    b = crop(w.A_adjoint(y - w.A(x0)), offset, PATCH) + h_p.A_adjoint_A(crop(x0, offset, PATCH))
    h_p.x_start = crop(x0, offset, PATCH)
    with torch.no_grad():
        by_hand = as_base_reconstructor(_deepinv_model(kind))(b, h_p, x_init=h_p.x_start)
        rec = PartitionedReconstructor(_deepinv_model(kind), SHAPE, PATCH, stride=STRIDE)
        patch = rec.reconstruct_patch(y, w, x0, offset, normal=w.normal)
    torch.testing.assert_close(patch, by_hand, rtol=1e-9, atol=1e-9)
