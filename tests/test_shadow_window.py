"""The patch operator on its detector shadow (``ConeBeamCT.restrict`` -> ``ConeBeamPatch``).

Independent truth: the same projector on the sub-volume with the whole detector (the patch
embedded in nothing but its own geometry), which is what ``A S^T`` was before windows. The
windowed operator must equal it inside the windows (float64, 1e-12 relative: only the pixel
positions' rounding differs, the detector centre being expressed from another pixel), the
full-detector projection must be exactly zero outside them (else the window would lose data),
and the pair must stay an exact transpose.
"""
from __future__ import annotations

import math

import pytest
import torch

from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.ops import cone_project
from unrolled3d.partition import PatchBatch
from unrolled3d.physics import ConeBeamCT, ConeBeamPatch

F64 = torch.float64


def _geometries():
    yield "circular", ConeBeamGeometry.circular(12, 150.0, 100.0, (40, 48), 1.2, (24, 24, 24))
    yield "offset-anisotropic-short", ConeBeamGeometry.circular(
        9, 80.0, 60.0, (30, 41), (0.9, 1.3), (13, 17, 19), voxel_size=(1.0, 0.8, 1.1), vol_offset=(2.0, -3.0, 1.5),
        det_offset=(3.0, -2.0), scan="short")
    yield "small-detector", ConeBeamGeometry.circular(7, 60.0, 40.0, (9, 11), 1.0, (16, 16, 16))  # truncated shadows
    base = ConeBeamGeometry.circular(8, 90.0, 70.0, (28, 33), 1.1, (15, 14, 16))
    vec = base.vectors.copy()
    rng = torch.Generator().manual_seed(0)
    vec[:, 0:3] += 3 * torch.rand((8, 3), generator=rng, dtype=F64).numpy()  # wobbling source
    vec[:, 6:9] *= 1.05  # a slightly larger, tilted detector
    vec[:, 9:12] += 0.1 * vec[:, 6:9]
    yield "vector", ConeBeamGeometry.from_vectors(vec, (28, 33), (15, 14, 16), 1.0)


GEOMETRIES = dict(_geometries())
PATCHES = [((0, 0, 0), (5, 6, 7)), ((3, 4, 2), (6, 6, 6)), ((8, 7, 9), (5, 7, 6))]


def _full_detector(g: ConeBeamGeometry, offset, shape) -> torch.Tensor:
    return cone_project(torch.rand((1, 1, *shape), dtype=F64, generator=torch.Generator().manual_seed(1)),
                        g.restrict(offset, shape))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("offset,shape", PATCHES)
