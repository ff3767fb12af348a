"""DiagCirculantWrapper on complex images (MRI): complex convolution against dense matrices,
self-adjointness, exact patch restriction, PSF init, fitting on a small multi-coil problem,
persistence, the partitioned reconstructor in H mode, bad input."""
from __future__ import annotations

import itertools

import pytest
import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics, MultiCoilMRI

from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, from_complex_image, to_complex_image, variable_density_mask
from unrolled3d.normal import VARIANTS, DiagCirculantWrapper, apply_diag_circulant
from unrolled3d.normal import from_interleaved, to_interleaved
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

torch.set_num_threads(1)

F64, C128 = torch.float64, torch.complex128


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _crandn(*shape, seed=0):
    g = _gen(seed)
    return torch.complex(torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64))


def _dense_conv(k: torch.Tensor, shape) -> torch.Tensor:
    """Dense ``(N, N)`` matrix of the linear convolution by ``k`` (on the doubled grid, lag 0 at
    index 0) restricted to a volume of ``shape``: ``K[i, j] = k[(i - j) mod 2n]`` per axis."""
    idx = torch.tensor(list(itertools.product(*(range(n) for n in shape))))
    lag = (idx[:, None, :] - idx[None, :, :]) % torch.tensor([2 * n for n in shape])
    return k[lag[..., 0], lag[..., 1], lag[..., 2]]


def _dense_H(k, m, variant):
    K = _dense_conv(k, tuple(m.shape))
    M = torch.diag(m.flatten().to(k.dtype))
    one_sided = M @ K
    if variant == "sandwich":
        return M @ K @ M
    if variant == "one_sided":
        return one_sided
    return 0.5 * (one_sided + one_sided.conj().T)


def _apply_dense(Hd, x):
    """Dense complex matrix on real ``(B, 2, *s)`` images."""
    z = to_complex_image(x).flatten(1)
    return from_complex_image((z @ Hd.T).reshape(x.shape[0], *x.shape[2:]))


def _real_dot(a, b):
    return float((a * b).sum().detach())


# ----------------------------------------------------------------------------- the complex H
def test_interleaved_views_round_trip():
    x = torch.randn(2, 2, 3, 4, 5, generator=_gen(0), dtype=F64)
    v = to_interleaved(x)
    assert v.shape == (2, 1, 3, 4, 10)
    torch.testing.assert_close(v[:, 0, ..., 0::2], x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(v[:, 0, ..., 1::2], x[:, 1], rtol=0, atol=0)
    assert torch.equal(from_interleaved(v), x)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 2, 3)])
def test_complex_H_equals_the_dense_complex_convolution(variant, shape):
    k = _crandn(*(2 * n for n in shape), seed=1)  # every lag non-zero, complex
    m = 0.5 + torch.rand(shape, generator=_gen(2), dtype=F64)
    x = torch.randn(2, 2, *shape, generator=_gen(3), dtype=F64)
    got = apply_diag_circulant(x, m, torch.fft.fftn(k), variant, scale=1.7, complex_images=True)
    torch.testing.assert_close(got, 1.7 * _apply_dense(_dense_H(k, m, variant), x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_complex_H_through_the_triton_kernels(variant):
    """The interleaved views go through the Triton kernels too (compiled on a GPU, the interpreter
    on the CPU: conftest sets TRITON_INTERPRET=1 there)."""
    from unrolled3d import ops as fused

    shape = (3, 2, 3)
    k = _crandn(6, 4, 6, seed=50)
    m = 0.5 + torch.rand(shape, generator=_gen(51), dtype=F64)
    x = torch.randn(1, 2, *shape, generator=_gen(52), dtype=F64)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not fused.triton_enabled_for(torch.device(device)):
        pytest.skip("Triton is not available for this device (no GPU and no TRITON_INTERPRET=1)")
    with fused.use_backend("compiled"):
        got = apply_diag_circulant(x.to(device), m.to(device), torch.fft.fftn(k).to(device), variant,
                                   complex_images=True).cpu()
    torch.testing.assert_close(got, _apply_dense(_dense_H(k, m, variant), x), rtol=1e-12, atol=1e-12)


def test_complex_H_is_complex_linear_not_two_real_channels():
    shape = (3, 4, 3)
    lam = torch.fft.fftn(_crandn(6, 8, 6, seed=4))
    m = 1 + torch.rand(shape, generator=_gen(5), dtype=F64)
    x = torch.randn(1, 2, *shape, generator=_gen(6), dtype=F64)
    ix = torch.cat([-x[:, 1:], x[:, :1]], dim=1)  # i * (re + i im) = -im + i re
    h = apply_diag_circulant(x, m, lam, complex_images=True)
    torch.testing.assert_close(apply_diag_circulant(ix, m, lam, complex_images=True),
                               torch.cat([-h[:, 1:], h[:, :1]], dim=1), rtol=1e-12, atol=1e-12)
    # the imaginary part of the input reaches the real part of the output (a complex kernel)
    only_im = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], dim=1)
    assert float(apply_diag_circulant(only_im, m, lam, complex_images=True)[:, 0].norm()) > 0.1


