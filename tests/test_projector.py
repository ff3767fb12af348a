"""The C++/CUDA cone-beam projector pair: against its PyTorch twin, adjointness, autograd,
torch.library registration, torch.compile and input validation."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.ops import cone_backproject, cone_project
from unrolled3d.ops.projector_ref import cone_backproject_ref, cone_project_ref
from conftest import adjoint_gap, circular_geometry, requires_cuda, wobbly_vector_geometry

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
        cone_project(x.to(torch.float16), g)
    with pytest.raises(TypeError, match="float32 or float64"):
        cone_project(x.to(torch.int32), g)
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
