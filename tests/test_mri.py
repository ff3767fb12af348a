"""3D multi-coil MRI: operator conventions vs deepinv, adjointness, masks, coil maps, CG-SENSE,
readers, and exact domain partitioning with the MRI operator."""
from __future__ import annotations


import h5py
import numpy as np
import pytest
import torch
from deepinv.models import Reconstructor
from deepinv.physics import GaussianNoise, LinearPhysics, MultiCoilMRI

from unrolled3d.data.phantoms import ball, voxelize
from unrolled3d.models import UnrolledPGD
from unrolled3d.models.unet3d import UNet3D
from unrolled3d.mri import (
    KspaceFileError, MultiCoilMRI3D, acceleration, as_measurement, birdcage_maps, calibration_slices, cg_sense,
    centred_fft_phases, estimate_coil_maps, from_complex_image, read_kspace_h5, read_kspace_npy,
    root_sum_of_squares, to_complex_image, variable_density_mask, zero_filled,
)
from unrolled3d.partition import PartitionedReconstructor, patch_measurement
from unrolled3d.physics import ZeroPaddedPatchPhysics
from conftest import PlainPhysics

torch.set_num_threads(1)

F64, C128 = torch.float64, torch.complex128
SHAPES = [(8, 10, 12), (7, 9, 5)]  # all even (real +-1 phases) and all odd (complex phases)