def test_self_adjointness_in_the_real_inner_product():
    shape = (4, 3, 5)
    lam = torch.fft.fftn(_crandn(8, 6, 10, seed=7))  # a general, non-Hermitian kernel
    m = 1 + torch.rand(shape, generator=_gen(8), dtype=F64)
    x, y = (torch.randn(1, 2, *shape, generator=_gen(s), dtype=F64) for s in (9, 10))

    def gap(variant, filt):
        hx, hy = (apply_diag_circulant(t, m, filt, variant, complex_images=True) for t in (x, y))
        return abs(_real_dot(hx, y) - _real_dot(x, hy)) / float(hx.norm() * y.norm())

    assert gap("symmetric", lam) < 1e-13
    assert gap("sandwich", lam.real.to(lam.dtype)) < 1e-13  # real lam = Hermitian kernel
    assert gap("sandwich", lam) > 1e-3
    assert gap("one_sided", lam.real.to(lam.dtype)) > 1e-3  # m on one side only


@pytest.mark.parametrize("variant", VARIANTS)
def test_restricted_complex_operator_equals_restriction_of_full_operator(variant):
    shape = (9, 8, 7)
    phys = _mri(shape, dtype=F64)
    w = DiagCirculantWrapper(phys, shape, dtype=F64, variant=variant, scaling=2.5)
    assert w.complex_images
    w.set_parameters(1 + torch.rand(shape, generator=_gen(11), dtype=F64), torch.fft.fftn(_crandn(18, 16, 14, seed=12)))
    for offset, pshape in (((2, 1, 3), (5, 4, 3)), ((0, 0, 0), (9, 8, 7)), ((8, 7, 6), (1, 1, 1))):
        patch = w.normal.restrict(offset, pshape)
        assert patch.complex_images and patch.img_size == (2, *pshape)
        xp = torch.randn((2, 2, *pshape), generator=_gen(13), dtype=F64)
        full = torch.zeros((2, 2, *shape), dtype=F64)
        sl = tuple(slice(o, o + p) for o, p in zip(offset, pshape))
        full[(..., *sl)] = xp
        expected = w.normal.apply(full)[(..., *sl)]
        torch.testing.assert_close(patch.A_adjoint_A(xp), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(patch.data_gradient(xp, expected), torch.zeros_like(xp), rtol=0, atol=1e-12)


def test_patch_filter_is_shared_by_patches_and_follows_updates():
    shape = (8, 7, 6)
    w = DiagCirculantWrapper(_mri(shape, dtype=F64), shape, dtype=F64).init_from_psf()
    assert not w.fourier_filter.requires_grad  # H is fitted, not trained: no autograd by default
    p1, p2 = w.normal.restrict((0, 0, 0), (4, 3, 3)), w.normal.restrict((4, 4, 3), (4, 3, 3))
    assert p1.lam is p2.lam  # one filter per patch shape, whatever the position
    w.set_parameters(fourier_filter=torch.fft.fftn(_crandn(16, 14, 12, seed=40)))
    p3 = w.normal.restrict((4, 4, 3), (4, 3, 3))
    assert p3.lam is not p1.lam
    xp = torch.randn((1, 2, 4, 3, 3), generator=_gen(41), dtype=F64)
    full = torch.zeros((1, 2, *shape), dtype=F64)
    full[..., 4:8, 4:7, 3:6] = xp
    torch.testing.assert_close(p3.A_adjoint_A(xp), w.normal.apply(full)[..., 4:8, 4:7, 3:6], rtol=1e-12, atol=1e-12)
    # trainable end to end on request: the patch operator then carries gradients to lam and m
    w.normal.requires_grad_(True)
    w.normal.restrict((1, 1, 1), (4, 3, 3)).A_adjoint_A(xp).square().sum().backward()
    assert w.fourier_filter.grad is not None and w.spatial_mask.grad is not None


def test_gradcheck_complex_in_mask_and_filter():
    x = torch.randn((1, 2, 2, 3, 2), generator=_gen(14), dtype=F64)
    m = (1 + torch.rand((2, 3, 2), generator=_gen(15), dtype=F64)).requires_grad_()
    lam = torch.fft.fftn(_crandn(4, 6, 4, seed=16)).requires_grad_()
    for variant in VARIANTS:
        assert torch.autograd.gradcheck(
            lambda mm, ll: apply_diag_circulant(x, mm, ll, variant, complex_images=True), (m, lam))
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: apply_diag_circulant(t, m.detach(), lam.detach(), complex_images=True),
                                    (xg,))


