"""Tests of unrolled3d.data.phantoms: analytic ellipsoid phantoms, voxelisation, line integrals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrolled3d.data.phantoms import (
    Ellipsoid,
    ball,
    line_integrals,
    phantom_volume_integral,
    random_ellipsoids,
    shepp_logan_3d,
    voxelize,
)

F64 = torch.float64


# ------------------------------------------------------------------------------------------
# Independent reference helpers (numpy, written from the documented conventions)
# ------------------------------------------------------------------------------------------
def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _zyz_matrix(phi: float, theta: float, psi: float) -> np.ndarray:
    return _rz(phi) @ _ry(theta) @ _rz(psi)


def _zyz_angles(r: np.ndarray) -> tuple[float, float, float]:
    """ZYZ Euler angles of a rotation matrix (generic case, sin(theta) != 0)."""
    theta = math.acos(max(-1.0, min(1.0, r[2, 2])))
    phi = math.atan2(r[1, 2], r[0, 2])
    psi = math.atan2(r[2, 1], -r[2, 0])
    return phi, theta, psi


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, rr = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(rr))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _numeric_chord(e: Ellipsoid, p0: np.ndarray, u: np.ndarray, half_len: float, n: int) -> float:
    """Length of {p0 + t u : |t| <= half_len} inside e, by midpoint sampling (u unit)."""
    r = _zyz_matrix(*e.angles)
    t = (np.arange(n) + 0.5) / n * 2 * half_len - half_len
    pts = p0[None, :] + t[:, None] * u[None, :]
    body = (pts - np.array(e.centre)) @ r / np.array(e.semi_axes)
    return float((np.sum(body**2, axis=1) <= 1.0).sum()) * (2 * half_len / n)


def _centroid(vol: torch.Tensor) -> np.ndarray:
    """Density-weighted mean index (k, j, i) of a [z, y, x] volume."""
    v = vol.double()
    idx = [torch.arange(n, dtype=F64) for n in v.shape]
    m = v.sum()
    return np.array(
        [
            float((v.sum(dim=(1, 2)) * idx[0]).sum() / m),
            float((v.sum(dim=(0, 2)) * idx[1]).sum() / m),
            float((v.sum(dim=(0, 1)) * idx[2]).sum() / m),
        ]
    )


# ------------------------------------------------------------------------------------------
# line_integrals
# ------------------------------------------------------------------------------------------
def test_ball_chords_along_known_lines():
    r = 3.0
    c = np.array([1.0, -2.0, 0.5])
    ph = ball(r, value=1.0, centre=tuple(c))
    # Lines p0 + t u at distance d from the centre: p0 = c + d n with n orthogonal to u.
    cases = [
        (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), 0.0),
        (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), 1.2),
        (np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), 2.9),
        (np.array([1.0, 1.0, 1.0]) / math.sqrt(3), np.array([1.0, -1.0, 0.0]) / math.sqrt(2), 2.5),
        (np.array([1.0, 2.0, -2.0]) / 3.0, np.array([2.0, 0.0, 1.0]) / math.sqrt(5), 3.5),  # misses
        (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0]), 40.0),  # misses by far
    ]
    src, dst, expected = [], [], []
    for u, nrm, d in cases:
        assert abs(u @ nrm) < 1e-12
        p0 = c + d * nrm
        src.append(p0 - 7.0 * u)  # arbitrary points on the line, on both sides
        dst.append(p0 + 11.0 * u)
        expected.append(2 * math.sqrt(r * r - d * d) if d < r else 0.0)
    got = line_integrals(ph, torch.tensor(np.array(src)), torch.tensor(np.array(dst)))
    assert got.dtype == F64 and got.shape == (len(cases),)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert got[-2].item() == 0.0 and got[-1].item() == 0.0  # clipped discriminant, not NaN


def test_line_integral_is_a_property_of_the_line_not_of_the_points():
    ph = [Ellipsoid(0.7, (0.3, -0.2, 0.1), (2.0, 1.0, 1.5), (0.4, 1.1, -0.6))]
    p = torch.tensor([0.2, 0.1, -0.3], dtype=F64)
    u = torch.tensor([0.48, 0.6, 0.64], dtype=F64)  # unit
    ref = line_integrals(ph, p - u, p + u)
    assert ref.item() > 0
    for a, b in [(-100.0, 3.0), (5.0, -2.0), (1e-3, 2e-3), (-1e3, 1e3)]:  # swapped / far / close
        torch.testing.assert_close(line_integrals(ph, p + a * u, p + b * u), ref, rtol=1e-9, atol=0)


def test_axis_aligned_ellipsoid_central_chords_and_value_scaling():
    a, b, c = 3.0, 2.0, 1.0
    centre = (0.5, -1.0, 2.0)
    ph = [Ellipsoid(0.5, centre, (a, b, c))]
    cen = torch.tensor(centre, dtype=F64)
    eye = torch.eye(3, dtype=F64)
    got = line_integrals(ph, cen - 10 * eye, cen + 10 * eye)  # lines along x, y, z through centre
    torch.testing.assert_close(got, 0.5 * torch.tensor([2 * a, 2 * b, 2 * c], dtype=F64), rtol=1e-14, atol=0)
    # Overlapping ellipsoids add.
    two = ph + [Ellipsoid(0.25, centre, (a, b, c))]
    torch.testing.assert_close(line_integrals(two, cen - 10 * eye, cen + 10 * eye), 1.5 * got)


def test_line_integrals_broadcast_source_against_detector_grid():
    ph = shepp_logan_3d(radius=50.0)
    src = torch.tensor([0.0, -200.0, 0.0], dtype=F64)
    u, v = torch.meshgrid(torch.linspace(-60, 60, 5, dtype=F64), torch.linspace(-60, 60, 4, dtype=F64), indexing="xy")
    dst = torch.stack([u, torch.full_like(u, 150.0), v], dim=-1)  # (4, 5, 3)
    got = line_integrals(ph, src, dst)
    assert got.shape == (4, 5)
    ref = line_integrals(ph, src.expand_as(dst).reshape(-1, 3), dst.reshape(-1, 3)).reshape(4, 5)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # float32 inputs are promoted; the result is float64.
    assert line_integrals(ph, src.float(), dst.float()).dtype == F64


def test_rotation_matrix_is_zyz_body_to_world():
    angles = (0.7, -1.2, 2.1)
    e = Ellipsoid(1.0, (0.0, 0.0, 0.0), (1.0, 2.0, 3.0), angles)
    r = e.rotation_matrix()
    assert r.dtype == F64 and r.shape == (3, 3)
    np.testing.assert_allclose(r.numpy(), _zyz_matrix(*angles), rtol=0, atol=1e-15)
    # Simple cases: phi = 90 deg turns the body a-axis to +y; theta = 90 deg turns it to -z.
    a_long = (3.0, 1.0, 1.0)
    c0 = torch.zeros(3, dtype=F64)
    eye = torch.eye(3, dtype=F64)
    e_phi = [Ellipsoid(1.0, (0.0, 0.0, 0.0), a_long, (math.pi / 2, 0.0, 0.0))]
    e_theta = [Ellipsoid(1.0, (0.0, 0.0, 0.0), a_long, (0.0, math.pi / 2, 0.0))]
    torch.testing.assert_close(line_integrals(e_phi, c0 - 9 * eye, c0 + 9 * eye), torch.tensor([2.0, 6.0, 2.0], dtype=F64))
    torch.testing.assert_close(line_integrals(e_theta, c0 - 9 * eye, c0 + 9 * eye), torch.tensor([2.0, 2.0, 6.0], dtype=F64))


def test_rotated_ellipsoid_chords_along_body_axes_and_numerically():
    rng = np.random.default_rng(3)
    angles = (0.9, 0.6, -1.4)
    semi = (4.0, 2.5, 1.5)
    centre = np.array([1.0, 2.0, -0.5])
    e = Ellipsoid(1.0, tuple(centre), semi, angles)
    r = _zyz_matrix(*angles)
    cen = torch.tensor(centre)
    axes = torch.tensor(r.T)  # rows: body axes in world coordinates
    got = line_integrals([e], cen - 20 * axes, cen + 20 * axes)
    torch.testing.assert_close(got, 2 * torch.tensor(semi, dtype=F64), rtol=1e-12, atol=0)
    # Random lines against a brute-force membership count along the line.
    for _ in range(4):
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        p0 = centre + rng.uniform(-1.5, 1.5, 3)
        ref = _numeric_chord(e, p0, u, half_len=10.0, n=200_000)
        val = line_integrals([e], torch.tensor(p0), torch.tensor(p0 + u)).item()
        assert val > 0
        assert abs(val - ref) <= 2 * (20.0 / 200_000)  # midpoint count error <= one step per end


def test_line_integrals_invariant_under_joint_rotation():
    rng = np.random.default_rng(7)
    ell = [
        Ellipsoid(1.0, (0.5, -0.3, 0.2), (2.0, 1.2, 0.7), (0.3, 0.8, -0.5)),
        Ellipsoid(-0.4, (-0.6, 0.4, 0.0), (0.8, 0.5, 1.1), (1.9, 2.2, 0.4)),
    ]
    src = rng.uniform(-1, 1, (64, 3))  # most lines pass near the centre
    dst = rng.uniform(-3, 3, (64, 3))
    before = line_integrals(ell, torch.tensor(src), torch.tensor(dst))
    assert (before != 0).sum() > 20  # the lines do hit the phantom
    for _ in range(3):
        q = _random_rotation(rng)
        rotated = [
            Ellipsoid(e.value, tuple(q @ np.array(e.centre)), e.semi_axes, _zyz_angles(q @ _zyz_matrix(*e.angles)))
            for e in ell
        ]
        for e_new, e_old in zip(rotated, ell):  # the test's angle extraction round-trips
            np.testing.assert_allclose(e_new.rotation_matrix().numpy(), q @ e_old.rotation_matrix().numpy(), atol=1e-12)
        after = line_integrals(rotated, torch.tensor(src @ q.T), torch.tensor(dst @ q.T))
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# voxelize
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shepp64() -> tuple[list[Ellipsoid], torch.Tensor]:
    ph = shepp_logan_3d(radius=30.0)
    return ph, voxelize(ph, (64, 64, 64), voxel_size=1.0)


def test_voxelize_mass_ball():
    ph = ball(20.0, value=0.02, centre=(0.3, -0.6, 1.1))
    vol = voxelize(ph, (64, 64, 64))
    assert vol.shape == (64, 64, 64) and vol.dtype == torch.float32
    mass = vol.double().sum().item() * 1.0
    ref = phantom_volume_integral(ph)
    assert ref == pytest.approx(0.02 * 4 / 3 * math.pi * 20.0**3, rel=1e-14)
    assert mass == pytest.approx(ref, rel=0.01)
    assert vol.max().item() == pytest.approx(0.02, rel=1e-6) and vol.min().item() == 0.0


def test_voxelize_mass_shepp_logan(shepp64):
    ph, vol = shepp64
    assert vol.shape == (64, 64, 64)
    assert vol.double().sum().item() == pytest.approx(phantom_volume_integral(ph), rel=0.01)


def test_voxelize_mass_anisotropic_voxels_and_float64():
    ph = ball(12.0, value=1.5)
    vs = (1.5, 0.75, 1.0)  # (sz, sy, sx)
    vol = voxelize(ph, (20, 40, 30), voxel_size=vs, dtype=F64, supersample=3)
    assert vol.dtype == F64 and vol.shape == (20, 40, 30)
    assert vol.sum().item() * math.prod(vs) == pytest.approx(phantom_volume_integral(ph), rel=0.01)


def test_voxelize_array_order_offset_and_anisotropy():
    # A small ball on the +x / -y / +z side of the volume centre: larger i (W), smaller j (H),
    # larger k (D). Positions chosen so the expected index centroids are exact (symmetric sampling).
    x, y, z = 10.0, -7.0, 5.0
    vol = voxelize(ball(3.0, centre=(x, y, z)), (32, 32, 32))
    np.testing.assert_allclose(_centroid(vol), [15.5 + z, 15.5 + y, 15.5 + x], atol=1e-4)

    shape = (20, 32, 48)  # (D, H, W), all different
    vs = (2.0, 1.0, 0.5)  # (sz, sy, sx)
    off = (4.0, -3.0, 2.0)  # (oz, oy, ox)
    vol = voxelize(ball(4.0, centre=(x, y, z)), shape, voxel_size=vs, vol_offset=off)
    expected = [(c - o) / s + (n - 1) / 2 for c, o, s, n in zip((z, y, x), off, vs, shape)]
    np.testing.assert_allclose(_centroid(vol), expected, atol=1e-4)
    assert vol.double().sum().item() * math.prod(vs) == pytest.approx(4 / 3 * math.pi * 64.0, rel=0.01)
    # Extent of the 8 mm diameter: along x the centre index 39.5 lies on a voxel face, 8 mm = 16
    # voxels; along y (index 11.5) 8 voxels; along z the centre is a voxel centre (index 10) and
    # the ball reaches 2 voxels either side, touching the sub-points of voxels 8..12 (5 voxels).
    touched = [torch.nonzero(vol.sum(dim=d) > 0).flatten().tolist() for d in [(1, 2), (0, 2), (0, 1)]]
    assert touched == [list(range(8, 13)), list(range(8, 16)), list(range(32, 48))]


@pytest.mark.parametrize("supersample", [1, 2, 3])
def test_voxelize_rotated_ellipsoids_match_pointwise_reference(supersample):
    # Reference: the documented voxel-centre formula, sub-points at the centres of a regular
    # s x s x s sub-grid, and membership |S^-1 R^T (p - c)| <= 1 with R built here from ZYZ angles.
    ph = [
        Ellipsoid(1.0, (1.3, -0.8, 2.1), (7.0, 3.0, 2.0), (0.5, 1.0, -0.7)),
        Ellipsoid(-0.25, (-2.0, 1.5, -1.0), (2.5, 5.0, 1.5), (2.0, 0.4, 1.2)),
    ]
    shape, vs, off = (10, 14, 18), (1.5, 1.0, 0.75), (0.5, -0.25, 1.0)  # (D,H,W), (sz,sy,sx), (oz,oy,ox)
    s = supersample
    sub = (np.arange(s) + 0.5) / s - 0.5
    axes = [
        (off[a] + ((np.arange(shape[a]) - (shape[a] - 1) / 2)[:, None] + sub[None, :]) * vs[a]).ravel()
        for a in range(3)
    ]  # z, y, x sub-point coordinates, voxel-major
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([xx, yy, zz], axis=-1)  # world (x, y, z)
    ref = np.zeros(zz.shape)
    closest = np.inf
    for e in ph:
        q = np.sum((((pts - np.array(e.centre)) @ _zyz_matrix(*e.angles)) / np.array(e.semi_axes)) ** 2, axis=-1)
        ref += e.value * (q <= 1.0)
        closest = min(closest, np.abs(q - 1.0).min())
    assert closest > 1e-9  # no sub-point on a surface: float rounding cannot flip membership
    d, h, w = shape
    ref = ref.reshape(d, s, h, s, w, s).mean(axis=(1, 3, 5))
    vol = voxelize(ph, shape, voxel_size=vs, vol_offset=off, supersample=s, dtype=F64)
    assert np.count_nonzero(ref) > 200
    np.testing.assert_allclose(vol.numpy(), ref, rtol=0, atol=1e-12)


def test_voxelize_z_slabs_give_the_same_volume(monkeypatch):
    import unrolled3d.data.phantoms as phantoms

    ph = shepp_logan_3d(radius=14.0) + random_ellipsoids(5, radius=14.0, seed=2)
    kw = dict(vol_shape=(30, 31, 32), voxel_size=(1.0, 1.0, 1.0), vol_offset=(0.3, -0.2, 0.1), supersample=2)
    whole = voxelize(ph, **kw)
    for budget in (1, 3000, 20_000):  # one z-plane per slab, and slabs of a few planes
        monkeypatch.setattr(phantoms, "_MAX_POINTS_PER_CHUNK", budget)
        assert torch.equal(voxelize(ph, **kw), whole)


def test_voxelize_supersample_one_samples_voxel_centres():
    # Voxel centres are at integer mm; a ball of radius 2.5 at the origin contains the centres
    # with x^2 + y^2 + z^2 <= 6.25, i.e. exactly 81 lattice points.
    vol = voxelize(ball(2.5, value=2.0), (9, 9, 9), supersample=1)
    assert set(torch.unique(vol).tolist()) == {0.0, 2.0}
    assert int((vol == 2.0).sum()) == sum(
        1 for i in range(-4, 5) for j in range(-4, 5) for k in range(-4, 5) if i * i + j * j + k * k <= 6.25
    )


def test_voxelize_partial_volume_half_space():
    # A huge ball whose surface is the plane x = 0 (to within 1e-9 mm over the volume) cuts the
    # voxels of column i = 2 (x in [-0.5, 0.5]) in half: with an even supersample they are 1/2.
    big = 1e9
    vol = voxelize([Ellipsoid(1.0, (-big, 0.0, 0.0), (big, big, big))], (3, 3, 5), supersample=4, dtype=F64)
    np.testing.assert_allclose(vol[1, 1].numpy(), [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-12)


def test_voxelize_empty_phantom_and_outside_volume():
    assert torch.equal(voxelize([], (2, 3, 4)), torch.zeros(2, 3, 4))
    assert torch.equal(voxelize(ball(1.0, centre=(100.0, 0.0, 0.0)), (8, 8, 8)), torch.zeros(8, 8, 8))


def test_voxelize_consistent_with_line_integrals():
    r = 20.0
    ph = ball(r, value=1.0, centre=(0.3, 0.0, 0.0))
    vol = voxelize(ph, (5, 5, 48), voxel_size=1.0)  # 5 x 5 rays along x, centre ray at y = z = 0
    sx = 1.0
    for k, j in [(2, 2), (2, 4), (0, 1)]:
        y, z = j - 2.0, k - 2.0
        ray = vol[k, j].double().sum().item() * sx
        exact = line_integrals(ph, torch.tensor([-50.0, y, z], dtype=F64), torch.tensor([50.0, y, z], dtype=F64)).item()
        assert exact == pytest.approx(2 * math.sqrt(r * r - y * y - z * z), rel=1e-12)
        assert ray == pytest.approx(exact, rel=0.02)


# ------------------------------------------------------------------------------------------
# Phantoms
# ------------------------------------------------------------------------------------------
def test_random_ellipsoids_reproducible_and_inside_ball():
    a = random_ellipsoids(12, radius=40.0, seed=123)
    b = random_ellipsoids(12, radius=40.0, seed=123)
    c = random_ellipsoids(12, radius=40.0, seed=124)
    assert len(a) == 12 and all(isinstance(e, Ellipsoid) for e in a)
    assert a == b
    assert a != c and all(ea.centre != ec.centre for ea, ec in zip(a, c))
    g = torch.Generator().manual_seed(123)
    assert random_ellipsoids(12, radius=40.0, generator=g) == a
    assert random_ellipsoids(12, radius=40.0, generator=g) != a  # the generator state advanced
    for e in random_ellipsoids(200, radius=40.0, seed=5, value_range=(-0.5, 2.0), max_semi_axis=0.3):
        assert math.dist(e.centre, (0, 0, 0)) + max(e.semi_axes) <= 40.0 * (1 + 1e-12)
        assert max(e.semi_axes) <= 0.3 * 40.0 * (1 + 1e-12) and min(e.semi_axes) >= 0.25 * 0.3 * 40.0 * (1 - 1e-12)
        assert -0.5 <= e.value <= 2.0
    assert random_ellipsoids(0, seed=1) == []


def test_shepp_logan_values_and_extent(shepp64):
    ph, vol = shepp64
    assert len(ph) == 10
    assert vol.max().item() == pytest.approx(1.0, abs=1e-6)  # the skull
    assert vol.min().item() >= -1e-6  # the modified phantom is nowhere negative
    assert vol[31:33, 31:33, 31:33].double().mean().item() == pytest.approx(0.2, abs=1e-6)  # brain
    orig = voxelize(shepp_logan_3d(radius=30.0, modified=False), (64, 64, 64))
    assert orig.max().item() == pytest.approx(2.0, abs=1e-6)
    assert orig[31:33, 31:33, 31:33].double().mean().item() == pytest.approx(1.02, abs=1e-6)

    # Every ellipsoid lies inside the ball of the given radius; the skull touches it.
    radius = 7.5
    ph = shepp_logan_3d(radius=radius)
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((20_000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    reach = []
    for e in ph:
        surf = np.array(e.centre) + (dirs * np.array(e.semi_axes)) @ e.rotation_matrix().numpy().T
        reach.append(np.linalg.norm(surf, axis=1).max())
    assert max(reach) <= radius * (1 + 1e-12)
    assert max(e.semi_axes[1] for e in ph) == pytest.approx(radius, rel=1e-12)
    # Geometry scales linearly with the radius.
    unit = shepp_logan_3d(radius=1.0)
    for e, u in zip(ph, unit):
        np.testing.assert_allclose(e.centre, np.array(u.centre) * radius, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(e.semi_axes, np.array(u.semi_axes) * radius, rtol=1e-12)
        assert e.angles == u.angles and e.value == u.value


# ------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------
_E = Ellipsoid(1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
_P = torch.zeros(4, 3, dtype=F64)
_Q = torch.ones(4, 3, dtype=F64)


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: Ellipsoid(float("nan"), (0, 0, 0), (1, 1, 1)), ValueError, "value"),
        (lambda: Ellipsoid("big", (0, 0, 0), (1, 1, 1)), TypeError, "value"),
        (lambda: Ellipsoid(1.0, (0, float("nan"), 0), (1, 1, 1)), ValueError, "centre"),
        (lambda: Ellipsoid(1.0, (0, 0), (1, 1, 1)), ValueError, "centre"),
        (lambda: Ellipsoid(1.0, (0, 0, 0), (1, 0, 1)), ValueError, "semi_axes"),
        (lambda: Ellipsoid(1.0, (0, 0, 0), (1, -2, 1)), ValueError, "semi_axes"),
        (lambda: Ellipsoid(1.0, (0, 0, 0), 1.0), TypeError, "semi_axes"),
        (lambda: Ellipsoid(1.0, (0, 0, 0), (1, 1, 1), (0, float("inf"), 0)), ValueError, "angles"),
        (lambda: ball(0.0), ValueError, "radius"),
        (lambda: ball(-1.0), ValueError, "radius"),
        (lambda: ball(float("nan")), ValueError, "radius"),
        (lambda: shepp_logan_3d(radius=-3.0), ValueError, "radius"),
        (lambda: random_ellipsoids(-1), ValueError, "n"),
        (lambda: random_ellipsoids(2.5), TypeError, "n"),
        (lambda: random_ellipsoids(3, radius=0.0), ValueError, "radius"),
        (lambda: random_ellipsoids(3, max_semi_axis=1.0), ValueError, "max_semi_axis"),
        (lambda: random_ellipsoids(3, value_range=(1.0, 0.0)), ValueError, "value_range"),
        (lambda: random_ellipsoids(3, value_range=(0.0, float("nan"))), ValueError, "value_range"),
        (lambda: random_ellipsoids(3, seed=1, generator=torch.Generator()), ValueError, "seed"),
        (lambda: voxelize([_E], (8, 8)), ValueError, "vol_shape"),
        (lambda: voxelize([_E], (8, 0, 8)), ValueError, "vol_shape"),
        (lambda: voxelize([_E], (8, 8.0, 8)), TypeError, "vol_shape"),
        (lambda: voxelize([_E], (8, 8, 8), voxel_size=(1.0, -1.0, 1.0)), ValueError, "voxel_size"),
        (lambda: voxelize([_E], (8, 8, 8), voxel_size=0.0), ValueError, "voxel_size"),
        (lambda: voxelize([_E], (8, 8, 8), vol_offset=(0.0, float("nan"), 0.0)), ValueError, "vol_offset"),
        (lambda: voxelize([_E], (8, 8, 8), supersample=0), ValueError, "supersample"),
        (lambda: voxelize([_E], (8, 8, 8), supersample=1.5), TypeError, "supersample"),
        (lambda: voxelize([_E], (8, 8, 8), dtype=torch.int32), TypeError, "dtype"),
        (lambda: voxelize([_E, "ball"], (8, 8, 8)), TypeError, "ellipsoids"),
        (lambda: voxelize(3.0, (8, 8, 8)), TypeError, "ellipsoids"),
        (lambda: line_integrals([_E], torch.zeros(4, 2), _Q), ValueError, "src"),
        (lambda: line_integrals([_E], _P, torch.ones(4)), ValueError, "dst"),
        (lambda: line_integrals([_E], _P, torch.ones(5, 3)), ValueError, "src and dst"),
        (lambda: line_integrals([_E], torch.full((4, 3), float("nan")), _Q), ValueError, "src"),
        (lambda: line_integrals([_E], _P, _P.clone()), ValueError, "dst"),
        (lambda: line_integrals([_E], "origin", _Q), TypeError, "src"),
        (lambda: phantom_volume_integral([_E, None]), TypeError, "ellipsoids"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()
