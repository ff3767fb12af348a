"""FDK's backprojection op (csrc/fdk_backproject.h): the C++ kernel against its PyTorch twin
(grid_sample), on circular, short-scan and vector geometries with odd shapes and offsets; the
registration (opcheck, gradient); bad inputs; the CUDA kernel against the CPU one."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.ops.fdk_backproject import FDK_PROGRESS_VIEWS, fdk_backproject
from unrolled3d.ops.projector_ref import fdk_backproject_raw
from unrolled3d.physics import ConeBeamGeometry
from unrolled3d.physics.fdk import fdk_tables
from conftest import circular_geometry, requires_cuda, wobbly_vector_geometry

GEOMETRIES = {
    "circular": lambda: circular_geometry(vol_shape=(7, 10, 9), det_shape=(11, 13), n_views=9),
    "short_scan": lambda: circular_geometry(vol_shape=(9, 6, 11), det_shape=(12, 9), n_views=10, scan="short"),
    "vector": lambda: wobbly_vector_geometry(vol_shape=(8, 9, 11), det_shape=(12, 10), n_views=7),
    # more slices than a thread's run (8), a detector smaller than the shadow
    "tall": lambda: circular_geometry(vol_shape=(19, 5, 6), det_shape=(7, 8), n_views=5),
}
# float64: same formulas, multiplications by reciprocals where the twin divides: ~1e-15 relative.
# float32: the twin rounds the detector coordinate through grid_sample's normalisation
# (c / ((cols-1)/2), then back): ~1e-7 of tens of pixels, times the image's slope: ~1e-5 relative.
TOL = {torch.float64: dict(rtol=1e-11, atol=1e-12), torch.float32: dict(rtol=5e-5, atol=5e-5)}


def _inputs(g: ConeBeamGeometry, dtype, n_items=2, seed=0, device="cpu"):
    table = fdk_tables(g, device).views.to(dtype)
    images = torch.randn(n_items, g.n_views, *g.det_shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return images.to(device), table


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_op_matches_twin(name, dtype):
    g = GEOMETRIES[name]()
    images, table = _inputs(g, dtype)
    ref = fdk_backproject_raw(images, table, g.vol_geom, *g.vol_shape)
    out = torch.ops.unrolled3d.fdk_backproject(images, table, g.vol_geom, *g.vol_shape)
    assert out.dtype == dtype and out.shape == (2, *g.vol_shape)
    assert bool((ref != 0).any())
    scale = float(ref.abs().max())
    torch.testing.assert_close(out, ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


def test_op_handles_items_independently_and_reads_non_contiguous_images():
    g = GEOMETRIES["vector"]()
    images, table = _inputs(g, torch.float64, n_items=3)
    whole = torch.ops.unrolled3d.fdk_backproject(images, table, g.vol_geom, *g.vol_shape)
    for i in range(3):
        one = torch.ops.unrolled3d.fdk_backproject(images[i : i + 1], table, g.vol_geom, *g.vol_shape)
        assert torch.equal(one[0], whole[i])
    strided = images.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    assert torch.equal(torch.ops.unrolled3d.fdk_backproject(strided, table, g.vol_geom, *g.vol_shape), whole)


def test_twin_steps_do_not_change_its_result():
    # the twin's slabs of 1, 5 or all slices: the same per-voxel arithmetic, to the bit
    g = GEOMETRIES["tall"]()
    images, table = _inputs(g, torch.float32)
    whole = fdk_backproject_raw(images, table, g.vol_geom, *g.vol_shape, slab_voxels=10**9)
    for slab_voxels in (1, 5 * 5 * 6 * 8 + 7):
        out = fdk_backproject_raw(images, table, g.vol_geom, *g.vol_shape, slab_voxels=slab_voxels)
        torch.testing.assert_close(out, whole, rtol=0, atol=0)


def test_progress_steps_sum_to_the_single_call():
    g = circular_geometry(vol_shape=(5, 6, 7), det_shape=(8, 9), n_views=2 * FDK_PROGRESS_VIEWS + 5)
    images, table = _inputs(g, torch.float64, n_items=1)
    one = fdk_backproject(images, table, g.vol_geom, g.vol_shape)
    stepped = fdk_backproject(images, table, g.vol_geom, g.vol_shape, progress=True)
    torch.testing.assert_close(stepped, one, rtol=1e-13, atol=1e-13 * float(one.abs().max()))


def test_opcheck_and_gradient():
    g = circular_geometry(vol_shape=(3, 4, 5), det_shape=(4, 5), n_views=3)
    images, table = _inputs(g, torch.float64, n_items=1)
    args = (images.requires_grad_(), table, g.vol_geom, *g.vol_shape)
    torch.library.opcheck(torch.ops.unrolled3d.fdk_backproject.default, args)
    assert torch.autograd.gradcheck(lambda im: torch.ops.unrolled3d.fdk_backproject(im, *args[1:]), (images,))


def test_bad_inputs_raise():
    g = circular_geometry(vol_shape=(3, 4, 5), det_shape=(4, 5), n_views=3)
    images, table = _inputs(g, torch.float64, n_items=1)
    op = torch.ops.unrolled3d.fdk_backproject
    with pytest.raises(RuntimeError, match="table must have shape"):
        op(images, table[:2], g.vol_geom, *g.vol_shape)
    with pytest.raises(RuntimeError, match="the images' dtype"):
        op(images, table.float(), g.vol_geom, *g.vol_shape)
    with pytest.raises(RuntimeError, match="4-D"):
        op(images[0], table, g.vol_geom, *g.vol_shape)
    with pytest.raises(RuntimeError, match="vol_geom must hold 6"):
        op(images, table, g.vol_geom[:5], *g.vol_shape)
    with pytest.raises(RuntimeError, match="volume shape must be positive"):
        op(images, table, g.vol_geom, 0, 4, 5)


@requires_cuda
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_op_matches_cpu(name, dtype):
    g = GEOMETRIES[name]()
    images, table = _inputs(g, dtype, n_items=3)
    ref = torch.ops.unrolled3d.fdk_backproject(images, table, g.vol_geom, *g.vol_shape)
    out = torch.ops.unrolled3d.fdk_backproject(images.cuda(), table.cuda(), g.vol_geom, *g.vol_shape).cpu()
    # the GPU fuses multiply-adds: a rounding apart; float32 through the same coordinate rounding
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref, rtol=tol["rtol"], atol=tol["atol"] * float(ref.abs().max()))