# ----------------------------------------------------------------------------- physics and fitting
class ExactlyDiagCirculantComplex(LinearPhysics):
    """Complex ``A z = C_g P (m z)``: masked, zero-padded, circularly convolved by a complex kernel on
    the doubled grid, so that ``A^H A = m F^-1 |G|^2 F m`` is exactly a complex sandwich ``H``."""

    def __init__(self, m: torch.Tensor, g_spec: torch.Tensor):
        super().__init__(img_size=(2, *m.shape))
        self.m, self.g_spec, self.shape = m, g_spec, tuple(m.shape)

    def A(self, x, **kw):
        z = to_complex_image(x)
        buf = torch.zeros((z.shape[0], *(2 * s for s in self.shape)), dtype=z.dtype)
        buf[:, : self.shape[0], : self.shape[1], : self.shape[2]] = z * self.m
        return from_complex_image(torch.fft.ifftn(torch.fft.fftn(buf, dim=(-3, -2, -1)) * self.g_spec,
                                                  dim=(-3, -2, -1)))

    def A_adjoint(self, y, **kw):
        out = torch.fft.ifftn(torch.fft.fftn(to_complex_image(y), dim=(-3, -2, -1)) * self.g_spec.conj(),
                              dim=(-3, -2, -1))
        return from_complex_image(out[:, : self.shape[0], : self.shape[1], : self.shape[2]] * self.m)


def _synthetic(shape=(6, 7, 5), m=None, seed=0):
    g = _gen(seed)
    if m is None:
        m = 0.5 + torch.rand(shape, generator=g, dtype=F64)
    kernel = torch.zeros(tuple(2 * s for s in shape), dtype=C128)
    kernel[:2, :2, :2] = _crandn(2, 2, 2, seed=seed + 1)  # a small complex blur
    return ExactlyDiagCirculantComplex(m, torch.fft.fftn(kernel))


