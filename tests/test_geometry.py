"""ConeBeamGeometry: conventions, restriction, serialisation and input validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrolled3d.physics import ConeBeamGeometry
from conftest import circular_geometry


def test_circular_vectors_follow_astra_geom_2vec():
    # astra.geom_2vec of a circular cone geometry at angle a (docs/geometry.md): src = (sin a, -cos a, 0) sod, ...
    sod, odd, du, dv = 500.0, 300.0, 0.7, 0.6
    angles = np.array([0.0, 0.3, 2.0, 4.5])
    g = ConeBeamGeometry.circular(4, sod, odd, (5, 6), (dv, du), (4, 4, 4), angles=angles)
    for a, row in zip(angles, g.vectors):
        np.testing.assert_allclose(row[0:3], [math.sin(a) * sod, -math.cos(a) * sod, 0], atol=1e-12)
        np.testing.assert_allclose(row[3:6], [-math.sin(a) * odd, math.cos(a) * odd, 0], atol=1e-12)
        np.testing.assert_allclose(row[6:9], [math.cos(a) * du, math.sin(a) * du, 0], atol=1e-12)
        np.testing.assert_allclose(row[9:12], [0, 0, dv], atol=1e-12)


def test_detector_offset_moves_centre_along_u_and_v():
    g0 = ConeBeamGeometry.circular(3, 100.0, 50.0, (4, 4), 1.0, (4, 4, 4))
    g1 = ConeBeamGeometry.circular(3, 100.0, 50.0, (4, 4), 1.0, (4, 4, 4), det_offset=(2.0, -3.0))
    shift = g1.vectors[:, 3:6] - g0.vectors[:, 3:6]
    u_hat = g0.vectors[:, 6:9] / np.linalg.norm(g0.vectors[:, 6:9], axis=1, keepdims=True)
    np.testing.assert_allclose(shift, -3.0 * u_hat + np.array([0, 0, 2.0]), atol=1e-12)


def test_default_angles_full_and_short_scan():
    full = ConeBeamGeometry.circular(8, 100.0, 50.0, (4, 10), 1.0, (4, 4, 4))
    np.testing.assert_allclose(full.trajectory.angles, np.arange(8) * 2 * math.pi / 8)
    short = ConeBeamGeometry.circular(8, 100.0, 50.0, (4, 10), 1.0, (4, 4, 4), scan="short")
    span = math.pi + 2 * math.atan(5.0 / 150.0)
    np.testing.assert_allclose(short.trajectory.angles, np.arange(8) * span / 8)


def test_pixel_positions_convention():
    g = circular_geometry()
    pix = g.pixel_positions()
    rows, cols = g.det_shape
    det, u, v = g.vectors[2, 3:6], g.vectors[2, 6:9], g.vectors[2, 9:12]
    np.testing.assert_allclose(pix[2, 0, 0], det - 0.5 * (cols - 1) * u - 0.5 * (rows - 1) * v)
    np.testing.assert_allclose(pix[2, 3, 5] - pix[2, 3, 4], u)
    np.testing.assert_allclose(pix[2, 4, 5] - pix[2, 3, 5], v)


def test_restrict_keeps_voxel_positions():
    g = circular_geometry(vol_shape=(7, 10, 9))
    sub = g.restrict((2, 3, 1), (3, 4, 5))

    def centre(geom, idx):  # world (z, y, x) of voxel idx
        return [
            o + (i - 0.5 * (n - 1)) * s
            for o, i, n, s in zip(geom.vol_offset, idx, geom.vol_shape, geom.voxel_size)
        ]

    np.testing.assert_allclose(centre(sub, (0, 0, 0)), centre(g, (2, 3, 1)), atol=1e-12)
    np.testing.assert_allclose(centre(sub, (2, 3, 4)), centre(g, (4, 6, 5)), atol=1e-12)
    assert sub.vol_shape == (3, 4, 5) and np.array_equal(sub.vectors, g.vectors)
    with pytest.raises(ValueError, match="outside the volume"):
        g.restrict((5, 0, 0), (3, 4, 5))


def test_restrict_is_a_cheap_view_of_the_same_scan():
    """restrict builds the patch geometry without copying or re-validating the views: it equals
    a geometry built from scratch, shares the read-only views and the scan cache (views on each
    device, FDK's tables), and restricting twice composes the offsets."""
    g = circular_geometry(vol_shape=(7, 10, 9))
    sub = g.restrict((2, 3, 1), (4, 6, 7))
    fresh = ConeBeamGeometry(g.vectors, g.det_shape, (4, 6, 7), g.voxel_size, sub.vol_offset, trajectory=g.trajectory)
    assert sub == fresh and sub.fingerprint() == fresh.fingerprint() and repr(sub) == repr(fresh)
    assert sub.vectors is g.vectors and not sub.vectors.flags.writeable
    assert sub.scan_cache is g.scan_cache and sub.views_tensor() is g.views_tensor()
    np.testing.assert_allclose(sub.restrict((1, 2, 3), (2, 2, 2)).vol_offset, g.restrict((3, 5, 4), (2, 2, 2)).vol_offset,
                               atol=1e-12)
    assert fresh.scan_cache is not g.scan_cache  # a geometry built anew has its own


def test_dict_round_trip_and_fingerprint():
    g = circular_geometry(scan="short")
    h = ConeBeamGeometry.from_dict(g.to_dict())
    assert h == g and h.fingerprint() == g.fingerprint()
    assert h.trajectory == g.trajectory
    other = circular_geometry(vol_shape=(7, 10, 10))
    assert other.fingerprint() != g.fingerprint()


def test_views_tensor_is_float64_and_cached():
    g = circular_geometry()
    t = g.views_tensor("cpu")
    assert t.dtype == torch.float64 and t.shape == (g.n_views, 12)
    assert g.views_tensor("cpu") is t


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(source_origin=0.0), ValueError, "source_origin"),
        (dict(source_origin=-5.0), ValueError, "source_origin"),
        (dict(origin_detector=0.0), ValueError, "origin_detector"),
        (dict(source_origin=float("nan")), ValueError, "source_origin"),
        (dict(det_shape=(0, 4)), ValueError, "det_shape"),
        (dict(det_shape=(4.5, 4)), TypeError, "det_shape"),
        (dict(det_spacing=(1.0, -1.0)), ValueError, "det_spacing"),
        (dict(vol_shape=(4, 4)), ValueError, "vol_shape"),
        (dict(voxel_size=(1.0, 0.0, 1.0)), ValueError, "voxel_size"),
        (dict(voxel_size=float("inf")), ValueError, "voxel_size"),
        (dict(vol_offset=(0.0, float("nan"), 0.0)), ValueError, "vol_offset"),
        (dict(n_views=0), ValueError, "n_views"),
        (dict(angles=[0.0, 1.0]), ValueError, "angles"),
        (dict(angles=[0.0, float("nan"), 1.0]), ValueError, "angles"),
        (dict(scan="half"), ValueError, "scan"),
        (dict(source_origin=5.0), ValueError, "bounding sphere"),
    ],
)
def test_circular_rejects_bad_input(kwargs, exc, match):
    args = dict(n_views=3, source_origin=100.0, origin_detector=50.0, det_shape=(4, 4), det_spacing=1.0,
                vol_shape=(8, 8, 8))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ConeBeamGeometry.circular(**args)


