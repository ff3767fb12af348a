"""Drop-in replacements for deepinv classes, backed by unrolled3d's operators.

``unrolled3d.physics.TomographyWithAstra`` takes the arguments of
``deepinv.physics.TomographyWithAstra`` (deepinv 0.5) for 3D cone-beam scans and runs on the
matched C++/CUDA projector pair, on the CPU or the GPU, with no ASTRA: a deepinv script changes
one import line::

    # from deepinv.physics import TomographyWithAstra
    from unrolled3d.physics import TomographyWithAstra

How deepinv's arguments map onto :class:`~unrolled3d.geometry.ConeBeamGeometry` (the mapping
that deepinv's ``create_projection_geometry`` / ``create_object_geometry`` hand to ASTRA):

- ``img_size = (slices, rows, cols)`` is the volume ``(D, H, W) = (z, y, x)``;
- ``pixel_spacing = (x, y, z)`` (or a scalar) and ``bounding_box = (min_x, max_x, min_y,
  max_y, min_z, max_z)`` give the voxel size and the volume centre (ASTRA's 3D volume does not
  flip ``y``: row 0 is at ``min_y``);
- ``angles`` in degrees; deepinv hands ASTRA ``deg2rad(-angles)``, and ASTRA's ``cone`` source
  sits at ``(sin t, -cos t, 0) * source_radius`` -- the same formula as
  :meth:`ConeBeamGeometry.circular`, so our angle is ``t = deg2rad(-angle)``;
- ``detector_spacing = (v, u)``, ``n_detector_pixels = (rows, cols)``;
- ``geometry_vectors`` are ASTRA ``cone_vec`` rows, used as they are;
- measurements are ``[B, C, rows, angles, cols]`` (the ``"astra"`` layout of
  :class:`~unrolled3d.physics.ConeBeamCT`).

What deepinv's class does and this one does not: 2D geometries, ``geometry_type="parallel"`` or
``"fanbeam"`` (the projector is cone-beam only); those raise a ``ValueError`` naming the
argument.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._validation import int_tuple, real_tuple
from ..geometry import ConeBeamGeometry
from .cone_beam import ConeBeamCT

__all__ = ["TomographyWithAstra", "cone_beam_geometry_from_deepinv"]

_DEFAULT_RADII = {"source_radius": 80.0, "detector_radius": 20.0}


def _volume_from_astra(object_geometry: Mapping[str, Any]) -> tuple[tuple[int, int, int], tuple, tuple]:
    """``(vol_shape, voxel_size, vol_offset)`` from an ASTRA 3D volume geometry dict."""
    try:
        shape = (int(object_geometry["GridSliceCount"]), int(object_geometry["GridRowCount"]),
                 int(object_geometry["GridColCount"]))
        o = object_geometry["option"]
        box = [float(o[k]) for k in ("WindowMinX", "WindowMaxX", "WindowMinY", "WindowMaxY", "WindowMinZ", "WindowMaxZ")]
    except (KeyError, TypeError) as err:
        raise ValueError(f"object_geometry is not an ASTRA 3D volume geometry (missing {err})") from None
    return _volume_from_box(shape, box)


def _volume_from_box(shape: Sequence[int], box: Sequence[float]) -> tuple[tuple[int, int, int], tuple, tuple]:
    d, h, w = shape
    min_x, max_x, min_y, max_y, min_z, max_z = box
    voxel = ((max_z - min_z) / d, (max_y - min_y) / h, (max_x - min_x) / w)
    if min(voxel) <= 0:
        raise ValueError(f"bounding_box must have max > min on every axis, got {tuple(box)}")
    offset = (0.5 * (min_z + max_z), 0.5 * (min_y + max_y), 0.5 * (min_x + max_x))
    return (d, h, w), voxel, offset


def cone_beam_geometry_from_deepinv(
    img_size: Sequence[int],
    angles: int | torch.Tensor | Sequence[float] = 180,
    n_detector_pixels: int | Sequence[int] | None = None,
    angular_range: tuple[float, float] = (0, 180),
    detector_spacing: float | Sequence[float] = 1.0,
    pixel_spacing: float | Sequence[float] = 1.0,
    bounding_box: Sequence[float] | None = None,
    geometry_parameters: Mapping[str, float] | None = None,
    geometry_vectors: torch.Tensor | np.ndarray | None = None,
) -> ConeBeamGeometry:
    """The :class:`ConeBeamGeometry` that deepinv's ``TomographyWithAstra`` arguments describe.

    See the module docstring for the mapping. Returns a circular geometry (so FDK uses the exact
    circular weights), or a vector geometry when ``geometry_vectors`` is given.
    """
    size = int_tuple("img_size", img_size, 3)  # (slices, rows, cols); floats and bools refused
    if bounding_box is not None:
        box = tuple(float(b) for b in bounding_box)
        if len(box) != 6:
            raise ValueError(f"bounding_box must be (min_x, max_x, min_y, max_y, min_z, max_z), got {bounding_box!r}")
        vol_shape, voxel, offset = _volume_from_box(size, box)
    else:
        sx, sy, sz = real_tuple("pixel_spacing", pixel_spacing, 3, positive=True, allow_scalar=True)
        if min(sx, sy, sz) <= 0:
            raise ValueError(f"pixel_spacing must be positive, got {pixel_spacing!r}")
        vol_shape, voxel, offset = size, (sz, sy, sx), (0.0, 0.0, 0.0)
    if n_detector_pixels is None:  # deepinv's default
        n_detector_pixels = math.ceil(math.sqrt(2) * size[0])
    det_shape = int_tuple("n_detector_pixels", n_detector_pixels, 2, allow_scalar=True)
    if geometry_vectors is not None:
        return ConeBeamGeometry.from_vectors(geometry_vectors, det_shape, vol_shape, voxel, offset)

    if isinstance(angles, (int, np.integer)) and not isinstance(angles, bool):
        if angles < 1:
            raise ValueError(f"angles must be a positive number of views or a tensor of degrees, got {angles}")
        lo, hi = (float(a) for a in angular_range)
        deg = np.linspace(lo, hi, int(angles) + 1)[:-1]
    else:
        deg = torch.as_tensor(angles, dtype=torch.float64).detach().cpu().reshape(-1).numpy()
        if deg.size < 1:
            raise ValueError("angles must hold at least one angle (degrees)")
    params = dict(_DEFAULT_RADII)
    if geometry_parameters is not None:
        unknown = set(geometry_parameters) - set(_DEFAULT_RADII)
        if unknown:
            raise ValueError(f"geometry_parameters: unknown keys {sorted(unknown)}; expected {sorted(_DEFAULT_RADII)}")
        params.update({k: float(v) for k, v in geometry_parameters.items()})
    # FDK's redundancy weights: a full scan covers 360 deg (views equispaced, the last one
    # step short of the first); anything less is a short scan (Parker weights)
    n = len(deg)
    covered = (deg.max() - deg.min()) * n / max(n - 1, 1)
    scan = "full" if covered >= 0.99 * 360.0 else "short"
    return ConeBeamGeometry.circular(
        n_views=len(deg), scan=scan, source_origin=params["source_radius"], origin_detector=params["detector_radius"],
        det_shape=det_shape, det_spacing=real_tuple("detector_spacing", detector_spacing, 2, positive=True, allow_scalar=True), vol_shape=vol_shape,
        voxel_size=voxel, vol_offset=offset, angles=np.deg2rad(-deg),
    )


def _geometry_from_astra(object_geometry, projection_geometry, img_size, **kw) -> ConeBeamGeometry:
    """Geometry from ASTRA dicts (``object_geometry`` and/or ``projection_geometry``)."""
    if object_geometry is not None:
        vol_shape, voxel, offset = _volume_from_astra(object_geometry)
        box = [offset[2] - 0.5 * voxel[2] * vol_shape[2], offset[2] + 0.5 * voxel[2] * vol_shape[2],
               offset[1] - 0.5 * voxel[1] * vol_shape[1], offset[1] + 0.5 * voxel[1] * vol_shape[1],
               offset[0] - 0.5 * voxel[0] * vol_shape[0], offset[0] + 0.5 * voxel[0] * vol_shape[0]]
        img_size, kw["bounding_box"] = vol_shape, box
    if projection_geometry is None:
        return cone_beam_geometry_from_deepinv(img_size, **kw)
    kind = projection_geometry.get("type")
    det = (int(projection_geometry["DetectorRowCount"]), int(projection_geometry["DetectorColCount"]))
    kw["n_detector_pixels"] = det
    if kind == "cone_vec":
        kw["geometry_vectors"] = np.asarray(projection_geometry["Vectors"], dtype=np.float64)
    elif kind == "cone":
        kw["detector_spacing"] = (float(projection_geometry["DetectorSpacingY"]),
                                  float(projection_geometry["DetectorSpacingX"]))
        kw["geometry_parameters"] = {"source_radius": float(projection_geometry["DistanceOriginSource"]),
                                     "detector_radius": float(projection_geometry["DistanceOriginDetector"])}
        # ASTRA stores deepinv's -angles in radians
        kw["angles"] = torch.as_tensor(-np.rad2deg(np.asarray(projection_geometry["ProjectionAngles"], np.float64)))
    else:
        raise ValueError(f"projection_geometry of type {kind!r} is not supported: unrolled3d's projector is "
                         "cone-beam ('cone' or 'cone_vec')")
    return cone_beam_geometry_from_deepinv(img_size, **kw)


class TomographyWithAstra(ConeBeamCT):
    r"""deepinv's ``TomographyWithAstra`` (3D cone beam) on unrolled3d's matched projector.

    Same name, arguments and measurement layout as :class:`deepinv.physics.TomographyWithAstra`
    (see the module docstring for the mapping), but:

    - ``A_adjoint`` is the exact adjoint of ``A`` (ASTRA's is a rescaled, unmatched
      backprojector), and batches and channels go through the projector in one call;
    - it runs on any device: CPU (OpenMP) or CUDA;
    - ``A_dagger(y)`` is least squares, as in deepinv; ``A_dagger(y, fbp=True)`` or ``fbp(y)``
      is FDK (exact circular-scan weights; per-view weights for ``geometry_vectors``).

    Parameters
    ----------
    img_size : tuple
        ``(slices, rows, cols)``.
    angles : int, torch.Tensor
        number of views uniformly spread over ``angular_range``, or
        the view angles in degrees.
    n_detector_pixels : int, tuple
        detector ``(rows, cols)`` (an int: square); default
        ``ceil(sqrt(2) * slices)`` as deepinv.
    angular_range : tuple
        ``(start, stop)`` degrees, stop excluded.
    detector_spacing : float, tuple
        ``(vertical, horizontal)`` pixel pitch.
    pixel_spacing : float, tuple
        voxel ``(x, y, z)`` size.
    bounding_box : tuple
        ``(min_x, max_x, min_y, max_y, min_z, max_z)``; overrides
        ``pixel_spacing``.
    geometry_type : str
        ``"conebeam"`` (the only type served).
    geometry_parameters : dict
        ``{"source_radius", "detector_radius"}`` (default 80, 20).
    geometry_vectors : torch.Tensor
        ``(n_views, 12)`` ASTRA ``cone_vec`` rows; override
        ``angles``, ``detector_spacing`` and ``geometry_parameters``.
    projection_geometry : dict object_geometry,
        ASTRA geometry dicts (``cone`` or
        ``cone_vec``), read without ASTRA.
    is_2d : bool
        must be ``False``/``None``.
    normalize : bool
        divide ``A`` by ``||A||`` (the ``operator_norm`` buffer); ``None``
        warns and normalises, as deepinv does.
    device : torch.device, str
        any device; default CUDA when available, else CPU.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.physics import TomographyWithAstra
    >>> physics = TomographyWithAstra(img_size=(8, 8, 8), angles=12, n_detector_pixels=(12, 12),
    ...                               angular_range=(0, 360), geometry_type="conebeam",
    ...                               geometry_parameters={"source_radius": 60.0, "detector_radius": 30.0},
    ...                               normalize=False)
    >>> physics.A(torch.rand(1, 1, 8, 8, 8)).shape      # [B, C, rows, angles, cols], as deepinv
    torch.Size([1, 1, 12, 12, 12])
    """

    def __init__(
        self,
        img_size: tuple[int, ...] | None = None,
        angles: int | torch.Tensor = 180,
        n_detector_pixels: int | tuple[int, ...] | None = None,
        angular_range: tuple[float, float] = (0, 180),
        detector_spacing: float | tuple[float, float] = 1.0,
        pixel_spacing: float | tuple[float, ...] = 1.0,
        bounding_box: tuple[float, ...] | None = None,
        geometry_type: str = "parallel",
        geometry_parameters: Mapping[str, float] | None = None,
        geometry_vectors: torch.Tensor | None = None,
        object_geometry: dict[str, Any] | None = None,
        projection_geometry: dict[str, Any] | None = None,
        is_2d: bool | None = None,
        normalize: bool | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> None:
        if img_size is not None and (isinstance(img_size, (str, bytes)) or not hasattr(img_size, "__len__")):
            raise TypeError(f"img_size must be (slices, rows, cols), got {img_size!r}")
        if is_2d or (img_size is not None and len(tuple(img_size)) == 2):
            raise ValueError("img_size: 2D geometries are not served by unrolled3d (cone-beam 3D only); "
                             "use deepinv.physics.Tomography for 2D")
        if geometry_type != "conebeam" and projection_geometry is None:
            raise ValueError(f"geometry_type={geometry_type!r} is not supported: unrolled3d's projector is "
                             "cone-beam; pass geometry_type='conebeam'")
        if img_size is None and object_geometry is None:
            raise ValueError("img_size (slices, rows, cols) is required (or an ASTRA object_geometry)")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if normalize is None:
            warnings.warn("The default value of `normalize` is not specified and will be automatically set to "
                          "`True`. Set `normalize` explicitly to `True` or `False` to avoid this warning.")
            normalize = True
        geometry = _geometry_from_astra(
            object_geometry, projection_geometry, img_size, angles=angles, n_detector_pixels=n_detector_pixels,
            angular_range=angular_range, detector_spacing=detector_spacing, pixel_spacing=pixel_spacing,
            bounding_box=bounding_box, geometry_parameters=geometry_parameters, geometry_vectors=geometry_vectors,
        )
        super().__init__(geometry, normalize=normalize, device=device, layout="astra", **kwargs)
        self.img_size = tuple(geometry.vol_shape)  # deepinv's TomographyWithAstra: (slices, rows, cols)
        self.is_2d = False
        self.n_detector_pixels = geometry.det_shape
        self._vector_input = geometry_vectors is not None or (
            projection_geometry is not None and projection_geometry.get("type") == "cone_vec")

    @classmethod
    def from_astra_geometry(cls, object_geometry: dict[str, Any], projection_geometry: dict[str, Any],
                            is_2d: bool = False, normalize: bool | None = None,
                            device: torch.device | str | None = None, **kwargs) -> "TomographyWithAstra":
        """Build from ASTRA geometry dicts (``astra.create_vol_geom`` / ``create_proj_geom``)."""
        return cls(object_geometry=object_geometry, projection_geometry=projection_geometry, is_2d=is_2d,
                   normalize=normalize, device=device, **kwargs)

    # deepinv's defaults: A_dagger is least squares unless fbp=True
    def A_dagger(self, y: torch.Tensor, fbp: bool | None = False, **kwargs) -> torch.Tensor:
        """Least squares (deepinv's solver, keywords pass through) or, with ``fbp=True``, FDK
        (``fbp=None``: :meth:`ConeBeamCT.A_dagger`'s choice, FDK unless a solver keyword is given)."""
        return super().A_dagger(y, fbp=fbp, **kwargs)

    def A_dagger_patch(self, y: torch.Tensor, offset, shape) -> torch.Tensor:
        """``S A_dagger(y)`` with deepinv's default (least squares, a whole-volume solve)."""
        sl = tuple(slice(o, o + p) for o, p in zip(offset, shape))
        return self.A_dagger(y)[(Ellipsis,) + sl]

    # ------------------------------------------------------------------ deepinv's read-only properties
    @property
    def geometry_type(self) -> str:
        return "conebeam"

    @property
    def num_angles(self) -> int:
        return self.geometry.n_views

    @property
    def angles(self) -> torch.Tensor | None:
        """View angles in degrees (deepinv's sign), or ``None`` for vector geometries."""
        if self._vector_input or self.geometry.trajectory is None:
            return None
        return -torch.rad2deg(torch.tensor(self.geometry.trajectory.angles, dtype=torch.float64))

    @property
    def angular_range(self) -> tuple[float, float] | None:
        a = self.angles
        return None if a is None else (float(a.min()), float(a.max()))

    @property
    def geometry_vectors(self) -> torch.Tensor | None:
        """The ``(n_views, 12)`` ``cone_vec`` rows, or ``None`` for angle geometries (as deepinv)."""
        return torch.from_numpy(np.array(self.geometry.vectors)) if self._vector_input else None

    @property
    def detector_spacing(self) -> tuple[float, float]:
        """``(vertical, horizontal)`` pixel pitch (of view 0 for vector geometries)."""
        u, v = self.geometry.vectors[0, 6:9], self.geometry.vectors[0, 9:12]
        return float(np.linalg.norm(v)), float(np.linalg.norm(u))

    @property
    def pixel_spacing(self) -> tuple[float, float, float]:
        """Voxel ``(x, y, z)`` size."""
        sz, sy, sx = self.geometry.voxel_size
        return sx, sy, sz

    @property
    def bounding_box(self) -> tuple[float, ...]:
        """``(min_x, max_x, min_y, max_y, min_z, max_z)``."""
        out: list[float] = []
        for n, s, o in zip(reversed(self.geometry.vol_shape), reversed(self.geometry.voxel_size),
                           reversed(self.geometry.vol_offset)):
            out += [o - 0.5 * n * s, o + 0.5 * n * s]
        return tuple(out)