def test_init_from_psf_is_exact_for_a_shift_invariant_complex_operator():
    shape = (6, 7, 5)
    physics = _synthetic(shape, m=torch.ones(shape, dtype=F64))
    w = DiagCirculantWrapper(physics, (2, *shape), dtype=F64).init_from_psf()
    assert w.complex_images
    assert w.relative_error(n_probes=2) < 1e-12
    torch.testing.assert_close(w.fourier_filter.detach().real, physics.g_spec.abs() ** 2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel_radius", [None, 1])  # the kernel |g|^2 has lags -1..1: radius 1 holds it
def test_fit_recovers_an_exactly_diag_circulant_complex_operator(kernel_radius):
    physics = _synthetic()
    w = DiagCirculantWrapper(physics, (2, 6, 7, 5), dtype=F64, kernel_radius=kernel_radius)
    history = w.fit(n_iter=600, batch_size=2, lr=5e-2, progress=False)
    err = w.relative_error(n_probes=3)
    print(f"synthetic complex H: relative error {history[0]:.3e} (PSF init) -> {err:.3e} after fit")
    assert err < 1e-2 < history[0]


def _mri(shape, n_coils=4, accel=4.0, dtype=torch.float32, seed=0):
    cdtype = C128 if dtype == F64 else torch.complex64
    calib = (max(2, shape[0] // 4), max(2, shape[1] // 4))
    mask = variable_density_mask(shape, accel, calib, seed=seed, kind="poisson", dtype=dtype)
    return MultiCoilMRI3D(mask, birdcage_maps(n_coils, shape, dtype=cdtype))


def test_fit_on_multicoil_mri_beats_identity_and_unmasked_circulant():
    shape = (16, 16, 16)
    physics = _mri(shape, n_coils=4, accel=4.0)
    fitted = DiagCirculantWrapper(physics, shape)
    assert fitted.complex_images and fitted.img_size == (2, *shape)
    fitted.fit(n_iter=300, batch_size=2, lr=2e-2, progress=False)
    assert not fitted.fourier_filter.requires_grad and not fitted.spatial_mask.requires_grad
    circulant = DiagCirculantWrapper(physics, shape)
    circulant.fit(n_iter=300, batch_size=2, lr=2e-2, fit_mask=False, progress=False)
    x = torch.randn((2, 2, *shape), generator=_gen(12345))
    t = physics.A_adjoint_A(x)
    c = _real_dot(t, x) / _real_dot(x, x)  # best multiple of the identity
    err_id = float((t - c * x).norm() / t.norm())
    err_circ, err_fit = circulant.relative_error(n_probes=2), fitted.relative_error(n_probes=2)
    print(f"MRI 16^3, 4 coils, R=4: relative error identity {err_id:.4f}, unmasked circulant {err_circ:.4f}, "
          f"masked diag-circulant {err_fit:.4f}")
    assert err_fit < err_circ < err_id and err_fit < 0.3 * err_id


def test_save_load_round_trip_and_acquisition_check(tmp_path):
    shape = (8, 8, 8)
    physics = _mri(shape)
    w = DiagCirculantWrapper(physics, shape)
    w.fit(n_iter=3, progress=False)
    path = tmp_path / "h.pt"
    w.save(path)
    other = DiagCirculantWrapper(physics, shape).load(path)
    x = torch.randn(1, 2, *shape)
    torch.testing.assert_close(other.normal.apply(x), w.normal.apply(x))
    with pytest.raises(ValueError, match="refit"):  # another sampling mask: another operator
        DiagCirculantWrapper(_mri(shape, seed=1), shape).load(path)
    with pytest.raises(ValueError, match="complex images"):
        DiagCirculantWrapper(physics, (1, *shape)).load(path)
    # a real-image (CT) file is refused by a complex wrapper
    ct = ConeBeamCT(ConeBeamGeometry.circular(6, 32.0, 16.0, (8, 10), 1.5, shape))
    real = DiagCirculantWrapper(ct, shape).init_from_psf()
    real.save(tmp_path / "ct.pt")
    with pytest.raises(ValueError, match="real images"):
        DiagCirculantWrapper(physics, shape).load(tmp_path / "ct.pt")


def test_make_self_adjoint_keeps_the_fit_and_symmetrises():
    shape = (8, 8, 8)
    physics = _mri(shape, dtype=F64)
    w = DiagCirculantWrapper(physics, shape, dtype=F64)
    w.fit(n_iter=60, batch_size=2, lr=2e-2, progress=False)
    before = w.relative_error()
    w.make_self_adjoint()
    x, y = (torch.randn(1, 2, *shape, generator=_gen(s), dtype=F64) for s in (1, 2))
    hx, hy = w.normal.apply(x), w.normal.apply(y)
    assert abs(_real_dot(hx, y) - _real_dot(x, hy)) < 1e-12 * float(hx.norm() * y.norm())
    # A^H A is Hermitian: its Hermitian part is at least as close (Frobenius), up to probe noise
    assert w.relative_error() < before + 0.01


def test_auto_detection_of_complex_images():
    shape = (6, 6, 6)
    physics = _mri(shape)
    assert DiagCirculantWrapper(physics, shape).complex_images
    assert DiagCirculantWrapper(physics.restrict((0, 0, 0), (4, 4, 4)), (4, 4, 4)).complex_images
    assert DiagCirculantWrapper(physics, shape, complex_images=False).filter_shape == (12, 12, 7)
    ref = MultiCoilMRI(mask=physics.mask, coil_maps=birdcage_maps(4, shape), img_size=shape, three_d=True)
    assert DiagCirculantWrapper(ref, shape).complex_images
    ct = ConeBeamCT(ConeBeamGeometry.circular(6, 24.0, 12.0, (6, 8), 1.5, shape))
    w = DiagCirculantWrapper(ct, shape)
    assert not w.complex_images and w.filter_shape == (12, 12, 7) and w.img_size == (1, *shape)
    assert DiagCirculantWrapper(ct, (2, *shape)).complex_images  # img_size with 2 channels
    assert not DiagCirculantWrapper(physics, (1, *shape)).complex_images


# ----------------------------------------------------------------------------- partitioning
class IdentityBase(Reconstructor):
    def forward(self, y, physics, x_init=None, **kwargs):
        return x_init


class DataStepBase(Reconstructor):
    """One step of the patch data term through ``UnrolledPGD.data_gradient`` (``A^H (A x - y)``
    for exact patch physics, ``H_p x - b`` in H mode)."""

    def forward(self, y, physics, x_init=None, **kwargs):
        return x_init - 0.5 * UnrolledPGD.data_gradient(x_init, y, physics)


def test_partitioned_H_mode_on_mri():
    shape = (12, 12, 8)
    physics = _mri(shape, dtype=F64)
    w = DiagCirculantWrapper(physics, shape, dtype=F64)
    w.fit(n_iter=20, batch_size=1, lr=2e-2, progress=False)
    x = from_complex_image(_crandn(1, *shape, seed=20)).contiguous()
    y = physics.A(x)
    # identity base: the blended sweep gives the context back exactly
    for stride in ((3, 4, 4), None):
        rec = PartitionedReconstructor(IdentityBase(), shape, (6, 8, 6), stride=stride, n_sweeps=2)
        torch.testing.assert_close(rec(y, w, x_init=x), x, rtol=1e-12, atol=1e-12)
    # a data step in H mode: right shape, finite, and it lowers the error from the zero-filled start
    rec = PartitionedReconstructor(DataStepBase(), shape, (6, 8, 6), n_sweeps=1)
    x0 = physics.A_dagger(y)
    out = rec(y, w, x_init=x0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert float((out - x).norm()) < float((x0 - x).norm())
    # fourier_filter / spatial_mask passed with an unfitted wrapper (the paper's API) give the same volume
    blank = DiagCirculantWrapper(physics, shape, dtype=F64)
    out2 = rec(y, blank, x_init=x0, fourier_filter=w.fourier_filter.detach(), spatial_mask=w.spatial_mask.detach())
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)


def test_H_mode_equals_exact_mode_when_H_is_exact():
    """For an operator whose A^H A is exactly a complex diag-circulant H, the H-mode patch step
    equals the exact patch step (bookkeeping of b = S A^H y_p in the complex case)."""
    shape = (6, 7, 5)
    physics = _synthetic(shape, seed=3)
    w = DiagCirculantWrapper(physics, (2, *shape), dtype=F64)
    w.set_parameters(physics.m, physics.g_spec.abs() ** 2)
    x_true = from_complex_image(_crandn(1, *shape, seed=21)).contiguous()
    y = physics.A(x_true) + 0.01 * torch.randn(physics.A(x_true).shape, generator=_gen(22), dtype=F64)
    x_ctx = from_complex_image(_crandn(1, *shape, seed=23)).contiguous()
    rec = PartitionedReconstructor(DataStepBase(), shape, (4, 5, 3))
    exact = rec.reconstruct_patch(y, physics, x_ctx, (1, 2, 1))
    normal = rec.reconstruct_patch(y, w, x_ctx, (1, 2, 1), normal=w.normal)
    torch.testing.assert_close(normal, exact, rtol=1e-10, atol=1e-10)


def test_partitioned_unrolled_pgd_trains_with_the_complex_H():
    torch.manual_seed(0)
    shape = (8, 8, 8)
    physics = _mri(shape)
    w = DiagCirculantWrapper(physics, shape)
    w.fit(n_iter=10, progress=False)
    x = from_complex_image(_crandn(1, *shape, seed=30).to(torch.complex64)).contiguous()
    y = physics.A(x)
    model = UnrolledPGD(UNet3D(in_channels=2, out_channels=2, base=2, depth=1), n_iter=2, step_size=0.5)
    rec = PartitionedReconstructor(model, shape, (4, 4, 4), n_sweeps=1)
    loss = rec.training_loss(y, w, x, generator=_gen(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        out = rec(y, w)
    assert out.shape == x.shape and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    shape = (6, 6, 6)
    physics = _mri(shape)
    with pytest.raises(TypeError, match="complex_images"):
        DiagCirculantWrapper(physics, shape, complex_images="yes")
    with pytest.raises(ValueError, match="contradicts"):
        DiagCirculantWrapper(physics, (2, *shape), complex_images=False)
    with pytest.raises(ValueError, match="3 channels"):
        DiagCirculantWrapper(physics, (3, *shape))
    w = DiagCirculantWrapper(physics, shape)
    with pytest.raises(ValueError, match="full FFT"):
        w.set_parameters(fourier_filter=torch.zeros(12, 12, 7, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="no parameters yet"):
        w.make_self_adjoint()
    w.init_from_psf()
    with pytest.raises(ValueError, match="2 channels|real, imaginary"):
        w.normal.apply(torch.zeros(1, 1, *shape))
    with pytest.raises(ValueError, match="real, imaginary"):
        w.normal.restrict((0, 0, 0), (3, 3, 3)).A_adjoint_A(torch.zeros(1, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="sandwich"):
        DiagCirculantWrapper(physics, shape, variant="symmetric").init_from_psf().make_self_adjoint()


def _lag_box(shape, radius):
    """1 where every doubled-grid lag |l_i| <= r_i (written out per index, independently of the package)."""
    box = torch.zeros(tuple(2 * n for n in shape), dtype=F64)
    for i, j, k in itertools.product(*(range(2 * n) for n in shape)):
        lags = [min(a, 2 * n - a) for a, n in zip((i, j, k), shape)]
        box[i, j, k] = float(all(lag <= r for lag, r in zip(lags, radius)))
    return box


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_radius_truncates_the_kernel_and_patches_use_smaller_grids(variant):
    shape, radius = (9, 8, 7), (2, 3, 1)
    w = DiagCirculantWrapper(_mri(shape, dtype=F64), shape, dtype=F64, variant=variant, scaling=1.5,
                             kernel_radius=radius)
    m, k = 1 + torch.rand(shape, generator=_gen(21), dtype=F64), _crandn(18, 16, 14, seed=22)
    w.set_parameters(m, torch.fft.fftn(k))
    # truth: the dense operator of the kernel cut to the lag box
    x = torch.randn((2, 2, *shape), generator=_gen(23), dtype=F64)
    dense = _dense_H(k * _lag_box(shape, radius), m, variant)
    torch.testing.assert_close(w.normal.apply(x), 1.5 * _apply_dense(dense, x), rtol=1e-10, atol=1e-10)
    for offset, pshape in (((2, 1, 3), (6, 6, 4)), ((0, 0, 0), (9, 8, 7)), ((3, 2, 1), (2, 3, 5))):
        patch = w.normal.restrict(offset, pshape)
        # the grid holds p + min(r, p - 1) + 1 (rounded up to a 2-3-5-smooth size), not 2p
        expected_grid = {(6, 6, 4): (9, 10, 6), (9, 8, 7): (12, 12, 9), (2, 3, 5): (4, 6, 8)}[pshape]
        assert patch.grid == expected_grid and tuple(patch.lam.shape) == expected_grid
        xp = torch.randn((2, 2, *pshape), generator=_gen(24), dtype=F64)
        full = torch.zeros((2, 2, *shape), dtype=F64)
        sl = tuple(slice(o, o + p) for o, p in zip(offset, pshape))
        full[(..., *sl)] = xp
        torch.testing.assert_close(patch.A_adjoint_A(xp), w.normal.apply(full)[(..., *sl)], rtol=1e-12, atol=1e-12)


def test_kernel_radius_on_real_images_restricts_exactly():
    shape, radius = (9, 8, 10), 2
    ct = ConeBeamCT(ConeBeamGeometry.circular(6, 40.0, 20.0, (10, 12), 1.5, shape))
    w = DiagCirculantWrapper(ct, shape, dtype=F64, kernel_radius=radius)
    k = torch.randn((18, 16, 20), generator=_gen(31), dtype=F64)
    w.set_parameters(1 + torch.rand(shape, generator=_gen(32), dtype=F64), torch.fft.rfftn(k))
    # the kernel it uses is k on the lag box, zero elsewhere
    torch.testing.assert_close(w.kernel, k * _lag_box(shape, (radius,) * 3), rtol=1e-12, atol=1e-12)
    offset, pshape = (2, 1, 3), (5, 4, 6)
    patch = w.normal.restrict(offset, pshape)
    assert patch.grid == (8, 8, 9)
    xp = torch.randn((2, 1, *pshape), generator=_gen(33), dtype=F64)
    full = torch.zeros((2, 1, *shape), dtype=F64)
    full[..., 2:7, 1:5, 3:9] = xp
    torch.testing.assert_close(patch.A_adjoint_A(xp), w.normal.apply(full)[..., 2:7, 1:5, 3:9], rtol=1e-12, atol=1e-12)


def test_kernel_radius_after_fit_persistence_and_bad_values(tmp_path):
    shape = (8, 8, 8)
    physics = _mri(shape)
    w = DiagCirculantWrapper(physics, shape, kernel_radius=3)
    w.fit(n_iter=5, progress=False)
    box = _lag_box(shape, (3, 3, 3)).to(torch.float32)
    assert float(w.kernel.abs().mul(1 - box).max()) == 0.0  # nothing beyond the radius, after fitting
    w.save(tmp_path / "h.pt")
    x = torch.randn(1, 2, *shape)
    torch.testing.assert_close(DiagCirculantWrapper(physics, shape, kernel_radius=3).load(tmp_path / "h.pt")
                               .normal.apply(x), w.normal.apply(x))
    with pytest.raises(ValueError, match="kernel_radius"):
        DiagCirculantWrapper(physics, shape).load(tmp_path / "h.pt")
    # a radius of n - 1 or more is every lag: the same as no radius
    assert DiagCirculantWrapper(physics, shape, kernel_radius=(7, 9, 100)).kernel_radius is None
    for bad, error in ((-1, ValueError), ((1, 2), ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)):
        with pytest.raises(error, match="kernel_radius"):
            DiagCirculantWrapper(physics, shape, kernel_radius=bad)