def test_vectors_reject_bad_input():
    g = circular_geometry()
    vec = np.array(g.vectors)
    with pytest.raises(ValueError, match=r"\(n_views >= 1, 12\)"):
        ConeBeamGeometry.from_vectors(vec[:, :11], g.det_shape, g.vol_shape)
    bad = vec.copy()
    bad[0, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        ConeBeamGeometry.from_vectors(bad, g.det_shape, g.vol_shape)
    bad = vec.copy()
    bad[1, 6:9] = 0
    with pytest.raises(ValueError, match="non-zero"):
        ConeBeamGeometry.from_vectors(bad, g.det_shape, g.vol_shape)
    bad = vec.copy()
    bad[1, 9:12] = bad[1, 6:9]
    with pytest.raises(ValueError, match="parallel"):
        ConeBeamGeometry.from_vectors(bad, g.det_shape, g.vol_shape)
    bad = vec.copy()
    bad[:, 3:6] = bad[:, 0:3] * 1.5  # detector behind the source
    with pytest.raises(ValueError, match="not between the source and the detector"):
        ConeBeamGeometry.from_vectors(bad, g.det_shape, g.vol_shape)
    bad[:, 3:6] = bad[:, 0:3] * 0.2  # detector plane between the source and the volume centre
    with pytest.raises(ValueError, match="not between the source and the detector"):
        ConeBeamGeometry.from_vectors(bad, g.det_shape, g.vol_shape)
    with pytest.raises(TypeError, match="vectors"):
        ConeBeamGeometry.from_vectors("abc", g.det_shape, g.vol_shape)
