"""Cone-beam acquisition geometry: circular trajectories and per-view vectors (ASTRA ``cone_vec``).

Conventions (the same as ASTRA's 3D cone-beam code, see ``docs/geometry.md``):

- World coordinates ``(x, y, z)`` in mm; the circular trajectory rotates about the ``z`` axis.
- A volume is an array ``[z, y, x]`` of shape ``vol_shape = (D, H, W)``; voxel ``(k, j, i)`` has its
  centre at ``x = ox + (i - (W-1)/2) sx`` (likewise ``y``, ``z``); ``voxel_size = (sz, sy, sx)``
  and ``vol_offset = (oz, oy, ox)`` are given in that same array order.
- View ``p`` is 12 numbers ``(src, det, u, v)``: source position, detector centre, and the
  vectors from one detector pixel to the next along a row (``u``, columns) and along a column
  (``v``, rows). Pixel ``(r, c)`` of a ``rows x cols`` detector sits at
  ``det + (c - (cols-1)/2) u + (r - (rows-1)/2) v``.
- Measurements are ``(B, C, n_views, rows, cols)`` (deepinv's ``TomographyWithAstra`` uses
  ``(B, C, rows, n_views, cols)``; :func:`unrolled3d.physics.to_astra_layout` converts).
- A circular view at angle ``a`` (radians) is ``src = (sin a, -cos a, 0) * source_origin``,
  ``det = (-sin a, cos a, 0) * origin_detector + off_u * u_hat + off_v * z_hat``,
  ``u = (cos a, sin a, 0) * du``, ``v = (0, 0, dv)``, as ``astra.geom_2vec`` gives.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ._validation import check_allocation, check_patch, int_tuple, integer, real, real_tuple

__all__ = ["ConeBeamGeometry", "CircularTrajectory", "DetectorWindow", "MAX_MAGNITUDE"]

#: Largest magnitude a geometry quantity may take in voxel units (positions and ray directions
#: divided by the voxel size, inverse voxel sizes). The projector traverses rays in single
#: precision (float32 tops out at 3.4e38) and multiplies such quantities together: beyond this
#: bound they overflow to inf, inf - inf is NaN, and a NaN cast to an integer index is undefined
#: behaviour. No real scan comes within twenty orders of magnitude of it.
MAX_MAGNITUDE = 1e30
#: Largest number of voxels or measurement samples: linear indices are int64 in the projector.
MAX_ELEMENTS = 2**62


@dataclass(frozen=True)
class CircularTrajectory:
    """Parameters of a circular trajectory, kept for FDK (which needs them exactly).

    Attributes
    ----------
    angles : tuple of float
        Source angles in radians, one per view.
    source_origin, origin_detector : float
        Distances source -> rotation axis and rotation axis -> detector, mm.
    det_spacing : (float, float)
        Pixel pitch ``(dv, du)`` in mm.
    det_offset : (float, float)
        Detector centre shift ``(off_v, off_u)`` in mm along ``v`` and ``u``.
    scan : str
        ``"full"`` (2 pi) or ``"short"`` (pi plus the fan angle; FDK applies Parker weights).

    Examples
    --------
    >>> from unrolled3d.geometry import ConeBeamGeometry
    >>> g = ConeBeamGeometry.circular(4, 200.0, 100.0, (16, 16), 1.5, (8, 8, 8), scan="short")
    >>> t = g.trajectory
    >>> t.scan, len(t.angles), t.source_origin
    ('short', 4, 200.0)
    """

    angles: tuple[float, ...]
    source_origin: float
    origin_detector: float
    det_spacing: tuple[float, float]
    det_offset: tuple[float, float]
    scan: str


@dataclass(frozen=True)
class DetectorWindow:
    """The detector pixels a sub-volume's shadow reaches: one ``rows x cols`` window per view.

    View ``p``'s window is the pixels ``[row0[p], row0[p] + rows) x [col0[p], col0[p] + cols)``
    of the full detector; every view's window has the same shape, so the windowed measurements
    are an array ``[B, C, n_views, rows, cols]`` like any other.

    Attributes
    ----------
    row0, col0 : tuple of int
        First detector row and column of each view's window.
    shape : (int, int)
        ``(rows, cols)`` of every window.
    det_shape : (int, int)
        The full detector the windows lie in.

    Examples
    --------
    >>> from unrolled3d.geometry import DetectorWindow
    >>> w = DetectorWindow((0, 2), (1, 1), (2, 3), (4, 5))
    >>> w.shape, w.fraction          # 6 of 20 pixels per view
    ((2, 3), 0.3)
    """

    row0: tuple[int, ...]
    col0: tuple[int, ...]
    shape: tuple[int, int]
    det_shape: tuple[int, int]

    @property
    def fraction(self) -> float:
        """The share of the detector a window covers."""
        return (self.shape[0] * self.shape[1]) / (self.det_shape[0] * self.det_shape[1])

    @property
    def is_full(self) -> bool:
        """Whether every window is the whole detector."""
        return self.shape == self.det_shape


class ConeBeamGeometry:
    """Cone-beam CT geometry: per-view vectors, detector and volume description.

    Parameters
    ----------
    vectors : array-like, shape (n_views, 12)
        ASTRA ``cone_vec`` rows ``(src_x, src_y, src_z, det_x, det_y, det_z, u_x, u_y, u_z,
        v_x, v_y, v_z)`` in mm (world ``(x, y, z)``).
    det_shape : (int, int)
        Detector ``(rows, cols)``.
    vol_shape : (int, int, int)
        Volume ``(D, H, W)`` = ``(z, y, x)`` voxels.
    voxel_size : float or (float, float, float)
        ``(sz, sy, sx)`` in mm.
    vol_offset : (float, float, float)
        World position ``(oz, oy, ox)`` of the volume centre, mm.

    Notes
    -----
    Use :meth:`circular` for circular scans and :meth:`from_vectors` for measured trajectories.

    Examples
    --------
    >>> from unrolled3d.geometry import ConeBeamGeometry
    >>> g = ConeBeamGeometry.circular(n_views=30, source_origin=200.0, origin_detector=100.0,
    ...                               det_shape=(40, 48), det_spacing=1.5, vol_shape=(32, 32, 32))
    >>> g.sino_shape, g.vectors.shape
    ((30, 40, 48), (30, 12))
    >>> g.restrict((0, 8, 8), (16, 16, 16)).vol_offset    # the patch's centre, mm
    (-8.0, 0.0, 0.0)
    """

    def __init__(
        self,
        vectors: Any,
        det_shape: Sequence[int],
        vol_shape: Sequence[int],
        voxel_size: float | Sequence[float] = 1.0,
        vol_offset: Sequence[float] = (0.0, 0.0, 0.0),
        *,
        trajectory: CircularTrajectory | None = None,
    ) -> None:
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy()
        try:
            vec = np.array(vectors, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"vectors must be a numeric array of shape (n_views, 12), got {type(vectors)}") from None
        if vec.ndim != 2 or vec.shape[1] != 12 or vec.shape[0] < 1:
            raise ValueError(f"vectors must have shape (n_views >= 1, 12), got {vec.shape}")
        if not np.isfinite(vec).all():
            raise ValueError("vectors must be finite (found NaN or inf)")
        self.det_shape = int_tuple("det_shape", det_shape, 2, allow_scalar=True)
        self.vol_shape = int_tuple("vol_shape", vol_shape, 3, allow_scalar=True)
        self.voxel_size = real_tuple("voxel_size", voxel_size, 3, positive=True, allow_scalar=True)
        self.vol_offset = real_tuple("vol_offset", vol_offset, 3, allow_scalar=True)
        self._check_views(vec)
        vec.setflags(write=False)
        self.vectors = vec
        self.trajectory = trajectory
        self._scan_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def circular(
        cls,
        n_views: int,
        source_origin: float,
        origin_detector: float,
        det_shape: Sequence[int],
        det_spacing: float | Sequence[float],
        vol_shape: Sequence[int],
        voxel_size: float | Sequence[float] = 1.0,
        vol_offset: Sequence[float] = (0.0, 0.0, 0.0),
        det_offset: Sequence[float] = (0.0, 0.0),
        angles: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        scan: str = "full",
        start_angle: float = 0.0,
    ) -> "ConeBeamGeometry":
        """A circular trajectory about the ``z`` axis.

        Parameters
        ----------
        n_views : int
            Number of projections.
        source_origin, origin_detector : float
            Distances (mm) from the source to the rotation axis and from the axis to the detector.
        det_shape : (int, int)
            Detector ``(rows, cols)``.
        det_spacing : float or (float, float)
            Pixel pitch ``(dv, du)`` in mm.
        vol_shape, voxel_size, vol_offset
            See the class docstring.
        det_offset : (float, float)
            Detector shift ``(off_v, off_u)`` in mm (e.g. an off-centre detector).
        angles : array-like of n_views floats, optional
            Source angles in radians. Default: ``n_views`` equispaced angles over ``2 pi`` for a
            full scan, over ``pi + 2 * fan_half_angle`` for a short scan, from ``start_angle``.
        scan : {"full", "short"}
            Scan range, used by the default angles and by FDK (Parker weights for "short").
        """
        n_views = integer("n_views", n_views, 1)
        sod = real("source_origin", source_origin, positive=True)
        odd = real("origin_detector", origin_detector, positive=True)
        rows, cols = int_tuple("det_shape", det_shape, 2, allow_scalar=True)
        dv, du = real_tuple("det_spacing", det_spacing, 2, positive=True, allow_scalar=True)
        off_v, off_u = real_tuple("det_offset", det_offset, 2, allow_scalar=True)
        if scan not in ("full", "short"):
            raise ValueError(f"scan must be 'full' or 'short', got {scan!r}")
        start = real("start_angle", start_angle)
        # a typo such as n_views=2**40 is refused here, not by numpy's allocator
        check_allocation("n_views: the view vectors", (n_views, 12), torch.float64)
        if angles is None:
            if scan == "full":
                span = 2 * math.pi
            else:
                half_width = 0.5 * cols * du + abs(off_u)
                span = math.pi + 2 * math.atan(half_width / (sod + odd))
            ang = start + span * np.arange(n_views, dtype=np.float64) / n_views
        else:
            if isinstance(angles, torch.Tensor):
                angles = angles.detach().cpu().numpy()
            ang = np.asarray(angles, dtype=np.float64).reshape(-1)
            if ang.shape[0] != n_views:
                raise ValueError(f"angles has {ang.shape[0]} entries but n_views is {n_views}")
            if not np.isfinite(ang).all():
                raise ValueError("angles must be finite (found NaN or inf)")
        s, c = np.sin(ang), np.cos(ang)
        zeros, ones = np.zeros_like(ang), np.ones_like(ang)
        u_hat = np.stack([c, s, zeros], 1)
        z_hat = np.stack([zeros, zeros, ones], 1)
        vec = np.concatenate(
            [
                np.stack([s, -c, zeros], 1) * sod,
                np.stack([-s, c, zeros], 1) * odd + off_u * u_hat + off_v * z_hat,
                u_hat * du,
                z_hat * dv,
            ],
            axis=1,
        )
        traj = CircularTrajectory(tuple(float(a) for a in ang), sod, odd, (dv, du), (off_v, off_u), scan)
        return cls(vec, (rows, cols), vol_shape, voxel_size, vol_offset, trajectory=traj)

    @classmethod
    def from_vectors(
        cls,
        vectors: Any,
        det_shape: Sequence[int],
        vol_shape: Sequence[int],
        voxel_size: float | Sequence[float] = 1.0,
        vol_offset: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> "ConeBeamGeometry":
        """A measured per-view geometry in ASTRA's ``cone_vec`` convention (e.g. the Walnut data)."""
        return cls(vectors, det_shape, vol_shape, voxel_size, vol_offset)

    # ------------------------------------------------------------------ validation
    def _check_scale(self, vec: np.ndarray) -> None:
        """Every quantity the projector derives from the geometry is finite and far from overflow.

        The raw numbers being finite is not enough: ``voxel_size=1e-310`` has an infinite
        inverse, vectors times ``1e200`` have infinite cross products and squared norms, and the
        traversal then casts NaN to an integer index. So the derived quantities are checked
        themselves, in float64, against :data:`MAX_MAGNITUDE`.
        """
        for what, shape in (("vol_shape", self.vol_shape), ("det_shape x n_views", (*self.det_shape, vec.shape[0]))):
            if math.prod(shape) > MAX_ELEMENTS:
                raise ValueError(f"{what} {tuple(shape)} has {math.prod(shape):.3g} elements, more than the "
                                 f"projector can index (2^62)")
        with np.errstate(all="ignore"):
            voxel = np.array(self.voxel_size[::-1])  # (sx, sy, sz), the axes of the vectors
            inv = 1.0 / voxel
            if not (np.isfinite(inv).all() and (inv <= MAX_MAGNITUDE).all() and (voxel <= MAX_MAGNITUDE).all()):
                raise ValueError(f"voxel_size {self.voxel_size} is out of range: the projector works in voxel units, "
                                 f"and voxel sizes and their inverses must stay below {MAX_MAGNITUDE:g}")
            n = np.array(self.vol_shape[::-1], dtype=np.float64)
            origin = 0.5 * (n - 1) - np.array(self.vol_offset[::-1]) * inv  # world origin in voxel indices
            src, det, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
            rows, cols = self.det_shape
            cu, cv = 0.5 * (cols - 1), 0.5 * (rows - 1)
            # rays to the four corner pixels bound every ray (the pixel position is affine in (r, c))
            corners = [det + a * cu * u + b * cv * v for a in (-1.0, 1.0) for b in (-1.0, 1.0)]
            derived = {
                "the volume offset in voxels": origin,
                "the source positions in voxels": src * inv + origin,
                "the detector pixel positions in voxels": np.stack([c * inv + origin for c in corners]),
                "the ray directions in voxels": np.stack([(c - src) * inv for c in corners]),
                "the ray lengths squared (mm^2)": np.stack([((c - src) ** 2).sum(-1) for c in corners]),
                "the detector normals u x v": np.cross(u, v),
                "the pixel sizes squared": np.stack([(u * u).sum(-1), (v * v).sum(-1)]),
            }
        for what, value in derived.items():
            bad = ~np.isfinite(value) | (np.abs(value) > (MAX_MAGNITUDE if "squared" not in what and "normals" not in what
                                                          else MAX_MAGNITUDE ** 2))
            if bad.any():
                raise ValueError(f"vectors/voxel_size/vol_offset: {what} overflow (not finite or beyond "
                                 f"{MAX_MAGNITUDE:g}): the geometry's numbers are out of any physical range")

    def _check_views(self, vec: np.ndarray) -> None:
        self._check_scale(vec)
        src, det, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
        if (np.linalg.norm(u, axis=1) == 0).any() or (np.linalg.norm(v, axis=1) == 0).any():
            raise ValueError("vectors: the detector pixel vectors u and v must be non-zero in every view")
        normal = np.cross(u, v)
        if (np.linalg.norm(normal, axis=1) < 1e-12 * np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)).any():
            raise ValueError("vectors: the detector vectors u and v are parallel in some view")
        # The projector integrates along whole lines: the volume must lie between source and
        # detector, so the source must be outside the volume's bounding sphere.
        centre = np.array(self.vol_offset[::-1])  # (x, y, z)
        half_diag = 0.5 * math.sqrt(sum((n * s) ** 2 for n, s in zip(self.vol_shape, self.voxel_size)))
        dist = np.linalg.norm(src - centre, axis=1)
        if (dist <= half_diag).any():
            raise ValueError(
                f"the source comes within the volume's bounding sphere (radius {half_diag:.3g} mm, closest "
                f"source distance {dist.min():.3g} mm): shrink the volume or move the source away"
            )
        # Along the principal ray the volume centre must lie between source and detector plane.
        n_hat = normal / np.linalg.norm(normal, axis=1, keepdims=True)
        n_hat *= np.where(((det - src) * n_hat).sum(1) < 0, -1.0, 1.0)[:, None]
        depth_det = ((det - src) * n_hat).sum(1)
        depth_vol = ((centre - src) * n_hat).sum(1)
        if ((depth_vol <= 0) | (depth_vol >= depth_det)).any():
            raise ValueError("vectors: in some view the volume centre is not between the source and the detector")

    # ------------------------------------------------------------------ properties
    @property
    def n_views(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def is_circular(self) -> bool:
        return self.trajectory is not None

    @property
    def sino_shape(self) -> tuple[int, int, int]:
        """Measurement shape ``(n_views, rows, cols)`` (without batch and channel)."""
        return (self.n_views, *self.det_shape)

    @property
    def vol_geom(self) -> list[float]:
        """``[sz, sy, sx, oz, oy, ox]`` as the C++ ops take it."""
        return [*self.voxel_size, *self.vol_offset]

    @property
    def scan_cache(self) -> dict[str, Any]:
        """A dict for values derived from the views and the detector alone (not the volume):
        the views on each device, FDK's per-view weights. Shared by this geometry and every
        geometry :meth:`restrict` derives from it (same views and detector), so patches reuse
        what the full volume computed. Keys are prefixed by their user (``"views/"``,
        ``"fdk/"``)."""
        return self._scan_cache

    def views_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``(n_views, 12)`` float64 vectors on ``device`` (cached per device, see
        :attr:`scan_cache`)."""
        key = f"views/{torch.device(device)}"
        views = self._scan_cache.get(key)
        if views is None:
            views = self._scan_cache[key] = torch.from_numpy(np.array(self.vectors)).to(device)
        return views

    def source_positions(self) -> np.ndarray:
        """Source positions, ``(n_views, 3)`` world ``(x, y, z)`` mm."""
        return np.array(self.vectors[:, 0:3])

    def pixel_positions(self) -> np.ndarray:
        """Detector pixel centres, ``(n_views, rows, cols, 3)`` world ``(x, y, z)`` mm."""
        rows, cols = self.det_shape
        det, u, v = self.vectors[:, 3:6], self.vectors[:, 6:9], self.vectors[:, 9:12]
        cu = np.arange(cols) - 0.5 * (cols - 1)
        cv = np.arange(rows) - 0.5 * (rows - 1)
        return (
            det[:, None, None, :]
            + cu[None, None, :, None] * u[:, None, None, :]
            + cv[None, :, None, None] * v[:, None, None, :]
        )

    # ------------------------------------------------------------------ derived geometries
    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> "ConeBeamGeometry":
        """The geometry of the sub-volume ``[k0:k0+pd, j0:j0+ph, i0:i0+pw]`` (same views).

        The patch operator ``A S^T`` is the same projector on this smaller volume: its cost
        grows with the patch, not with the full volume.

        Parameters
        ----------
        offset : (int, int, int)
            Start index ``(k0, j0, i0)`` of the patch in the full volume.
        shape : (int, int, int)
            Patch shape ``(pd, ph, pw)``; the patch must lie inside the volume.
        """
        off, shape = check_patch(offset, shape, self.vol_shape, axes="zyx")
        cz, cy, cx = (
            oo + (o + 0.5 * (p - 1) - 0.5 * (n - 1)) * s
            for o, p, n, s, oo in zip(off, shape, self.vol_shape, self.voxel_size, self.vol_offset)
        )
        centre = (cz, cy, cx)
        # Cheap on purpose (it runs once per patch): Python arithmetic on the validated ints, no
        # numpy, no tensor. The views are not copied or re-validated: they are this geometry's,
        # read-only and already checked (a sub-volume lies between source and detector wherever
        # the volume does), and the scan cache (views on each device, FDK's weights) is shared.
        patch = object.__new__(ConeBeamGeometry)
        patch.vectors = self.vectors
        patch.det_shape = self.det_shape
        patch.vol_shape = shape
        patch.voxel_size = self.voxel_size
        patch.vol_offset = centre
        patch.trajectory = self.trajectory
        patch._scan_cache = self._scan_cache
        return patch

    def shadow_bounds(self, offset: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        """Per view, the detector rows and columns the sub-volume's shadow can reach.

        A ray contributes to the projection of the sub-volume ``[offset, offset + shape)`` only
        if it passes within one voxel of one of its voxel centres (the projector interpolates
        linearly between neighbouring centres), so the shadow is the perspective image of the
        box whose corners are the centres extended by one voxel on every side. A box in front of
        the source projects into the convex hull of its eight corners' images: their extreme
        detector coordinates, rounded outwards, bound every pixel whose ray can reach it.

        Parameters
        ----------
        offset, shape : (int, int, int)
            The sub-volume, in voxels of this geometry's volume (it may reach outside it).

        Returns
        -------
        np.ndarray, int64, shape (n_views, 4)
            ``(row_lo, row_hi, col_lo, col_hi)`` per view, inclusive, clamped to the detector;
            ``lo > hi`` where the shadow misses the detector.
        """
        off = [int(v) for v in offset]
        shp = [int(v) for v in shape]
        # box corners in (x, y, z) world coordinates, from index space (k, j, i) = (z, y, x)
        axes = []
        for o, p, n, s, c in zip(off[::-1], shp[::-1], self.vol_shape[::-1], self.voxel_size[::-1],
                                 self.vol_offset[::-1]):
            lo, hi = o - 1.0, o + p + 0.0  # centres o .. o+p-1, widened by one voxel
            axes.append([c + (lo - 0.5 * (n - 1)) * s, c + (hi - 0.5 * (n - 1)) * s])
        corners = np.array([[x, y, z] for x in axes[0] for y in axes[1] for z in axes[2]])  # (8, 3)
        src, det, u, v = (self.vectors[:, i:i + 3] for i in (0, 3, 6, 9))
        normal = np.cross(u, v)
        # the ray from the source through each corner meets the detector plane at s + t (P - s)
        to_det = ((det - src) * normal).sum(1)  # (V,)
        rays = corners[None, :, :] - src[:, None, :]  # (V, 8, 3)
        t = to_det[:, None] / (rays * normal[:, None, :]).sum(2)
        hits = src[:, None, :] + t[..., None] * rays - det[:, None, :]
        # detector coordinates (a, b) of each hit: hit = a u + b v (+ 0 normal), by the dual basis
        basis = np.stack([u, v, normal], axis=2)  # (V, 3, 3): columns u, v, n
        ab = np.linalg.solve(basis[:, None, :, :], hits[..., None])[..., 0]  # (V, 8, 3)
        rows, cols = self.det_shape
        col = ab[..., 0] + 0.5 * (cols - 1)
        row = ab[..., 1] + 0.5 * (rows - 1)
        bounds = np.stack([np.floor(row.min(1)), np.ceil(row.max(1)), np.floor(col.min(1)), np.ceil(col.max(1))], 1)
        lo_r, hi_r = np.clip(bounds[:, 0], 0, rows - 1), np.clip(bounds[:, 1], -1, rows - 1)
        lo_c, hi_c = np.clip(bounds[:, 2], 0, cols - 1), np.clip(bounds[:, 3], -1, cols - 1)
        lo_r = np.where(bounds[:, 0] > rows - 1, rows, lo_r)  # wholly beyond the last row: empty
        lo_c = np.where(bounds[:, 2] > cols - 1, cols, lo_c)
        return np.stack([lo_r, hi_r, lo_c, hi_c], 1).astype(np.int64)

    def shadow_shape(self, offset: Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
        """``(rows, cols)`` of the smallest window holding the sub-volume's shadow in every view
        (see :meth:`shadow_bounds`)."""
        b = self.shadow_bounds(offset, shape)
        return (max(1, int((b[:, 1] - b[:, 0] + 1).max())), max(1, int((b[:, 3] - b[:, 2] + 1).max())))

    def detector_window(self, offset: Sequence[int], shape: Sequence[int],
                        window_shape: Sequence[int] | None = None) -> DetectorWindow:
        """The per-view detector windows of the sub-volume's shadow (:meth:`shadow_bounds`).

        Parameters
        ----------
        offset, shape : (int, int, int)
            The sub-volume, in voxels.
        window_shape : (int, int), optional
            Make every window at least this ``(rows, cols)`` (clamped to the detector), e.g. the
            largest shadow of a group of patches solved together, whose measurements are stacked.

        Returns
        -------
        DetectorWindow
            Each view's window holds its shadow and lies inside the detector.
        """
        b = self.shadow_bounds(offset, shape)
        rows, cols = self.det_shape
        h, w = self.shadow_shape(offset, shape)
        if window_shape is not None:
            wh, ww = int_tuple("window_shape", window_shape, 2)
            h, w = max(h, wh), max(w, ww)
        h, w = min(h, rows), min(w, cols)
        # the window starts at its shadow's first row (column), moved back where it would overhang
        row0 = np.clip(np.minimum(b[:, 0], rows - h), 0, None)
        col0 = np.clip(np.minimum(b[:, 2], cols - w), 0, None)
        return DetectorWindow(tuple(int(r) for r in row0), tuple(int(c) for c in col0), (h, w), self.det_shape)

    def windowed(self, window: DetectorWindow) -> "ConeBeamGeometry":
        """The same views seen through ``window``: each view's detector is its window (its centre
        moved to the window's centre, ``det_shape`` the window's). A vector geometry (no
        trajectory: the windows move with the view). Same volume."""
        if window.det_shape != self.det_shape or len(window.row0) != self.n_views:
            raise ValueError(f"the window is for a {window.det_shape} detector with {len(window.row0)} views, "
                             f"this geometry has {self.det_shape} and {self.n_views}")
        rows, cols = self.det_shape
        h, w = window.shape
        shift_c = np.asarray(window.col0, dtype=np.float64) + 0.5 * (w - 1) - 0.5 * (cols - 1)
        shift_r = np.asarray(window.row0, dtype=np.float64) + 0.5 * (h - 1) - 0.5 * (rows - 1)
        vec = np.array(self.vectors)
        vec[:, 3:6] += shift_c[:, None] * vec[:, 6:9] + shift_r[:, None] * vec[:, 9:12]
        vec.setflags(write=False)
        out = object.__new__(ConeBeamGeometry)  # the views were checked; a window keeps them valid
        out.vectors = vec
        out.det_shape = (h, w)
        out.vol_shape = self.vol_shape
        out.voxel_size = self.voxel_size
        out.vol_offset = self.vol_offset
        out.trajectory = None
        out._scan_cache = {}
        return out

    def detector_rows(self, row0: int, rows: int) -> "ConeBeamGeometry":
        """The same scan on the detector rows ``[row0, row0 + rows)`` (every view alike), e.g. the
        band a slab of the volume can reach. A circular scan stays circular (its detector offset
        moves by the band's shift), so FDK on the band is FDK's exact restriction: the ramp
        filter runs along detector rows, each row alone."""
        total, cols = self.det_shape
        row0 = integer("row0", row0, 0)
        rows = integer("rows", rows, 1)
        if row0 + rows > total:
            raise ValueError(f"detector rows [{row0}, {row0 + rows}) lie outside the detector's {total} rows")
        n = self.n_views
        out = self.windowed(DetectorWindow((row0,) * n, (0,) * n, (rows, cols), self.det_shape))
        if self.trajectory is not None:
            t = self.trajectory
            shift = row0 + 0.5 * (rows - 1) - 0.5 * (total - 1)
            out.trajectory = dataclasses.replace(t, det_offset=(t.det_offset[0] + shift * t.det_spacing[0],
                                                                t.det_offset[1]))
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (exact: floats are kept as Python floats)."""
        d: dict[str, Any] = {
            "vectors": self.vectors.tolist(),
            "det_shape": list(self.det_shape),
            "vol_shape": list(self.vol_shape),
            "voxel_size": list(self.voxel_size),
            "vol_offset": list(self.vol_offset),
        }
        if self.trajectory is not None:
            t = self.trajectory
            d["trajectory"] = {
                "angles": list(t.angles),
                "source_origin": t.source_origin,
                "origin_detector": t.origin_detector,
                "det_spacing": list(t.det_spacing),
                "det_offset": list(t.det_offset),
                "scan": t.scan,
            }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConeBeamGeometry":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a dict as written by to_dict(), got {type(d)}")
        missing = {"vectors", "det_shape", "vol_shape", "voxel_size", "vol_offset"} - set(d)
        if missing:
            raise ValueError(f"geometry description lacks {sorted(missing)}")
        traj = None
        if d.get("trajectory") is not None:
            t = d["trajectory"]
            try:
                traj = CircularTrajectory(
                    tuple(float(a) for a in t["angles"]), real("trajectory.source_origin", t["source_origin"], True),
                    real("trajectory.origin_detector", t["origin_detector"], True),
                    real_tuple("trajectory.det_spacing", t["det_spacing"], 2, positive=True),
                    real_tuple("trajectory.det_offset", t["det_offset"], 2), str(t["scan"]),
                )
            except (KeyError, TypeError) as exc:
                raise ValueError(f"geometry description: invalid trajectory ({type(exc).__name__}: {exc})") from None
            if traj.scan not in ("full", "short") or not all(math.isfinite(a) for a in traj.angles):
                raise ValueError("geometry description: the trajectory's scan or angles are invalid")
        g = cls(d["vectors"], d["det_shape"], d["vol_shape"], d["voxel_size"], d["vol_offset"], trajectory=traj)
        if traj is not None and len(traj.angles) != g.n_views:
            raise ValueError(f"geometry description: {len(traj.angles)} trajectory angles for {g.n_views} views")
        return g

    def fingerprint(self) -> str:
        """A short hash of the geometry (vectors rounded to 1 nm), to match fitted operators."""
        d = self.to_dict()
        d.pop("trajectory", None)
        d["vectors"] = np.round(self.vectors, 6).tolist()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConeBeamGeometry):
            return NotImplemented
        return (
            self.det_shape == other.det_shape
            and self.vol_shape == other.vol_shape
            and self.voxel_size == other.voxel_size
            and self.vol_offset == other.vol_offset
            and np.array_equal(self.vectors, other.vectors)
        )

    # unhashable (mutable caches inside; compare with == or fingerprint()); typeshed's own spelling of it
    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = f"circular {self.trajectory.scan} scan" if self.trajectory else "vector"
        return (
            f"ConeBeamGeometry({kind}, n_views={self.n_views}, det_shape={self.det_shape}, "
            f"vol_shape={self.vol_shape}, voxel_size={self.voxel_size}, vol_offset={self.vol_offset})"
        )
