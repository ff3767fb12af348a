"""The backprojection algorithms ("scatter", "tile", "gather", "column", see csrc/cone_beam.h) against
each other and against the forward projector: each must be the transpose of cone_project to
rounding, on every geometry convention (odd sizes, offsets, anisotropic voxels, vector geometry,
short scans, patches, detectors larger and smaller than the volume's shadow, z-driven rays,
driving-axis ties, a detector plane through the source with a pixel on the source), and for the
column backprojector the shapes of its CUDA blocks (several tiles of columns and runs of slices,
partial ones at the edges, a window cut into several chunks)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrolled3d.ops.projector import BACKPROJECT_ALGORITHMS, cone_backproject, cone_backproject_algo, cone_project
from unrolled3d.physics import ConeBeamGeometry
from conftest import adjoint_gap, circular_geometry, requires_cuda, wobbly_vector_geometry

NEW = ["tile", "gather", "column"]  # compared with the old "scatter"
# per-voxel sums in a fixed order whatever the thread count: bit for bit deterministic
PER_VOXEL = ("gather", "column")


def _steep_geometry() -> ConeBeamGeometry:
    """Rays steeper than 45 deg (z-driven) and, across the detector, all three driving axes."""
    vec = []
    for a in np.linspace(0.0, 2 * math.pi, 5, endpoint=False):
        c, s = math.cos(a), math.sin(a)
        src = np.array([12 * s, -12 * c, 30.0])
        det = np.array([-10 * s, 10 * c, -25.0])
        u = np.array([c, s, 0.0]) * 1.7
        v = np.cross(det - src, u)
        v = v / np.linalg.norm(v) * 1.5
        vec.append(np.concatenate([src, det, u, v]))
    return ConeBeamGeometry.from_vectors(np.array(vec), (13, 15), (6, 7, 8), (1.0, 1.1, 0.9), (0.2, -0.3, 0.1))


def _tie_geometry() -> ConeBeamGeometry:
    """Central rays with |dx| == |dy| exactly (equal voxel sizes): the driving-axis tie rule."""
    vec = np.array([
        [-40.0, -40.0, 0.0, 30.0, 30.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 1.2],
        [40.0, -40.0, 0.0, -30.0, 30.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.2],
        [0.0, -50.0, 0.0, 0.0, 30.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.2],
    ])
    return ConeBeamGeometry.from_vectors(vec, (7, 9), (6, 8, 8), 1.0)


# View 0: the detector plane contains the source (no central projection: the gather scans the whole
# detector) and pixel (3, 0) sits on the source (a degenerate ray, which weighs nothing).
# ConeBeamGeometry refuses such a view (the volume is not between source and detector), so it is
# tested on the raw ops, which accept any views.
SOURCE_PLANE_VIEWS = np.array([
    [0.0, -30.0, 0.0, 0.0, 30.0, 0.0, 0.0, 15.0, 0.0, 0.0, 0.0, 1.5],
    [0.0, -30.0, 0.0, 0.0, 30.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 1.5],
])
SOURCE_PLANE_DET, SOURCE_PLANE_VOL, SOURCE_PLANE_GEOM = (7, 9), (5, 6, 7), [1.0, 1.2, 0.9, 0.0, 0.0, 0.0]


def _tiled_geometry() -> ConeBeamGeometry:
    """More than one CUDA block of the column backprojector on every axis (16 x 16 columns, 8 or 16
    slices), with partial blocks at the far edges."""
    return circular_geometry(vol_shape=(19, 21, 35), det_shape=(26, 40), n_views=5)


def _chunked_geometry() -> ConeBeamGeometry:
    """Pixels 0.2 mm for voxels of about 1 mm: a block's detector window holds thousands of pixels,
    cut into many chunks of at most 256 or 512."""
    return ConeBeamGeometry.circular(4, 60.0, 35.0, (40, 56), 0.2, (10, 12, 11), voxel_size=(0.9, 1.2, 1.05),
                                     vol_offset=(0.3, -0.2, 0.1), det_offset=(0.5, -0.4))


GEOMETRIES = {
    "circular": circular_geometry,
    "tiled": _tiled_geometry,
    "chunked": _chunked_geometry,
    "vector": wobbly_vector_geometry,
    "short_scan": lambda: circular_geometry(scan="short"),
    "patch": lambda: circular_geometry(vol_shape=(12, 14, 13)).restrict((3, 2, 5), (6, 7, 5)),
    "small_detector": lambda: circular_geometry(det_shape=(4, 5)),  # sees part of the volume
    "large_detector": lambda: circular_geometry(det_shape=(31, 37)),  # most rays miss the volume
    "steep": _steep_geometry,
    "ties": _tie_geometry,
}


@pytest.fixture(params=sorted(GEOMETRIES))
def geom(request) -> ConeBeamGeometry:
    return GEOMETRIES[request.param]()


def _rand(shape, dtype, seed, device="cpu"):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def test_tie_and_source_plane_geometries_exercise_their_cases():
    # Guards the fixtures above: without these properties the corresponding cases test nothing.
    g = _tie_geometry()
    vec = np.array(g.vectors)
    centre = vec[:, 3:6] - vec[:, 0:3]  # direction to the central pixel (odd detector: a pixel centre)
    assert centre[0, 0] == centre[0, 1] and centre[1, 0] == -centre[1, 1]
    src, det, u, v = (SOURCE_PLANE_VIEWS[0, i : i + 3] for i in (0, 3, 6, 9))
    assert np.dot(src - det, np.cross(u, v)) == 0.0  # the source is in the detector plane
    rows, cols = SOURCE_PLANE_DET
    assert np.array_equal(det + (0 - (cols - 1) / 2) * u + (3 - (rows - 1) / 2) * v, src)  # pixel (3, 0)
    steep = _steep_geometry()
    d = np.array(steep.vectors)[:, 3:6] - np.array(steep.vectors)[:, 0:3]
    assert (np.abs(d[:, 2]) > np.abs(d[:, :2]).max(1)).all()  # central rays are z-driven


@pytest.mark.parametrize("algorithm", NEW)
def test_new_algorithms_equal_scatter_float64(geom, algorithm):
    # The bar: the new A^T equals the old scatter A^T to 1e-12 relative in float64. They
    # visit the same (voxel, weight) pairs with weights equal to the last bit or to one rounding of
    # 1 (see joseph_weight), and differ in summation order only: ~1e-16 relative per voxel.
    y = _rand((2, 1, *geom.sino_shape), torch.float64, 1)
    ref = cone_backproject_algo(y, geom, "scatter")
    out = cone_backproject_algo(y, geom, algorithm)
    assert ref.abs().max() > 0  # the geometry sees the volume
    assert float((out - ref).norm() / ref.norm()) < 1e-12
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-12  # voxel by voxel, not only in norm


@pytest.mark.parametrize("algorithm", NEW)
def test_detector_plane_through_the_source(algorithm):
    views = torch.from_numpy(SOURCE_PLANE_VIEWS)
    ops = torch.ops.unrolled3d
    x = _rand((1, 1, *SOURCE_PLANE_VOL), torch.float64, 15)
    y = _rand((1, 1, 2, *SOURCE_PLANE_DET), torch.float64, 16)
    ref = ops.cone_backproject_algo(y, views, SOURCE_PLANE_GEOM, *SOURCE_PLANE_VOL, "scatter")
    out = ops.cone_backproject_algo(y, views, SOURCE_PLANE_GEOM, *SOURCE_PLANE_VOL, algorithm)
    assert ref[0, 0].abs().sum() > 0
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-12
    Ax = ops.cone_project(x, views, SOURCE_PLANE_GEOM, *SOURCE_PLANE_DET)
    assert Ax[0, 0, 0].abs().sum() > 0  # view 0 (all rays in the detector plane) sees the volume
    assert adjoint_gap(Ax, y, x, out) < 1e-13


@pytest.mark.parametrize("algorithm", BACKPROJECT_ALGORITHMS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_adjointness(geom, algorithm, dtype, tol):
    x = _rand((1, 1, *geom.vol_shape), dtype, 2)
    y = _rand((1, 1, *geom.sino_shape), dtype, 3)
    gap = adjoint_gap(cone_project(x, geom), y, x, cone_backproject_algo(y, geom, algorithm))
    assert gap < tol
    if dtype == torch.float64:  # an exact transpose: the gap is rounding only (~1e-16)
        assert gap < 1e-13


@pytest.mark.parametrize("algorithm", NEW)
def test_float32_matches_float64(algorithm):
    g = wobbly_vector_geometry()
    y = _rand((1, 2, *g.sino_shape), torch.float64, 4)
    ref = cone_backproject_algo(y, g, "scatter")
    out = cone_backproject_algo(y.float(), g, algorithm).double()
    # float32 data, float64 geometry on the CPU: input and output rounding, ~1e-7 relative
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_auto_is_the_default_and_tile_on_cpu():
    g = circular_geometry()
    y = _rand((1, 1, *g.sino_shape), torch.float64, 5)
    default = cone_backproject(y, g)
    assert torch.equal(default, cone_backproject_algo(y, g, "auto"))
    assert torch.equal(default, cone_backproject_algo(y, g, "tile"))  # the measured-fastest CPU algorithm


@pytest.mark.parametrize("algorithm", NEW)
def test_batch_items_are_independent(algorithm):
    # Five items: more than the CUDA gather's four per thread, and the CPU's multi-item paths.
    g = wobbly_vector_geometry()
    y = _rand((5, 1, *g.sino_shape), torch.float64, 6)
    y[2] = 0.0  # an all-zero item (skipped rays)
    batched = cone_backproject_algo(y, g, algorithm)
    single = torch.cat([cone_backproject_algo(y[i : i + 1], g, algorithm) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-13, atol=1e-13)
    assert not batched[2].any()


@pytest.mark.parametrize("algorithm", NEW)
def test_deterministic_across_calls_and_thread_counts(algorithm):
    # No atomics: repeated calls give the same bits. "gather" and "column" sum each voxel in a fixed
    # order whatever the thread count. "tile" gives each voxel its rays in pixel order in whichever slab
    # holds it; only a plane that is interior in one slab split and bounds-checked in another can
    # round its floor differently (q + 1 rounding up to an integer), so across thread counts it is
    # equal to rounding, not bit for bit by construction.
    g = circular_geometry(vol_shape=(9, 8, 7))
    y = _rand((1, 1, *g.sino_shape), torch.float32, 7)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cone_backproject_algo(y, g, algorithm)
        torch.set_num_threads(2)
        two = cone_backproject_algo(y, g, algorithm)
        again = cone_backproject_algo(y, g, algorithm)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(two, again)
    if algorithm in PER_VOXEL:
        assert torch.equal(one, two)
    else:
        torch.testing.assert_close(one, two, rtol=1e-6, atol=1e-6 * float(one.abs().max()))


def test_non_contiguous_input():
    g = wobbly_vector_geometry()
    y = _rand((2, 3, *g.sino_shape), torch.float64, 8)
    y_nc = y.permute(1, 0, 2, 3, 4).contiguous().permute(1, 0, 2, 3, 4)
    assert not y_nc.is_contiguous()
    for algorithm in NEW:
        assert torch.equal(cone_backproject_algo(y_nc, g, algorithm), cone_backproject_algo(y, g, algorithm))


@pytest.mark.parametrize("algorithm", BACKPROJECT_ALGORITHMS)
def test_gradcheck_float64(algorithm, one_thread):
    g = circular_geometry(vol_shape=(3, 4, 3), det_shape=(3, 4), n_views=2)
    y = _rand((1, 1, *g.sino_shape), torch.float64, 9).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: cone_backproject_algo(t, g, algorithm), (y,))
    assert torch.autograd.gradgradcheck(lambda t: cone_backproject_algo(t, g, algorithm), (y,))


@pytest.mark.parametrize("algorithm", BACKPROJECT_ALGORITHMS)
def test_opcheck(algorithm, one_thread):
    g = circular_geometry(vol_shape=(3, 4, 5), det_shape=(4, 3), n_views=3)
    y = _rand((1, 2, *g.sino_shape), torch.float64, 10).requires_grad_()
    torch.library.opcheck(
        torch.ops.unrolled3d.cone_backproject_algo.default, (y, g.views_tensor("cpu"), g.vol_geom, *g.vol_shape, algorithm)
    )


def test_torch_compile_traces_the_algo_op():
    g = wobbly_vector_geometry()
    y = _rand((1, 1, *g.sino_shape), torch.float32, 11)
    fn = lambda t: cone_backproject_algo(t, g, "gather") * 2.0  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(y), fn(y))


def test_bad_algorithm_raises():
    g = circular_geometry()
    y = torch.zeros(1, 1, *g.sino_shape)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cone_backproject_algo(y, g, "fastest")
    with pytest.raises(TypeError, match="algorithm must be a str"):
        cone_backproject_algo(y, g, 1)
    with pytest.raises(ValueError, match="n_views, rows, cols"):
        cone_backproject_algo(torch.zeros(1, 1, g.n_views + 1, *g.det_shape), g, "gather")
    # the C++ op refuses unknown names too (direct torch.ops users)
    with pytest.raises(RuntimeError, match="unknown backprojection algorithm"):
        torch.ops.unrolled3d.cone_backproject_algo(y, g.views_tensor("cpu"), g.vol_geom, *g.vol_shape, "fastest")


def test_chunked_geometry_cuts_windows_into_chunks():
    # Guards the fixture: the column backprojector's block window must exceed a chunk (at most 512
    # pixels), or the chunk loop is not exercised.
    # The volume fits one tile of columns, so a block's window holds the volume's shadow.
    g = _chunked_geometry()
    shadow = cone_project(torch.ones(1, 1, *g.vol_shape, dtype=torch.float64), g)[0, 0] > 0
    assert int(shadow.flatten(1).sum(1).min()) > 3 * 512  # every view: more than three chunks


def test_column_writes_every_voxel_once():
    # The column backprojector allocates its output without zeroing it and writes each voxel once:
    # voxels no ray reaches must come out 0, not whatever the memory held. A detector that sees a
    # corner of the volume leaves most voxels unreached.
    g = circular_geometry(vol_shape=(19, 21, 35), det_shape=(4, 5))
    for _ in range(3):
        # a freed buffer of the output's size, full of NaN: the allocator tends to hand it out next
        # (111 KB: below glibc's threshold for fresh, zeroed pages)
        torch.full((1, 1, *g.vol_shape), float("nan"), dtype=torch.float64).sum()
        y = _rand((1, 1, *g.sino_shape), torch.float64, 17)
        ref = cone_backproject_algo(y, g, "scatter")
        out = cone_backproject_algo(y, g, "column")
        assert bool((ref == 0).any()) and bool((ref != 0).any())
        assert torch.equal(out == 0, ref == 0)
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-12


# ----------------------------------------------------------------------------- CUDA
@requires_cuda
@pytest.mark.parametrize("algorithm", ["gather", "column"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_algorithm_matches_cpu(geom, dtype, algorithm):
    y = _rand((5, 1, *geom.sino_shape), dtype, 12)  # five items: two groups of the gather kernel's four
    ref = cone_backproject_algo(y, geom, "tile")
    out = cone_backproject_algo(y.cuda(), geom, algorithm).cpu()
    # float32 on CUDA uses float geometry: ~1e-6 relative differences in the weights
    tol = dict(rtol=1e-10, atol=1e-12)
    if dtype == torch.float32:
        tol = dict(rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(out, ref, **tol)
    scatter = cone_backproject_algo(y.cuda(), geom, "scatter").cpu()
    torch.testing.assert_close(scatter, ref, **tol)


@requires_cuda
@pytest.mark.parametrize("algorithm", ["gather", "column"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_cuda_algorithm_adjointness_many_views(dtype, tol, algorithm):
    # 150 views: three chunks of the gather kernel (at most 64 views per launch); 2 x 3 x 4 blocks
    # of the column kernel.
    g = ConeBeamGeometry.circular(150, 300.0, 200.0, (40, 48), 1.4, (32, 36, 30), voxel_size=(1.0, 1.1, 1.2),
                                  det_offset=(2.0, -3.0), vol_offset=(1.0, 0.0, -2.0))
    x = _rand((1, 1, *g.vol_shape), dtype, 13, "cuda")
    y = _rand((1, 1, *g.sino_shape), dtype, 14, "cuda")
    assert adjoint_gap(cone_project(x, g), y, x, cone_backproject_algo(y, g, algorithm)) < tol
    # deterministic: no atomics
    assert torch.equal(cone_backproject_algo(y, g, algorithm), cone_backproject_algo(y, g, algorithm))


@requires_cuda
def test_cuda_column_float32_equals_the_cuda_forward_transpose_closely():
    # On CUDA every kernel starts from the same float frames and lines: column and scatter are the
    # same transpose of the CUDA forward, differing by summation order only.
    g = _tiled_geometry()
    y = _rand((2, 1, *g.sino_shape), torch.float32, 18, "cuda")
    col = cone_backproject_algo(y, g, "column").double()
    sca = cone_backproject_algo(y, g, "scatter").double()
    assert float((col - sca).norm() / sca.norm()) < 1e-6


@requires_cuda
def test_tile_is_cpu_only():
    g = circular_geometry()
    with pytest.raises(ValueError, match="CPU-only"):
        cone_backproject_algo(torch.zeros(1, 1, *g.sino_shape, device="cuda"), g, "tile")
