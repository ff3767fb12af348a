"""The C++/CUDA cone-beam projector pair: against its PyTorch twin, adjointness, autograd,
torch.library registration, torch.compile and input validation."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.ops import cone_backproject, cone_project
from unrolled3d.ops.projector_ref import cone_backproject_ref, cone_project_ref
from conftest import adjoint_gap, circular_geometry, requires_cuda, wobbly_vector_geometry
from func_testing import LOW, assert_rounded_float32, central_difference, dense_jacobian

DTYPES = [torch.float32, torch.float64]
# Twin tolerance: the C++ CPU path and the twin use the same float64 geometry and accumulate in
# float64, so they differ by summation order only (1e-12 relative in float64); float32 output
# rounding gives ~6e-8 relative per value.
TWIN_TOL = {torch.float64: dict(rtol=1e-10, atol=1e-11), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _rand(shape, dtype, seed=0, device="cpu"):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_twin(geometry, dtype):
    x = _rand((2, 3, *geometry.vol_shape), dtype)
    torch.testing.assert_close(cone_project(x, geometry), cone_project_ref(x, geometry), **TWIN_TOL[dtype])


PATCHES = [((0, 0, 0), (3, 4, 3)), ((4, 5, 6), (3, 4, 3)), ((2, 3, 1), (1, 1, 1)), ((0, 5, 0), (7, 4, 9))]  # in both volumes


@pytest.mark.parametrize("offset, shape", PATCHES)
def test_forward_of_a_patch_matches_twin_and_is_zero_outside_its_shadow(geometry, offset, shape):
    # The CPU forward projector skips the rays outside each view's shadow of the volume box (the
    # projected corners, widened by a pixel). For a patch (the geometry of A S^T) most rays miss:
    # the skipped ones must be exactly 0 and the others the twin's line integrals.
    patch = geometry.restrict(offset, shape)
    x = _rand((2, 1, *shape), torch.float64, seed=1)
    out = cone_project(x, patch)
    ref = cone_project_ref(x, patch)
    torch.testing.assert_close(out, ref, **TWIN_TOL[torch.float64])
    assert torch.equal(out == 0, ref == 0)  # the same rays miss, and those give exactly 0
    assert bool((ref == 0).any()) and bool((ref != 0).any())


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_twin(geometry, dtype):
    y = _rand((2, 1, *geometry.sino_shape), dtype)
    torch.testing.assert_close(cone_backproject(y, geometry), cone_backproject_ref(y, geometry), **TWIN_TOL[dtype])


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_adjointness(geometry, dtype, tol):
    x = _rand((2, 1, *geometry.vol_shape), dtype, 1)
    y = _rand((2, 1, *geometry.sino_shape), dtype, 2)
    gap = adjoint_gap(cone_project(x, geometry), y, x, cone_backproject(y, geometry))
    assert gap < tol
    if dtype == torch.float64:  # the pair is an exact transpose: the gap is rounding only
        assert gap < 1e-13


def test_twin_is_an_exact_transpose_too(geometry):
    # Independent of the C++ code: the twin's backprojection is the transpose of its projection.
    x = _rand((1, 1, *geometry.vol_shape), torch.float64, 3)
    y = _rand((1, 1, *geometry.sino_shape), torch.float64, 4)
    assert adjoint_gap(cone_project_ref(x, geometry), y, x, cone_backproject_ref(y, geometry)) < 1e-13


def test_non_contiguous_and_batched_inputs():
    g = circular_geometry()
    base = _rand((3, 2, *g.vol_shape), torch.float64, 5)
    x = base.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous strides
    assert not x.is_contiguous()
    torch.testing.assert_close(cone_project(x, g), cone_project(base, g), rtol=0, atol=0)
    # each batch item is projected independently
    single = torch.stack([cone_project(base[i : i + 1, j : j + 1], g)[0, 0] for i in range(3) for j in range(2)])
    torch.testing.assert_close(cone_project(base, g).reshape(6, *g.sino_shape), single, rtol=0, atol=1e-14)
    y = _rand((2, 3, *g.sino_shape), torch.float64, 6)[:, :, :, :, :]
    y_nc = y.permute(1, 0, 2, 3, 4).contiguous().permute(1, 0, 2, 3, 4)
    torch.testing.assert_close(cone_backproject(y_nc, g), cone_backproject(y, g), rtol=0, atol=1e-14)


def test_projection_of_constant_volume_counts_path_length():
    # A ray along the central axis of a circular scan crosses W voxels of sx mm each.
    from unrolled3d.physics import ConeBeamGeometry

    g = ConeBeamGeometry.circular(4, 200.0, 100.0, (3, 3), 1.0, (5, 6, 7), voxel_size=(1.0, 1.5, 2.0))
    y = cone_project(torch.ones(1, 1, 5, 6, 7, dtype=torch.float64), g)
    # view 0: the source sits on -y, so the central ray runs along y through H voxels of 1.5 mm
    assert float(y[0, 0, 0, 1, 1]) == pytest.approx(6 * 1.5, rel=1e-12)
    # view 1 (90 deg): the central ray runs along x through W voxels of 2 mm
    assert float(y[0, 0, 1, 1, 1]) == pytest.approx(7 * 2.0, rel=1e-12)


def test_gradcheck_float64():
    g = circular_geometry(vol_shape=(3, 4, 3), det_shape=(3, 4), n_views=2)
    x = _rand((1, 1, *g.vol_shape), torch.float64, 7).requires_grad_()
    y = _rand((1, 1, *g.sino_shape), torch.float64, 8).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: cone_project(t, g), (x,))
    assert torch.autograd.gradcheck(lambda t: cone_backproject(t, g), (y,))
    assert torch.autograd.gradgradcheck(lambda t: cone_project(t, g), (x,))


# ----------------------------------------------------------------------------- torch.func
TINY = dict(vol_shape=(3, 4, 3), det_shape=(3, 4), n_views=2)


@pytest.mark.parametrize("in_dim", [0, 2])
def test_vmap_equals_a_loop(geometry, in_dim):
    """vmap folds the vmapped dimension into B: the same numbers as one call per volume (the
    projector treats each (b, c) alone, so only summation order could differ: it does not)."""
    x = _rand((4, 2, 1, *geometry.vol_shape), torch.float64, 20)
    y = _rand((4, 2, 1, *geometry.sino_shape), torch.float64, 21)
    fwd = torch.func.vmap(lambda t: cone_project(t, geometry), in_dims=in_dim)(x.movedim(0, in_dim))
    bwd = torch.func.vmap(lambda t: cone_backproject(t, geometry), in_dims=in_dim)(y.movedim(0, in_dim))
    torch.testing.assert_close(fwd, torch.stack([cone_project(t, geometry) for t in x]), rtol=0, atol=1e-14)
    torch.testing.assert_close(bwd, torch.stack([cone_backproject(t, geometry) for t in y]), rtol=0, atol=1e-14)


def test_vmap_over_the_geometry_loops():
    """A vmapped views tensor (a batch of scans) cannot join B: the rule falls back to a loop."""
    g = circular_geometry(**TINY)
    views = torch.stack([g.views_tensor(), g.views_tensor() * 1.01])
    x = _rand((1, 1, *g.vol_shape), torch.float64, 22)
    op = torch.ops.unrolled3d.cone_project
    out = torch.func.vmap(lambda v: op(x, v, g.vol_geom, *g.det_shape))(views)
    torch.testing.assert_close(out, torch.stack([op(x, v, g.vol_geom, *g.det_shape) for v in views]),
                               rtol=0, atol=0)


def test_jvp_is_the_projection_of_the_tangent(geometry):
    x = _rand((2, 1, *geometry.vol_shape), torch.float64, 23)
    t = _rand((2, 1, *geometry.vol_shape), torch.float64, 24)
    out, tangent = torch.func.jvp(lambda v: cone_project(v, geometry), (x,), (t,))
    torch.testing.assert_close(out, cone_project(x, geometry), rtol=0, atol=0)
    torch.testing.assert_close(tangent, cone_project(t, geometry), rtol=1e-12, atol=1e-12)
    # and central differences (exact for a linear map, up to rounding)
    fd = central_difference(lambda v: cone_project(v, geometry), (x,), (t,))
    torch.testing.assert_close(tangent, fd, rtol=1e-10, atol=1e-10)
    y = _rand((2, 1, *geometry.sino_shape), torch.float64, 25)
    _, tb = torch.func.jvp(lambda s: cone_backproject(s, geometry), (y,), (y,))
    torch.testing.assert_close(tb, cone_backproject(y, geometry), rtol=1e-12, atol=1e-12)


def test_jacrev_and_jacfwd_equal_the_dense_matrix():
    """The Jacobians by reverse mode, forward mode and an explicit loop over unit volumes agree,
    and the backprojection's Jacobian is the transpose (float64: the operators are exact
    transposes, so only rounding separates them)."""
    g = circular_geometry(**TINY)
    x = _rand((1, 1, *g.vol_shape), torch.float64, 26)
    y = _rand((1, 1, *g.sino_shape), torch.float64, 27)
    A = lambda v: cone_project(v, g)  # noqa: E731
    At = lambda s: cone_backproject(s, g)  # noqa: E731
    dense = dense_jacobian(A, x)
    for jac in (torch.func.jacrev(A)(x), torch.func.jacfwd(A)(x)):
        torch.testing.assert_close(jac, dense, rtol=1e-12, atol=1e-12)
    n_out, n_in = y.numel(), x.numel()
    torch.testing.assert_close(torch.func.jacrev(At)(y).reshape(n_in, n_out), dense.reshape(n_out, n_in).T,
                               rtol=1e-12, atol=1e-12)


def test_hessian_of_the_data_term_is_the_normal_matrix():
    """grad and hessian (forward over reverse) of 0.5 ||A x - y||^2: A^T (A x - y) and A^T A."""
    g = circular_geometry(**TINY)
    x = _rand((1, 1, *g.vol_shape), torch.float64, 28)
    y = _rand((1, 1, *g.sino_shape), torch.float64, 29)
    loss = lambda v: 0.5 * ((cone_project(v, g) - y) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(loss)(x), cone_backproject(cone_project(x, g) - y, g),
                               rtol=1e-12, atol=1e-12)
    A = dense_jacobian(lambda v: cone_project(v, g), x).reshape(y.numel(), x.numel())
    torch.testing.assert_close(torch.func.hessian(loss)(x).reshape(x.numel(), x.numel()), A.T @ A,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_is_the_float32_result_rounded(dtype):
    """float16/bfloat16 run in float32 and are rounded once; for a non-negative volume the
    projection (non-negative weights) then also stays within one eps of the float32 projection
    of the unrounded volume: input rounding (eps/2) plus output rounding (eps/2)."""
    g = circular_geometry()
    x32 = torch.rand((2, 1, *g.vol_shape), generator=torch.Generator().manual_seed(30))
    x = x32.to(dtype)
    y = cone_project(x, g)
    assert_rounded_float32(y, cone_project(x.float(), g), dtype)
    ref = cone_project(x32, g)
    assert bool(((y.float() - ref).abs() <= torch.finfo(dtype).eps * ref.abs() + 1e-30).all())
    assert_rounded_float32(cone_backproject(y, g), cone_backproject(y.float(), g), dtype)
    # gradients come back in the input's dtype: A^T of the (float32) output gradient, rounded
    xg = x.clone().requires_grad_()
    w = _rand(y.shape, torch.float32, 31)
    (cone_project(xg, g).float() * w).sum().backward()
    assert_rounded_float32(xg.grad, cone_backproject(w.to(dtype).float(), g), dtype)


def test_autocast_runs_in_float32():
    """Under torch.autocast the public functions and the raw ops compute and return float32."""
    g = circular_geometry()
    x = torch.rand((1, 1, *g.vol_shape), generator=torch.Generator().manual_seed(32)).to(torch.bfloat16)
    ref = cone_project(x.float(), g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cone_project(x, g)
        raw = torch.ops.unrolled3d.cone_project(x, g.views_tensor(), g.vol_geom, *g.det_shape)
        back = torch.ops.unrolled3d.cone_backproject(ref.to(torch.bfloat16), g.views_tensor(), g.vol_geom,
                                                     *g.vol_shape)
    assert out.dtype == raw.dtype == back.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(raw, ref, rtol=0, atol=0)
    torch.testing.assert_close(back, cone_backproject(ref.to(torch.bfloat16).float(), g), rtol=0, atol=0)


def test_opcheck_registered_ops():
    g = circular_geometry(vol_shape=(3, 4, 5), det_shape=(4, 3), n_views=3)
    views = g.views_tensor("cpu")
    x = _rand((1, 2, *g.vol_shape), torch.float64, 9).requires_grad_()
    y = _rand((1, 2, *g.sino_shape), torch.float64, 10).requires_grad_()
    torch.library.opcheck(torch.ops.unrolled3d.cone_project.default, (x, views, g.vol_geom, *g.det_shape))
    torch.library.opcheck(torch.ops.unrolled3d.cone_backproject.default, (y, views, g.vol_geom, *g.vol_shape))


def test_torch_compile_traces_the_ops():
    g = wobbly_vector_geometry()
    x = _rand((1, 1, *g.vol_shape), torch.float32, 11)

    def normal_op(t):
        return cone_backproject(cone_project(t, g), g) * 0.5

    compiled = torch.compile(normal_op, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), normal_op(x))
    xg = x.clone().requires_grad_()
    compiled(xg).sum().backward()
    xr = x.clone().requires_grad_()
    normal_op(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


def test_bad_inputs_raise_before_cpp():
    g = circular_geometry()
    x = torch.zeros(1, 1, *g.vol_shape)
    with pytest.raises(ValueError, match="5-D"):
        cone_project(x[0], g)
    with pytest.raises(TypeError, match="float32 or float64"):
        cone_project(x.to(torch.int32), g)
    with pytest.raises(TypeError, match="float32 or float64"):
        cone_project(x.to(torch.complex64), g)
    with pytest.raises(ValueError, match="vol_shape"):
        cone_project(torch.zeros(1, 1, 3, 3, 3), g)
    with pytest.raises(TypeError, match="torch.Tensor"):
        cone_project(x.numpy(), g)
    with pytest.raises(TypeError, match="ConeBeamGeometry"):
        cone_project(x, "geometry")
    with pytest.raises(ValueError, match="n_views, rows, cols"):
        cone_backproject(torch.zeros(1, 1, g.n_views + 1, *g.det_shape), g)
    with pytest.raises(ValueError, match="CPU or CUDA"):
        cone_project(x.to("meta"), g)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful on a machine without a GPU build")
def test_backends_reports_cuda_status():
    import unrolled3d

    info = unrolled3d.backends()
    assert info["cpp_cpu"] and isinstance(info["cuda_status"], str) and info["cuda_status"]


# ----------------------------------------------------------------------------- CUDA twin
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(geometry, dtype):
    x = _rand((2, 2, *geometry.vol_shape), dtype, 12)
    y = _rand((2, 2, *geometry.sino_shape), dtype, 13)
    # float32 on CUDA uses float geometry: ~1e-6 relative differences in the weights
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cone_project(x.cuda(), geometry).cpu(), cone_project(x, geometry), **tol)
    torch.testing.assert_close(cone_backproject(y.cuda(), geometry).cpu(), cone_backproject(y, geometry), **tol)


@requires_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_cuda_adjointness_large(dtype, tol):
    from unrolled3d.physics import ConeBeamGeometry

    g = ConeBeamGeometry.circular(64, 300.0, 200.0, (96, 112), 1.4, (80, 96, 72), voxel_size=(1.0, 1.1, 1.2),
                                  det_offset=(2.0, -3.0), vol_offset=(1.0, 0.0, -2.0))
    x = _rand((1, 1, *g.vol_shape), dtype, 14, "cuda")
    y = _rand((1, 1, *g.sino_shape), dtype, 15, "cuda")
    assert adjoint_gap(cone_project(x, g), y, x, cone_backproject(y, g)) < tol


@requires_cuda
def test_cuda_gradcheck_and_compile():
    g = circular_geometry(vol_shape=(3, 4, 3), det_shape=(3, 4), n_views=2)
    x = _rand((1, 1, *g.vol_shape), torch.float64, 16, "cuda").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: cone_project(t, g), (x,))
    views = g.views_tensor("cuda")
    torch.library.opcheck(torch.ops.unrolled3d.cone_project.default, (x, views, g.vol_geom, *g.det_shape))
    compiled = torch.compile(lambda t: cone_backproject(cone_project(t, g), g), fullgraph=True)
    torch.testing.assert_close(compiled(x.detach()), cone_backproject(cone_project(x.detach(), g), g))
