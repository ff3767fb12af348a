"""Analytic ellipsoid phantoms: the 3D Shepp-Logan head, balls and random blob phantoms.

A phantom is a list of :class:`Ellipsoid` objects; its density at a point is the sum of the
``value`` of every ellipsoid containing that point (closed ellipsoids, overlaps add). Two exact
or near-exact discretisations are provided:

- :func:`voxelize`: a partial-volume-aware voxel volume ``[z, y, x]`` (each voxel is the mean of
  the phantom over a regular ``supersample**3`` sub-grid), computed in z-slabs so that large
  volumes fit in little memory;
- :func:`line_integrals`: the exact integral of the phantom along straight lines (sum over the
  ellipsoids of ``value * chord length``), e.g. analytic cone-beam projections.

Conventions (the same as :mod:`unrolled3d.physics.geometry` and ASTRA's 3D code):

- World coordinates ``(x, y, z)`` in mm. Ellipsoid centres, semi-axes, line end points and the
  phantom radius are all in mm; densities are in whatever unit the caller chooses (e.g. linear
  attenuation in 1/mm, so that line integrals are dimensionless).
- A volume is an array ``[z, y, x]`` of shape ``vol_shape = (D, H, W)``; voxel ``(k, j, i)`` has
  its centre at ``x = ox + (i - (W-1)/2) sx``, ``y = oy + (j - (H-1)/2) sy``,
  ``z = oz + (k - (D-1)/2) sz``, with ``voxel_size = (sz, sy, sx)`` and
  ``vol_offset = (oz, oy, ox)`` in that same array order. Indices grow with the coordinate.
- An ellipsoid's orientation is given by ZYZ Euler angles ``(phi, theta, psi)`` (radians); the
  body-to-world rotation is ``R = Rz(phi) @ Ry(theta) @ Rz(psi)``, so the ellipsoid is
  ``{centre + R @ (a u, b v, c w) : u**2 + v**2 + w**2 <= 1}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import torch

from .._validation import check_allocation, int_triple, integer, real, real_tuple

__all__ = [
    "Ellipsoid",
    "shepp_logan_3d",
    "ball",
    "random_ellipsoids",
    "voxelize",
    "line_integrals",
    "phantom_volume_integral",
]

# Number of sub-sample points (float64) evaluated at once by :func:`voxelize`. A few temporaries
# of this many elements are alive at a time (~2**22 * 8 B = 32 MiB each), which bounds the
# working memory independently of the volume size.
_MAX_POINTS_PER_CHUNK = 1 << 22


# --------------------------------------------------------------------------------------------
# Input validation helpers
# --------------------------------------------------------------------------------------------
def _ellipsoid_list(ellipsoids: Any) -> list["Ellipsoid"]:
    if isinstance(ellipsoids, Ellipsoid):
        return [ellipsoids]
    if isinstance(ellipsoids, (str, bytes, torch.Tensor)):
        raise TypeError(f"ellipsoids must be an Ellipsoid or an iterable of Ellipsoid, got {type(ellipsoids).__name__}")
    try:
        out = list(ellipsoids)
    except TypeError:
        raise TypeError(
            f"ellipsoids must be an Ellipsoid or an iterable of Ellipsoid, got {type(ellipsoids).__name__}"
        ) from None
    for k, e in enumerate(out):
        if not isinstance(e, Ellipsoid):
            raise TypeError(f"ellipsoids[{k}] must be an Ellipsoid, got {type(e).__name__}")
    return out


# --------------------------------------------------------------------------------------------
# Ellipsoid
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ellipsoid:
    """A solid ellipsoid of constant density.

    Attributes
    ----------
    value : float
        Density added inside the ellipsoid (e.g. linear attenuation in 1/mm). Densities of
        overlapping ellipsoids add; negative values carve holes.
    centre : tuple of 3 float
        World position ``(x, y, z)`` of the centre, mm.
    semi_axes : tuple of 3 float
        Semi-axis lengths ``(a, b, c) > 0`` along the body axes ``(u, v, w)``, mm.
    angles : tuple of 3 float, optional
        ZYZ Euler angles ``(phi, theta, psi)`` in radians. The body-to-world rotation is
        ``R = Rz(phi) @ Ry(theta) @ Rz(psi)`` (see :meth:`rotation_matrix`): body axis ``u`` (of
        length ``a``) points along ``R[:, 0]`` in the world, and so on. Default: no rotation.

    Notes
    -----
    A world point ``p`` is inside iff ``|diag(1/a, 1/b, 1/c) @ R.T @ (p - centre)| <= 1``
    (the ellipsoid is closed). All fields are stored as tuples of Python floats.

    Examples
    --------
    >>> from unrolled3d.data import Ellipsoid, voxelize
    >>> e = Ellipsoid(1.0, centre=(0.0, 0.0, 0.0), semi_axes=(3.0, 2.0, 1.0))
    >>> round(e.volume, 3)                  # 4/3 pi a b c
    25.133
    >>> voxelize([e], (8, 8, 8)).shape
    torch.Size([8, 8, 8])
    """

    value: float
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", real("value", self.value))
        object.__setattr__(self, "centre", real_tuple("centre", self.centre, 3))
        object.__setattr__(self, "semi_axes", real_tuple("semi_axes", self.semi_axes, 3, positive=True))
        object.__setattr__(self, "angles", real_tuple("angles", self.angles, 3))

    def rotation_matrix(self) -> torch.Tensor:
        """Body-to-world rotation ``R = Rz(phi) @ Ry(theta) @ Rz(psi)``.

        Returns
        -------
        torch.Tensor
            Shape ``(3, 3)``, float64, CPU. Columns are the body axes expressed in world
            coordinates ``(x, y, z)``.
        """
        return torch.tensor(_rotation_rows(self.angles), dtype=torch.float64)

    @property
    def volume(self) -> float:
        """Geometric volume ``4/3 pi a b c`` in mm^3."""
        a, b, c = self.semi_axes
        return 4.0 / 3.0 * math.pi * a * b * c


def _rotation_rows(angles: Sequence[float]) -> list[list[float]]:
    """``Rz(phi) @ Ry(theta) @ Rz(psi)`` as nested Python floats (rows)."""
    phi, theta, psi = angles
    cf, sf = math.cos(phi), math.sin(phi)
    ct, st = math.cos(theta), math.sin(theta)
    cp, sp = math.cos(psi), math.sin(psi)
    return [
        [cf * ct * cp - sf * sp, -cf * ct * sp - sf * cp, cf * st],
        [sf * ct * cp + cf * sp, -sf * ct * sp + cf * cp, sf * st],
        [-st * cp, st * sp, ct],
    ]


def _quadric(e: Ellipsoid) -> list[list[float]]:
    """Symmetric ``A = R diag(1/a^2, 1/b^2, 1/c^2) R^T``: inside iff ``(p-c)^T A (p-c) <= 1``."""
    r = _rotation_rows(e.angles)
    inv2 = [1.0 / (s * s) for s in e.semi_axes]
    return [[sum(r[i][k] * inv2[k] * r[j][k] for k in range(3)) for j in range(3)] for i in range(3)]


def _half_extents(e: Ellipsoid) -> tuple[float, float, float]:
    """Half widths of the axis-aligned bounding box along world ``(x, y, z)``, mm."""
    r = _rotation_rows(e.angles)
    s = e.semi_axes
    hx, hy, hz = (math.sqrt(sum((r[i][k] * s[k]) ** 2 for k in range(3))) for i in range(3))
    return hx, hy, hz


# --------------------------------------------------------------------------------------------
# Phantom definitions
# --------------------------------------------------------------------------------------------
# 3D Shepp-Logan head of Kak & Slaney, "Principles of Computerized Tomographic Imaging" (1988),
# p. 102 (3D table), in units where the phantom fits the unit ball (largest semi-axis 0.92).
# Columns: a, b, c, x0, y0, z0, rotation about z (degrees, the body a-axis measured from +x
# towards +y), value (Kak & Slaney), value of the higher-contrast "modified" version
# (Yu, Ye & Wang, Proc. SPIE 5535, 2004: skull 1.0, brain 0.2, as used by TIGRE, sl3d and others).
_SHEPP_LOGAN_3D: tuple[tuple[float, ...], ...] = (
    (0.6900, 0.920, 0.900, 0.000, 0.000, 0.000, 0.0, 2.00, 1.0),
    (0.6624, 0.874, 0.880, 0.000, 0.000, 0.000, 0.0, -0.98, -0.8),
    (0.4100, 0.160, 0.210, -0.220, 0.000, -0.250, 108.0, -0.02, -0.2),
    (0.3100, 0.110, 0.220, 0.220, 0.000, -0.250, 72.0, -0.02, -0.2),
    (0.2100, 0.250, 0.500, 0.000, 0.350, -0.250, 0.0, 0.02, 0.2),
    (0.0460, 0.046, 0.046, 0.000, 0.100, -0.250, 0.0, 0.02, 0.2),
    (0.0460, 0.023, 0.020, -0.080, -0.650, -0.250, 0.0, 0.01, 0.1),
    (0.0460, 0.023, 0.020, 0.060, -0.650, -0.250, 90.0, 0.01, 0.1),
    (0.0560, 0.040, 0.100, 0.060, -0.105, 0.625, 90.0, 0.02, 0.2),
    (0.0560, 0.056, 0.100, 0.000, 0.100, 0.625, 0.0, -0.02, -0.2),
)
_SHEPP_LOGAN_EXTENT = 0.92  # largest distance of the outer ellipsoid from the origin (unit table)


def shepp_logan_3d(radius: float = 1.0, modified: bool = True) -> list[Ellipsoid]:
    """The 3D Shepp-Logan head phantom (10 ellipsoids).

    Geometry from Kak & Slaney's 3D table (1988, p. 102), scaled so that the outer (skull)
    ellipsoid, whose semi-axes are ``(0.69, 0.92, 0.90) * radius / 0.92``, fits the ball of
    ``radius`` mm centred at the origin (it touches it at ``y = +-radius``). The head axis is
    ``z`` (the rotation axis of a circular trajectory); the small features sit in the planes
    ``z = -0.25 radius / 0.92`` and ``z = 0.625 radius / 0.92``.

    Parameters
    ----------
    radius : float, optional
        Radius in mm of the ball containing the phantom. Default 1.
    modified : bool, optional
        If True (default), the higher-contrast densities of Yu, Ye & Wang (2004): skull 1.0,
        brain 0.2, features +-0.1 / +-0.2, so the phantom lies in ``[0, 1]`` with maximum 1.0.
        If False, Kak & Slaney's original densities (skull 2.0, brain 1.02, features +-0.01 /
        +-0.02).

    Returns
    -------
    list of Ellipsoid
        Densities are dimensionless relative values; multiply them (e.g. by 0.02 /mm for
        water-like attenuation) as needed.
    """
    r = real("radius", radius, positive=True)
    if not isinstance(modified, (bool, int)):
        raise TypeError(f"modified must be a bool, got {modified!r}")
    s = r / _SHEPP_LOGAN_EXTENT
    out = []
    for a, b, c, x0, y0, z0, rot, v_orig, v_mod in _SHEPP_LOGAN_3D:
        out.append(
            Ellipsoid(
                value=v_mod if modified else v_orig,
                centre=(x0 * s, y0 * s, z0 * s),
                semi_axes=(a * s, b * s, c * s),
                angles=(math.radians(rot), 0.0, 0.0),
            )
        )
    return out


def ball(radius: float, value: float = 1.0, centre: Sequence[float] = (0.0, 0.0, 0.0)) -> list[Ellipsoid]:
    """A single homogeneous ball.

    Parameters
    ----------
    radius : float
        Radius in mm, > 0.
    value : float, optional
        Density inside. Default 1.
    centre : sequence of 3 float, optional
        World centre ``(x, y, z)`` in mm. Default the origin.

    Returns
    -------
    list of Ellipsoid
        One ellipsoid with semi-axes ``(radius, radius, radius)``.
    """
    r = real("radius", radius, positive=True)
    return [Ellipsoid(value=value, centre=real_tuple("centre", centre, 3), semi_axes=(r, r, r))]


def random_ellipsoids(
    n: int,
    radius: float = 1.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    value_range: Sequence[float] = (0.1, 1.0),
    max_semi_axis: float = 0.4,
) -> list[Ellipsoid]:
    """Random "foam/blob" training phantom: ``n`` randomly placed and oriented ellipsoids.

    Each ellipsoid independently gets

    - semi-axes drawn uniformly in ``[max_semi_axis / 4, max_semi_axis] * radius``;
    - a uniformly distributed random orientation (Haar measure on SO(3));
    - a centre drawn uniformly in the ball of radius ``radius - max(semi-axes)``, so that the
      whole ellipsoid lies inside the ball of ``radius`` mm centred at the origin;
    - a density drawn uniformly in ``value_range`` (overlaps add).

    Parameters
    ----------
    n : int
        Number of ellipsoids, >= 0.
    radius : float, optional
        Radius in mm of the ball containing the phantom. Default 1.
    seed : int, optional
        Seed of a fresh CPU generator: the same seed gives the same phantom.
    generator : torch.Generator, optional
        Generator to draw from (its state advances). Exclusive with ``seed``. If neither is
        given, torch's global generator is used.
    value_range : (float, float), optional
        ``(low, high)`` range of densities, ``low <= high``. Default ``(0.1, 1.0)``.
    max_semi_axis : float, optional
        Largest semi-axis as a fraction of ``radius``, in ``(0, 1)``. Default 0.4.

    Returns
    -------
    list of Ellipsoid
        Length ``n``.
    """
    n = integer("n", n, 0)
    r = real("radius", radius, positive=True)
    m = real("max_semi_axis", max_semi_axis, positive=True)
    if m >= 1.0:
        raise ValueError(f"max_semi_axis must be < 1 (a fraction of radius), got {max_semi_axis!r}")
    try:
        vr = tuple(value_range)
    except TypeError:
        raise TypeError(f"value_range must be a pair (low, high), got {value_range!r}") from None
    if len(vr) != 2:
        raise ValueError(f"value_range must be a pair (low, high), got {value_range!r}")
    lo = real("value_range", vr[0])
    hi = real("value_range", vr[1])
    if lo > hi:
        raise ValueError(f"value_range must satisfy low <= high, got {value_range!r}")
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(integer("seed", seed))
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if n == 0:
        return []

    dev = generator.device if generator is not None else torch.device("cpu")
    # One fixed draw order, so that a seed always gives the same phantom.
    u = torch.rand((n, 8), generator=generator, dtype=torch.float64, device=dev).cpu().tolist()
    g = torch.randn((n, 3), generator=generator, dtype=torch.float64, device=dev).cpu().tolist()
    out = []
    for uk, gk in zip(u, g):
        semi = tuple(r * m * (0.25 + 0.75 * t) for t in uk[0:3])
        phi = 2.0 * math.pi * uk[3]
        theta = math.acos(min(1.0, max(-1.0, 1.0 - 2.0 * uk[4])))  # cos(theta) ~ U(-1, 1)
        psi = 2.0 * math.pi * uk[5]
        rc = (r - max(semi)) * uk[6] ** (1.0 / 3.0)  # uniform in the ball of radius r - max(semi)
        norm = math.sqrt(sum(x * x for x in gk)) or 1.0
        centre = tuple(rc * x / norm for x in gk)
        value = lo + (hi - lo) * uk[7]
        out.append(Ellipsoid(value=value, centre=centre, semi_axes=semi, angles=(phi, theta, psi)))
    return out


def phantom_volume_integral(ellipsoids: Union[Ellipsoid, Iterable[Ellipsoid]]) -> float:
    """Integral of the phantom over all space, ``sum(value * 4/3 pi a b c)``.

    Parameters
    ----------
    ellipsoids : Ellipsoid or iterable of Ellipsoid

    Returns
    -------
    float
        In ``density * mm^3``; compare with ``volume.sum() * sz * sy * sx`` of :func:`voxelize`.
    """
    return float(sum(e.value * e.volume for e in _ellipsoid_list(ellipsoids)))


# --------------------------------------------------------------------------------------------
# Discretisation
# --------------------------------------------------------------------------------------------
def voxelize(
    ellipsoids: Union[Ellipsoid, Iterable[Ellipsoid]],
    vol_shape: Sequence[int],
    voxel_size: Union[float, Sequence[float]] = (1.0, 1.0, 1.0),
    vol_offset: Sequence[float] = (0.0, 0.0, 0.0),
    supersample: int = 2,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> torch.Tensor:
    """Sample an ellipsoid phantom on a voxel grid, with partial-volume averaging.

    Each voxel gets the mean of the phantom over ``supersample**3`` points at the centres of a
    regular ``supersample x supersample x supersample`` sub-grid of the voxel (for
    ``supersample=1``: the value at the voxel centre). Each ellipsoid is evaluated only inside its
    bounding box, in z-slabs of at most ~4M sub-points, so the working memory is a few tens of
    MiB on top of the output (256^3 float32 with ``supersample=2``: 64 MiB output).

    Parameters
    ----------
    ellipsoids : Ellipsoid or iterable of Ellipsoid
        The phantom (may be empty).
    vol_shape : (int, int, int)
        ``(D, H, W)`` = number of voxels along ``(z, y, x)``.
    voxel_size : float or (float, float, float), optional
        ``(sz, sy, sx)`` in mm, array order; a scalar means isotropic. Default 1 mm.
    vol_offset : (float, float, float), optional
        ``(oz, oy, ox)``: world position (mm) of the volume centre, array order. Default 0.
    supersample : int, optional
        Sub-samples per voxel and axis, >= 1. Default 2.
    dtype : torch.dtype, optional
        Floating-point dtype of the result. Default float32. (Evaluation is in float64.)
    device : str or torch.device, optional
        Device of the result and of the computation. Default "cpu".

    Returns
    -------
    torch.Tensor
        Shape ``(D, H, W)``, indexed ``[z, y, x]``; voxel ``(k, j, i)`` is centred at
        ``x = ox + (i - (W-1)/2) sx``, ``y = oy + (j - (H-1)/2) sy``, ``z = oz + (k - (D-1)/2) sz``.
    """
    ells = _ellipsoid_list(ellipsoids)
    D, H, W = int_triple("vol_shape", vol_shape)
    sz, sy, sx = real_tuple("voxel_size", voxel_size, 3, positive=True, allow_scalar=True)
    oz, oy, ox = real_tuple("vol_offset", vol_offset, 3)
    s = integer("supersample", supersample, 1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = torch.device(device)
    check_allocation("the voxelized volume", (D, H, W), dtype, device)

    out = torch.zeros((D, H, W), dtype=dtype, device=device)
    f64 = torch.float64
    # Sub-sample offsets inside a voxel, in voxel units: centres of s equal sub-intervals.
    sub = (torch.arange(s, dtype=f64, device=device) + 0.5) / s - 0.5
    norm = 1.0 / s**3

    def axis_range(c: float, half: float, off: float, size: float, n: int) -> tuple[int, int]:
        # Voxels whose extent [x_i - size/2, x_i + size/2] meets [c - half, c + half].
        centre_idx = (n - 1) / 2.0
        lo = math.ceil((c - half - off) / size + centre_idx - 0.5)
        hi = math.floor((c + half - off) / size + centre_idx + 0.5)
        return max(lo, 0), min(hi, n - 1)

    def sub_coords(i0: int, i1: int, off: float, size: float, n: int, c: float) -> torch.Tensor:
        # Sub-sample coordinates (relative to the ellipsoid centre) of voxels i0..i1, flattened
        # voxel-major: element i * s + m is sub-point m of voxel i0 + i.
        idx = torch.arange(i0, i1 + 1, dtype=f64, device=device) - (n - 1) / 2.0
        return ((idx[:, None] + sub[None, :]) * size + (off - c)).reshape(-1)

    for e in ells:
        if e.value == 0.0:
            continue
        cx, cy, cz = e.centre
        hx, hy, hz = _half_extents(e)
        i0, i1 = axis_range(cx, hx, ox, sx, W)
        j0, j1 = axis_range(cy, hy, oy, sy, H)
        k0, k1 = axis_range(cz, hz, oz, sz, D)
        if i0 > i1 or j0 > j1 or k0 > k1:
            continue
        (a00, a01, a02), (_, a11, a12), (_, _, a22) = _quadric(e)
        nx, ny = i1 - i0 + 1, j1 - j0 + 1
        dx = sub_coords(i0, i1, ox, sx, W, cx)  # (nx*s,)
        dy = sub_coords(j0, j1, oy, sy, H, cy)  # (ny*s,)
        ax = a00 * dx  # so that Q = dx * (a00 dx + 2 a01 dy + 2 a02 dz) + (a11 dy^2 + 2 a12 dy dz + a22 dz^2)
        # z-slab size (in voxels) so that one slab holds at most _MAX_POINTS_PER_CHUNK sub-points.
        per_voxel_plane = ny * nx * s**3
        slab = max(1, _MAX_POINTS_PER_CHUNK // per_voxel_plane)
        for ka in range(k0, k1 + 1, slab):
            kb = min(ka + slab - 1, k1)
            nz = kb - ka + 1
            dz = sub_coords(ka, kb, oz, sz, D, cz)[:, None]  # (nz*s, 1)
            b = (2.0 * a01) * dy[None, :] + (2.0 * a02) * dz  # (nz*s, ny*s)
            c = (a11 * dy * dy)[None, :] + ((2.0 * a12) * dy[None, :] + a22 * dz) * dz
            q = b[:, :, None] + ax  # (nz*s, ny*s, nx*s)
            q.mul_(dx)
            q.add_(c[:, :, None])
            inside = (q <= 1.0).view(nz, s, ny, s, nx, s)
            count = inside.sum(dim=(1, 3, 5), dtype=torch.int32) if s > 1 else inside.view(nz, ny, nx)
            out[ka : kb + 1, j0 : j1 + 1, i0 : i1 + 1] += (e.value * norm) * count.to(dtype)
    return out


def line_integrals(
    ellipsoids: Union[Ellipsoid, Iterable[Ellipsoid]],
    src: torch.Tensor,
    dst: torch.Tensor,
) -> torch.Tensor:
    """Exact integrals of the phantom along straight lines.

    For the infinite line through ``src`` and ``dst`` this is ``sum_e value_e * chord_e``, the
    chord being the length of the line inside ellipsoid ``e``. It is computed analytically: in the
    body frame of ``e`` scaled to the unit sphere the line is ``q(t) = q0 + t w`` (with
    ``q0 = S^-1 R^T (src - centre)``, ``w = S^-1 R^T (dst - src)``, ``S = diag(a, b, c)``), the
    roots of ``|q(t)|^2 = 1`` are ``t1 <= t2`` and ``chord = (t2 - t1) |dst - src|``. The
    quadratic's (reduced) discriminant is evaluated as ``|w|^2 - |q0 x w|^2`` (equal to
    ``(q0.w)^2 - |w|^2 (|q0|^2 - 1)`` by Lagrange's identity, without its cancellation) and
    clipped at 0, so lines missing the ellipsoid give 0.

    Parameters
    ----------
    ellipsoids : Ellipsoid or iterable of Ellipsoid
        The phantom (may be empty).
    src, dst : torch.Tensor
        Shapes ``(..., 3)``, two distinct world points ``(x, y, z)`` in mm on each line. The
        leading shapes are broadcast against each other (e.g. one source ``(3,)`` and a detector
        grid ``(rows, cols, 3)``). Converted to float64; the computation runs on ``src``'s
        device.

    Returns
    -------
    torch.Tensor
        Shape ``broadcast(src.shape[:-1], dst.shape[:-1])``, float64: line integrals in
        ``density * mm`` (dimensionless for densities in 1/mm).
    """
    ells = _ellipsoid_list(ellipsoids)
    pts = []
    for name, p in (("src", src), ("dst", dst)):
        if not isinstance(p, torch.Tensor):
            try:
                p = torch.as_tensor(p, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"{name} must be a torch.Tensor of shape (..., 3), got {type(p).__name__}") from None
        if p.is_complex() or p.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {p.dtype}")
        if p.dim() < 1 or p.shape[-1] != 3:
            raise ValueError(f"{name} must have shape (..., 3), got {tuple(p.shape)}")
        p = p.to(dtype=torch.float64)
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
        pts.append(p)
    src64, dst64 = pts
    dst64 = dst64.to(src64.device)
    try:
        batch = torch.broadcast_shapes(src64.shape[:-1], dst64.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"src and dst leading shapes must broadcast, got src {tuple(src64.shape)} and dst {tuple(dst64.shape)}"
        ) from None
    d = dst64 - src64
    length = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    if bool((length == 0).any()):
        raise ValueError("dst must differ from src on every line (a line needs two distinct points)")
    u = d / length  # unit direction: the line parameter t is then in mm
    src_b = src64.expand(*batch, 3)

    total = torch.zeros(batch, dtype=torch.float64, device=src64.device)
    for e in ells:
        if e.value == 0.0:
            continue
        # M = S^-1 R^T maps world offsets to the unit-sphere body frame; row vectors: v @ M^T.
        rot = e.rotation_matrix().to(src64.device)
        inv_s = torch.tensor([1.0 / s for s in e.semi_axes], dtype=torch.float64, device=src64.device)
        mt = rot * inv_s[None, :]  # = M^T (column k of R scaled by 1/s_k)
        centre = torch.tensor(e.centre, dtype=torch.float64, device=src64.device)
        q0 = (src_b - centre) @ mt
        w = u @ mt
        ww = (w * w).sum(-1)
        cr = torch.linalg.cross(q0, w.expand_as(q0), dim=-1)
        disc = (ww - (cr * cr).sum(-1)).clamp_min(0.0)
        total += e.value * (2.0 * torch.sqrt(disc) / ww)  # t2 - t1, in mm since |u| = 1
    return total