def _operator(shape, n_coils=4, accel=2.0, seed=0, dtype=F64, **kwargs) -> MultiCoilMRI3D:
    cdtype = C128 if dtype == F64 else torch.complex64
    maps = birdcage_maps(n_coils, shape, dtype=cdtype)
    calib = (min(4, shape[0] // 2), min(4, shape[1] // 2))
    mask = variable_density_mask(shape, accel, calib, seed=seed, kind="random", dtype=dtype)
    return MultiCoilMRI3D(mask, maps, **kwargs)


def _rand(*shape, seed=0, dtype=F64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _complex_volume(shape, seed=0, dtype=F64):
    """(1, 2, D, H, W): a ball with a smooth phase plus noise-like texture (non-trivial imaginary part)."""
    mag = voxelize(ball(0.4 * min(shape)), shape, dtype=dtype) + 0.1 * _rand(*shape, seed=seed, dtype=dtype).abs()
    z = torch.arange(shape[0], dtype=dtype)[:, None, None]
    phase = 0.3 * z / shape[0] + 0.2 * torch.arange(shape[2], dtype=dtype)[None, None, :] / shape[2]
    return from_complex_image(torch.polar(mag, phase.expand(shape))[None]).contiguous()


# ----------------------------------------------------------------------------- operator
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("coil_chunk", [None, 3])
def test_agrees_with_deepinv_multicoil_mri_3d(shape, coil_chunk):
    ours = _operator(shape, n_coils=4, coil_chunk=coil_chunk)
    ref = MultiCoilMRI(mask=ours.mask, coil_maps=birdcage_maps(4, shape, dtype=C128), img_size=shape, three_d=True)
    x, y = _rand(2, 2, *shape, seed=1), _rand(2, 2, 4, *shape, seed=2)
    y_saved = y.clone()
    Ax, Aty = ours.A(x), ours.A_adjoint(y)
    Ax_saved = Ax.clone()
    ours.A_adjoint(Ax)
    assert torch.equal(y, y_saved) and torch.equal(Ax, Ax_saved)  # inputs are never overwritten
    assert Ax.shape == (2, 2, 4, *shape) and Aty.shape == (2, 2, *shape)
    torch.testing.assert_close(Ax, ref.A(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Aty, ref.A_adjoint(y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.A_adjoint_A(x), ref.A_adjoint(ref.A(x)), rtol=1e-12, atol=1e-12)
    # our k-space view feeds deepinv's adjoint and vice versa
    torch.testing.assert_close(ref.A_adjoint(Ax), ours.A_adjoint(ref.A(x)), rtol=1e-12, atol=1e-12)


def test_float32_agrees_with_deepinv():
    shape = (8, 10, 12)
    ours = _operator(shape, dtype=torch.float32)
    ref = MultiCoilMRI(mask=ours.mask, coil_maps=birdcage_maps(4, shape), img_size=shape, three_d=True)
    x, y = _rand(1, 2, *shape, dtype=torch.float32), _rand(1, 2, 4, *shape, dtype=torch.float32)
    assert ours.A(x).dtype == torch.float32
    torch.testing.assert_close(ours.A(x), ref.A(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.A_adjoint(y), ref.A_adjoint(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 6, 9])
def test_centred_fft_phase_identity(n):
    v = torch.randn(n, dtype=C128)
    p_in, p_out = centred_fft_phases(n)
    ref = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(v)))
    torch.testing.assert_close(p_out * torch.fft.fft(p_in * v), ref, rtol=1e-12, atol=1e-12)


def _gap(Ax, y, x, Aty):
    """|<Ax, y> - <x, A^H y>| / (|Ax| |y|) with the real inner product of the (real, imag) layout,
    i.e. Re of the complex inner product (deepinv's convention)."""
    return float(((Ax * y).sum() - (x * Aty).sum()).abs() / (Ax.norm() * y.norm()))


@pytest.mark.parametrize("shape", SHAPES)
def test_adjointness_float64(shape):
    physics = _operator(shape, n_coils=3, accel=1.7)
    x, y = _rand(2, 2, *shape, seed=3), _rand(2, 2, 3, *shape, seed=4)
    assert _gap(physics.A(x), y, x, physics.A_adjoint(y)) < 1e-5
    # also the complex inner product written out explicitly
    lhs = (to_complex_image(physics.A(x)).conj() * to_complex_image(y)).sum()
    rhs = (to_complex_image(x).conj() * to_complex_image(physics.A_adjoint(y))).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) < 1e-10
    patch = physics.restrict((1, 2, 1), (4, 5, 3))
    xp = _rand(2, 2, 4, 5, 3, seed=5)
    assert _gap(patch.A(xp), y, xp, patch.A_adjoint(y)) < 1e-5
    torch.testing.assert_close(patch.A_adjoint_A(xp), patch.A_adjoint(patch.A(xp)), rtol=1e-12, atol=1e-12)


def test_full_sampling_is_an_isometry_and_the_mask_selects_samples():
    shape = (6, 8, 7)
    full = MultiCoilMRI3D(torch.ones(shape, dtype=F64), birdcage_maps(5, shape, dtype=C128))
    x = _rand(1, 2, *shape, seed=6)
    torch.testing.assert_close(full.A_adjoint_A(x), x, rtol=1e-12, atol=1e-12)  # sum |S|^2 = 1, F unitary
    torch.testing.assert_close(full.A(x).norm(), x.norm(), rtol=1e-12, atol=0)
    physics = MultiCoilMRI3D(variable_density_mask(shape, 2.0, (2, 2), seed=0, dtype=F64), full.coil_maps)
    torch.testing.assert_close(physics.A(x), physics.mask * full.A(x), rtol=1e-12, atol=1e-12)  # y = M (F S x)
    y = physics.A(x)
    torch.testing.assert_close(physics.A_adjoint(y), full.A_adjoint(physics.mask * y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, coil_chunk", [((4, 3, 5), 1), ((4, 4, 6), None)])
def test_gradients_flow_through_the_operator(shape, coil_chunk):
    physics = _operator(shape, n_coils=2, coil_chunk=coil_chunk)
    x = _rand(1, 2, *shape, seed=7).requires_grad_()
    y = _rand(1, 2, 2, *shape, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(physics.A, (x,))
    assert torch.autograd.gradcheck(physics.A_adjoint, (y,))
    assert torch.autograd.gradcheck(physics.A_adjoint_A, (x,))
    patch = physics.restrict((1, 0, 1), (2, shape[1], 3))
    assert torch.autograd.gradcheck(patch.A, (x[..., 1:3, :, 1:4].detach().requires_grad_(),))
    assert torch.autograd.gradcheck(patch.A_adjoint_A, (x[..., 1:3, :, 1:4].detach().requires_grad_(),))


def test_noise_only_on_sampled_locations_and_update_parameters():
    shape = (8, 10, 12)
    physics = _operator(shape, noise_model=GaussianNoise(sigma=0.1))
    x = _rand(1, 2, *shape, seed=9)
    y = physics(x)
    assert float(y[..., physics.mask == 0].abs().max()) == 0.0
    assert float((y - physics.A(x))[..., physics.mask == 1].abs().mean()) > 0.01
    other = variable_density_mask(shape, 3.0, (2, 2), seed=5, kind="poisson", dtype=F64)
    physics.update(mask=other)
    torch.testing.assert_close(physics.mask, other)
    fresh = MultiCoilMRI3D(other, birdcage_maps(4, shape, dtype=C128))
    torch.testing.assert_close(physics.A(x), fresh.A(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(physics.coil_maps, birdcage_maps(4, shape, dtype=C128), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_the_float32_result_rounded(dtype):
    """float16/bfloat16 images and k-space are computed in float32 (the CPU FFT has no half
    precision) and rounded once: equal to the float32 result rounded, hence within eps/2 of it
    (relative, per value; see tests/func_testing.py). The patch operator does the same, and
    under torch.autocast the result stays float32."""
    from func_testing import assert_rounded_float32

    shape = (8, 10, 12)
    physics = _operator(shape, dtype=torch.float32)
    x = _complex_volume(shape, dtype=torch.float32).to(dtype)
    y = physics.A(x)
    assert_rounded_float32(y, physics.A(x.float()), dtype)
    assert_rounded_float32(physics.A_adjoint(y), physics.A_adjoint(y.float()), dtype)
    assert_rounded_float32(physics.A_adjoint_A(x), physics.A_adjoint_A(x.float()), dtype)
    patch = physics.restrict((2, 1, 3), (4, 6, 5))
    xp = x[..., 2:6, 1:7, 3:8]
    assert_rounded_float32(patch.A(xp), patch.A(xp.float()), dtype)
    assert_rounded_float32(patch.A_adjoint(y), patch.A_adjoint(y.float()), dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = physics.A(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, physics.A(x.float()), rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    shape = (8, 10, 12)
    maps = birdcage_maps(4, shape, dtype=C128)
    mask = torch.ones(shape, dtype=F64)
    with pytest.raises(ValueError, match="mask has shape"):
        MultiCoilMRI3D(torch.ones(8, 10, 11), maps)
    with pytest.raises(ValueError, match="mask must be 3-D"):
        MultiCoilMRI3D(torch.ones(10, 12), maps)
    with pytest.raises(TypeError, match="mask must be real"):
        MultiCoilMRI3D(mask.to(C128), maps)
    with pytest.raises(TypeError, match="coil_maps must have a complex dtype"):
        MultiCoilMRI3D(mask, maps.abs())
    with pytest.raises(ValueError, match="coil_maps must be 4-D"):
        MultiCoilMRI3D(mask, maps[0])
    with pytest.raises(ValueError, match="coil_chunk"):
        MultiCoilMRI3D(mask, maps, coil_chunk=0)
    physics = MultiCoilMRI3D(mask, maps)
    with pytest.raises(ValueError, match="2 channels"):
        physics.A(torch.zeros(1, 1, *shape, dtype=F64))
    with pytest.raises(TypeError, match="x must be real"):
        physics.A(torch.zeros(1, *shape, dtype=C128))
    with pytest.raises(ValueError, match="spatial shape"):
        physics.A(torch.zeros(1, 2, 8, 10, 10, dtype=F64))
    with pytest.raises(ValueError, match="has 3 coils, the operator has 4"):
        physics.A_adjoint(torch.zeros(1, 2, 3, *shape, dtype=F64))
    with pytest.raises(ValueError, match="k-space shape"):
        physics.A_adjoint(torch.zeros(1, 2, 4, 8, 10, 10, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, 2, N_c, D, H, W\)"):
        physics.A_adjoint(torch.zeros(1, 4, *shape, dtype=F64))
    with pytest.raises(ValueError, match="outside the volume"):
        physics.restrict((6, 0, 0), (4, 4, 4))
    with pytest.raises(ValueError, match="coil_maps has spatial shape"):
        physics.update(coil_maps=birdcage_maps(4, (8, 10, 10)))


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind", ["poisson", "random"])
@pytest.mark.parametrize("shape, accel, calib", [((64, 64, 4), 8.0, (16, 16)), ((48, 40, 3), 4.0, (12, 10)),
                                                 ((33, 31, 2), 6.0, (8, 8))])
def test_masks_hit_the_acceleration_and_keep_the_calibration(kind, shape, accel, calib):
    m = variable_density_mask(shape, accel, calib, seed=1, kind=kind)
    assert m.shape == shape and set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert abs(acceleration(m) - accel) / accel < 0.05
    assert bool((m == m[..., :1]).all())  # readout fully sampled / constant along W
    sl = calibration_slices(shape[:2], calib)
    assert bool((m[sl] == 1).all())
    centre = (shape[0] // 2, shape[1] // 2)
    assert sl[0].start <= centre[0] < sl[0].stop and sl[1].start <= centre[1] < sl[1].stop
    # variable density: the ring around the calibration block is denser than the periphery
    d = (torch.arange(shape[0]) - centre[0]).abs()[:, None] / (shape[0] / 2)
    h = (torch.arange(shape[1]) - centre[1]).abs()[None, :] / (shape[1] / 2)
    rho = torch.sqrt(d ** 2 + h ** 2)
    calib_area = torch.zeros(shape[:2], dtype=torch.bool)
    calib_area[sl] = True
    inner, outer = (rho < 0.55) & ~calib_area, rho > 0.85
    assert float(m[..., 0][inner].mean()) > 1.5 * float(m[..., 0][outer].mean())


@pytest.mark.parametrize("kind", ["poisson", "random"])
def test_masks_are_seeded(kind):
    a = variable_density_mask((40, 40, 2), 5.0, (8, 8), seed=3, kind=kind)
    b = variable_density_mask((40, 40, 2), 5.0, (8, 8), seed=3, kind=kind)
    c = variable_density_mask((40, 40, 2), 5.0, (8, 8), seed=4, kind=kind)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _min_neighbour_distance(points: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(points.double(), points.double())
    d.fill_diagonal_(float("inf"))
    return d.min(1).values


def test_poisson_masks_spread_points_apart():
    shape = (64, 64, 1)
    out = {}
    for kind in ("poisson", "random"):
        m = variable_density_mask(shape, 6.0, (12, 12), seed=2, kind=kind)[..., 0]
        pts = torch.nonzero(m)
        rho = torch.sqrt(((pts[:, 0] - 32) / 32.0) ** 2 + ((pts[:, 1] - 32) / 32.0) ** 2)
        out[kind] = _min_neighbour_distance(pts)[rho > 0.6]
    assert float(out["poisson"].min()) >= 2.0  # dart throwing: no neighbours in the periphery
    assert float(out["random"].min()) < float(out["poisson"].min())


def test_mask_bad_inputs():
    with pytest.raises(ValueError, match="calibration block"):
        variable_density_mask((32, 32, 4), 8.0, (16, 16))
    with pytest.raises(ValueError, match="kind"):
        variable_density_mask((32, 32, 4), 4.0, (4, 4), kind="spiral")
    with pytest.raises(ValueError, match="acceleration must be >= 1"):
        variable_density_mask((32, 32, 4), 0.5, (4, 4))
    with pytest.raises(ValueError, match="calib"):
        variable_density_mask((32, 32, 4), 4.0, (40, 4))


# ----------------------------------------------------------------------------- coils
@pytest.mark.parametrize("n_coils, dtype", [(8, C128), (6, torch.complex64), (1, C128)])
def test_birdcage_maps_are_normalised(n_coils, dtype):
    maps = birdcage_maps(n_coils, (12, 10, 9), dtype=dtype)
    assert maps.shape == (n_coils, 12, 10, 9) and maps.dtype == dtype
    assert float((root_sum_of_squares(maps.to(C128)) ** 2 - 1).abs().max()) < 1e-6
    if n_coils > 1:  # the coils see different parts of the volume, with a phase
        assert float(maps.abs().amax(dim=(1, 2, 3)).min()) > 1.5 * float(maps.abs().amin(dim=(1, 2, 3)).max())
        assert float(maps.angle().std()) > 0.1


def test_estimated_maps_match_the_truth_up_to_a_global_phase():
    """Fully sampled k-space of a ball (with a constant phase e^{0.7i}), calibration 12x12(x12) of 24^3.

    Tolerances (relative L2 error over coils after removing the best global phase): < 7% on the
    ball minus a 5% rim, < 3% on the inner 70% of the ball (the error of the low-resolution method
    sits at the object's edges, where blur(S x) != S blur(x)).
    """
    shape = (24, 24, 24)
    maps = birdcage_maps(8, shape, dtype=C128)
    x = voxelize(ball(0.8 * 12), shape, dtype=F64)
    xi = from_complex_image(torch.polar(x, torch.full(shape, 0.7, dtype=F64))[None])
    full = MultiCoilMRI3D(torch.ones(shape, dtype=F64), maps)
    kspace = to_complex_image(full.A(xi))[0]
    est = estimate_coil_maps(kspace, (12, 12))
    assert est.shape == maps.shape
    sos = root_sum_of_squares(est) ** 2
    assert float((sos[x > 0] - 1).abs().max()) < 1e-10
    for shrink, tol in ((0.95, 0.07), (0.7, 0.03)):
        region = voxelize(ball(0.8 * 12 * shrink), shape, dtype=F64) > 0.999
        phase = (est.conj() * maps)[:, region].sum()
        phase = phase / phase.abs()
        err = (est * phase - maps)[:, region].norm() / maps[:, region].norm()
        assert float(err) < tol, (shrink, float(err))
    # the batched real-layout input gives the same maps
    torch.testing.assert_close(estimate_coil_maps(full.A(xi), (12, 12))[0], est)
    assert float(estimate_coil_maps(kspace, (12, 12), threshold=0.2)[:, 0, 0, 0].abs().max()) == 0.0


# ----------------------------------------------------------------------------- reconstructions
def test_cg_sense_fully_sampled_noiseless_recovers_the_volume():
    shape = (12, 10, 8)
    physics = MultiCoilMRI3D(torch.ones(shape, dtype=F64), birdcage_maps(4, shape, dtype=C128))
    x = _complex_volume(shape)
    y = physics.A(x)
    rec = physics.A_dagger(y, cg=True)
    assert float((rec - x).norm() / x.norm()) < 1e-4
    torch.testing.assert_close(zero_filled(y, physics), x, rtol=1e-10, atol=1e-10)  # A^H A = I


def test_cg_sense_undersampled_beats_zero_filled_and_converges():
    shape = (16, 16, 8)
    physics = MultiCoilMRI3D(variable_density_mask(shape, 2.0, (4, 4), seed=0, kind="poisson", dtype=F64),
                             birdcage_maps(8, shape, dtype=C128))
    x = _complex_volume(shape, seed=1)
    y = physics.A(x)
    rec, info = cg_sense(y, physics, n_iter=150, tol=1e-9, return_info=True)
    err_cg = float((rec - x).norm() / x.norm())
    err_zf = float((physics.A_dagger(y) - x).norm() / x.norm())
    assert err_cg < 1e-3 and err_zf > 0.1, (err_cg, err_zf)
    # at most one product per iteration, plus deepinv's initial residual and its refresh at iteration 100
    assert info["products"] <= 150 + 2 and float(info["relative_residual"].max()) < 1e-6
    # Tikhonov: the solution satisfies the regularised normal equations
    lam = 0.5
    rec_l = cg_sense(y, physics, n_iter=100, tol=1e-12, lam=lam)
    res = physics.A_adjoint_A(rec_l) + lam * rec_l - physics.A_adjoint(y)
    assert float(res.norm() / physics.A_adjoint(y).norm()) < 1e-8


def _dense_least_squares(physics, y, tikhonov=0.0):
    """The exact solution of (A^H A + tikhonov I) x = A^H y, from the dense real matrix of A^H A
    built column by column (one batched product on the identity basis) and a direct solve:
    independent of any iterative solver."""
    shape = physics.img_size
    n = 2 * int(np.prod(shape[1:]))
    basis = torch.eye(n, dtype=F64).reshape(n, *shape)
    normal = physics.A_adjoint_A(basis).reshape(n, n).T + tikhonov * torch.eye(n, dtype=F64)  # column j: A^H A e_j
    return torch.linalg.solve(normal, physics.A_adjoint(y).reshape(-1)).reshape(1, *shape)


def test_A_dagger_honours_deepinv_solver_keywords():
    # Regression: A_dagger(y, solver="CG", max_iter=20) used to swallow the keywords and return the
    # zero-filled image (0.80 from CG): deepinv's keywords must ask for deepinv's least squares.
    shape = (6, 6, 4)
    physics = MultiCoilMRI3D(variable_density_mask(shape, 2.0, (2, 2), seed=0, kind="poisson", dtype=F64),
                             birdcage_maps(4, shape, dtype=C128))
    y = physics.A(_complex_volume(shape, seed=3))
    exact = _dense_least_squares(physics, y)
    zero_filled_image = physics.A_dagger(y)
    assert float((zero_filled_image - exact).norm() / exact.norm()) > 0.1  # the two differ: the test can fail
    # exactly what deepinv's LinearPhysics.A_dagger computes with these keywords
    twenty = physics.A_dagger(y, solver="CG", max_iter=20)
    torch.testing.assert_close(twenty, LinearPhysics.A_dagger(physics, y, solver="CG", max_iter=20), rtol=0, atol=0)
    assert float((twenty - exact).norm() / exact.norm()) < 0.5 * float((zero_filled_image - exact).norm()
                                                                         / exact.norm())
    # converged (and with the solver's eps passed through: deepinv's default 1e-8 stalls it near 1e-2
    # here), it reaches the dense solution of deepinv's problem: least squares plus 1e-8 I (its
    # implicit-backward solver uses gamma = 1e8); 288 real unknowns, float64
    solved = physics.A_dagger(y, solver="CG", max_iter=300, tol=1e-12, eps=1e-300)
    torch.testing.assert_close(solved, _dense_least_squares(physics, y, tikhonov=1e-8), rtol=1e-8, atol=1e-8)
    # CG-SENSE (now deepinv's CG, eps at underflow) reaches the least-squares solution itself; its options
    # are refused without cg=True
    torch.testing.assert_close(physics.A_dagger(y, cg=True, n_iter=200, tol=1e-12), exact, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="cg=True"):
        physics.A_dagger(y, n_iter=20)
    with pytest.raises(ValueError, match="max_iter"):
        physics.A_dagger(y, cg=True, max_iter=20)
    # the patch operator honours them too: least squares of A S^T, not the cropped adjoint
    patch = physics.restrict((0, 0, 0), (6, 6, 4))
    torch.testing.assert_close(patch.A_dagger(y, solver="CG", max_iter=300, tol=1e-12, eps=1e-300),
                               _dense_least_squares(physics, y, tikhonov=1e-8), rtol=1e-8, atol=1e-8)


def test_zero_filled_divides_by_unnormalised_maps_and_cg_validates():
    shape = (6, 6, 6)
    maps = 2.0 * birdcage_maps(3, shape, dtype=C128)
    physics = MultiCoilMRI3D(torch.ones(shape, dtype=F64), maps)
    x = _complex_volume(shape)
    torch.testing.assert_close(zero_filled(physics.A(x), physics), x, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="lam"):
        cg_sense(physics.A(x), physics, lam=-1.0)
    with pytest.raises(ValueError, match="n_iter"):
        cg_sense(physics.A(x), physics, n_iter=0)


# ----------------------------------------------------------------------------- readers
def test_readers_round_trip_and_reject_bad_files(tmp_path):
    k = torch.randn(3, 4, 5, 6, dtype=torch.complex64)
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["kspace"] = k.numpy()
        f["slices_first"] = k.numpy().transpose(1, 0, 2, 3)
        f["real"] = k.real.numpy()
        f["flat"] = k.numpy()[0]
    assert torch.equal(read_kspace_h5(tmp_path / "k.h5"), k)
    assert torch.equal(read_kspace_h5(tmp_path / "k.h5", key="slices_first", coil_axis=1), k)
    assert read_kspace_h5(tmp_path / "k.h5", dtype=C128).dtype == C128
    # every problem of an existing file is one error type naming the file
    with pytest.raises(KspaceFileError, match=r"k\.h5: no dataset 'missing'"):
        read_kspace_h5(tmp_path / "k.h5", key="missing")
    with pytest.raises(KspaceFileError, match="must be complex"):
        read_kspace_h5(tmp_path / "k.h5", key="real")
    with pytest.raises(ValueError, match="4 axes"):
        read_kspace_h5(tmp_path / "k.h5", key="flat")
    with pytest.raises(FileNotFoundError):
        read_kspace_h5(tmp_path / "none.h5")
    data = (tmp_path / "k.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(KspaceFileError, match="truncated"):
        read_kspace_h5(tmp_path / "cut.h5")

    np.save(tmp_path / "k.npy", k.numpy())
    assert torch.equal(read_kspace_npy(tmp_path / "k.npy"), k)
    data = (tmp_path / "k.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 40])
    with pytest.raises(KspaceFileError, match="truncated"):
        read_kspace_npy(tmp_path / "cut.npy")
    np.save(tmp_path / "r.npy", k.real.numpy())
    with pytest.raises(KspaceFileError, match="must be complex"):
        read_kspace_npy(tmp_path / "r.npy")
    y = as_measurement(k)
    assert y.shape == (1, 2, 3, 4, 5, 6) and torch.equal(to_complex_image(y)[0], k)


# ----------------------------------------------------------------------------- partitioning
class IdentityBase(Reconstructor):
    def forward(self, y, physics, x_init=None, **kwargs):
        return x_init


class GradientStepBase(Reconstructor):
    """One gradient step of the patch data term from the context (deterministic, non-trivial)."""

    def forward(self, y, physics, x_init=None, **kwargs):
        return x_init - 0.5 * physics.A_adjoint(physics.A(x_init) - y)


PSHAPE = (10, 12, 8)


def test_patch_measurement_with_ground_truth_context_is_exact():
    physics = _operator(PSHAPE, n_coils=4, accel=3.0)
    x_true = _complex_volume(PSHAPE, seed=2)
    y = physics.A(x_true)
    offset, shape = (2, 3, 1), (5, 6, 4)
    sl = (..., slice(2, 7), slice(3, 9), slice(1, 5))
    x_ctx = x_true.clone()
    x_ctx[sl] = 100 * _rand(1, 2, *shape, seed=3)  # garbage inside the patch must not matter
    patch = physics.restrict(offset, shape)
    y_p = patch_measurement(y - physics.A(x_ctx), patch, x_ctx[sl])
    torch.testing.assert_close(y_p, patch.A(x_true[sl]), rtol=1e-9, atol=1e-9)
    generic = ZeroPaddedPatchPhysics(physics, PSHAPE, offset, shape)
    torch.testing.assert_close(generic.A(x_true[sl]), patch.A(x_true[sl]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(generic.A_adjoint(y), patch.A_adjoint(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [(3, 4, 4), None])
def test_identity_base_blends_back_exactly(stride):
    physics = _operator(PSHAPE, accel=3.0)
    x = _complex_volume(PSHAPE, seed=4)
    rec = PartitionedReconstructor(IdentityBase(), physics.img_size, (6, 8, 6), stride=stride, n_sweeps=2)
    torch.testing.assert_close(rec(physics.A(x), physics, x_init=x), x, rtol=1e-12, atol=1e-12)


def test_gradient_step_base_on_mri_is_exact_and_matches_the_generic_patch_operator():
    physics = _operator(PSHAPE, accel=3.0)
    x_true = _complex_volume(PSHAPE, seed=5)
    y = physics.A(x_true)
    rec = PartitionedReconstructor(GradientStepBase(), physics.img_size, (6, 8, 6), n_sweeps=1)
    # ground-truth context + noiseless data: every patch gradient vanishes, the sweep returns x_true
    torch.testing.assert_close(rec(y, physics, x_init=x_true), x_true, rtol=1e-10, atol=1e-10)
    # L_PART: ground-truth context; from the true patch the step is a no-op, from the zero-filled
    # start it is one exact gradient step on ||A S^T x_p - y_p||^2 with y_p = A S^T x_true[p]
    assert float(rec.training_loss(y, physics, x_true, offset=(1, 2, 1), x_start=x_true)) < 1e-20
    sl = (..., slice(1, 7), slice(2, 10), slice(1, 7))
    patch = physics.restrict((1, 2, 1), (6, 8, 6))
    start = physics.A_dagger(y)[sl]
    step = start - 0.5 * patch.A_adjoint(patch.A(start) - patch.A(x_true[sl]))
    torch.testing.assert_close(rec.training_loss(y, physics, x_true, offset=(1, 2, 1)),
                               torch.nn.functional.mse_loss(step, x_true[sl]), rtol=1e-10, atol=1e-14)
    x0 = physics.A_dagger(y)
    out = rec(y, physics, x_init=x0)
    assert float((out - x_true).norm()) < float((x0 - x_true).norm())  # a gradient step helps
    torch.testing.assert_close(out, rec(y, PlainPhysics(physics), x_init=x0), rtol=1e-10, atol=1e-10)


def test_partitioned_unrolled_pgd_runs_on_mri():
    torch.manual_seed(0)
    physics = _operator(PSHAPE, accel=3.0, dtype=torch.float32)
    x = _complex_volume(PSHAPE, dtype=torch.float32)
    y = physics.A(x)
    model = UnrolledPGD(UNet3D(in_channels=2, out_channels=2, base=2, depth=1), n_iter=1, step_size=0.5)
    rec = PartitionedReconstructor(model, physics.img_size, (6, 8, 8), n_sweeps=1)
    out = rec(y, physics)
    assert out.shape == x.shape and torch.isfinite(out).all()
    loss = rec.training_loss(y, physics, x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