def test_window_equals_the_full_detector_patch_operator(name, offset, shape):
    g = GEOMETRIES[name]
    shape = tuple(min(s, n - o) for s, n, o in zip(shape, g.vol_shape, offset))
    patch = ConeBeamCT(g).restrict(offset, shape)
    xp = torch.rand((2, 1, *shape), dtype=F64, generator=torch.Generator().manual_seed(1))
    full = ConeBeamCT(g.restrict(offset, shape)).A(xp)
    windowed = patch.A(xp)
    assert windowed.shape[2:] == (g.n_views, *patch.window.shape)
    scale = float(full.abs().max())
    assert scale > 0
    torch.testing.assert_close(patch.crop_measurements(full), windowed, rtol=0, atol=1e-12 * scale)
    # nothing of the patch falls outside its windows
    outside = full - patch.embed_measurements(patch.crop_measurements(full))
    assert float(outside.abs().max()) == 0.0
    # the data step is the full-detector one: A_p^T crop(y) = (A S^T)^T y
    y = torch.rand_like(full)
    torch.testing.assert_close(patch.A_adjoint(patch.crop_measurements(y)), ConeBeamCT(g.restrict(offset, shape)).A_adjoint(y),
                               rtol=1e-12, atol=1e-12 * float(y.abs().max()) * math.prod(shape))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_windowed_pair_is_an_exact_transpose(name):
    g = GEOMETRIES[name]
    patch = ConeBeamCT(g).restrict((1, 2, 3), (6, 5, 7))
    gen = torch.Generator().manual_seed(2)
    x = torch.rand((1, 1, 6, 5, 7), dtype=F64, generator=gen)
    y = torch.rand((1, 1, *patch.measurement_shape), dtype=F64, generator=gen)
    lhs, rhs = float((patch.A(x) * y).sum()), float((x * patch.A_adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # crop and embed are each other's transpose too
    full = torch.rand((1, 1, *g.sino_shape), dtype=F64, generator=gen)
    assert abs(float((patch.crop_measurements(full) * y).sum()) - float((full * patch.embed_measurements(y)).sum())) \
        <= 1e-12 * float(full.numel())


def test_window_is_small_for_a_small_patch_and_whole_for_the_volume():
    g = GEOMETRIES["circular"]
    assert ConeBeamCT(g).restrict((8, 8, 8), (6, 6, 6)).window.fraction < 0.15  # 13 x 16 of 40 x 48
    whole = ConeBeamCT(g).restrict((0, 0, 0), g.vol_shape)
    assert whole.window.shape == g.det_shape  # the whole volume's shadow fills this detector


def test_window_cost_does_not_grow_with_the_volume():
    """The same 8^3 patch of a 32^3 and a 256^3 volume scanned alike (detector sized to the
    volume): the window is the patch's shadow, not the detector."""
    shapes = []
    for n in (32, 256):
        g = ConeBeamGeometry.circular(10, 4.0 * n, 2.0 * n, (int(1.6 * n), int(1.6 * n)), 1.0, (n, n, n))
        centre = n // 2 - 4
        shapes.append(ConeBeamCT(g).restrict((centre, centre, centre), (8, 8, 8)).window.shape)
    (h1, w1), (h2, w2) = shapes
    assert h2 <= h1 + 2 and w2 <= w1 + 2


def test_astra_layout_crops_the_same_pixels():
    g = GEOMETRIES["circular"]
    views = ConeBeamCT(g).restrict((2, 3, 4), (6, 6, 6))
    astra = ConeBeamCT(g, layout="astra").restrict((2, 3, 4), (6, 6, 6))
    y = torch.rand((1, 1, *g.sino_shape), dtype=F64)
    torch.testing.assert_close(astra.crop_measurements(y.transpose(2, 3)), views.crop_measurements(y).transpose(2, 3))


def test_patches_with_different_windows_solve_together():
    """A group of patches stacks their measurements zero-padded to the largest window."""
    physics = ConeBeamCT(GEOMETRIES["offset-anisotropic-short"])
    ops = [physics.restrict(o, (5, 5, 5)) for o in ((0, 0, 0), (4, 6, 7), (8, 12, 14))]
    assert len({op.window.shape for op in ops}) > 1
    batch = PatchBatch(ops)
    x = torch.rand((3, 1, 5, 5, 5), dtype=F64)
    y_full = torch.rand((1, 1, *physics.geometry.sino_shape), dtype=F64)
    data = batch.crop_measurements(y_full)
    step = batch.A_adjoint(batch.A(x) - data)
    expected = torch.cat([op.A_adjoint(op.A(x[i:i + 1]) - op.crop_measurements(y_full)) for i, op in enumerate(ops)])
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=1e-12)


def test_patch_fdk_reads_the_window_only():
    g = GEOMETRIES["circular"]
    physics = ConeBeamCT(g)
    x = torch.rand((1, 1, *g.vol_shape), dtype=F64)
    y = physics.A(x)
    patch = physics.restrict((6, 6, 6), (8, 8, 8))
    inner = torch.zeros_like(x)
    inner[..., 6:14, 6:14, 6:14] = x[..., 6:14, 6:14, 6:14]
    # the patch's own FDK of its windowed data equals FDK of the full data of the patch alone
    torch.testing.assert_close(patch.fbp(patch.A(x[..., 6:14, 6:14, 6:14])),
                               physics.A_dagger_patch(physics.A(inner), (6, 6, 6), (8, 8, 8)), rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match="restrict the full operator"):
        patch.restrict((0, 0, 0), (2, 2, 2))
    assert isinstance(patch, ConeBeamPatch)
