r"""Where a volume lies in space: its voxel size and its affine, carried from an input to the outputs.

A volume file may say more than its voxel size: a NIfTI file's qform/sform place the array in a
scanner or template frame (origin, axis directions, e.g. an LPS volume whose origin is at
``(90, 120, -50)`` mm), and HDF5/Zarr files may carry the same as attributes. :class:`Spatial`
holds it in one convention, NIfTI's:

* ``affine`` is the 4 x 4 matrix mapping the voxel index ``(i, j, k, 1)`` to world coordinates in
  mm, where ``i`` is the **x** index (W, the fastest axis of the package's ``(D, H, W)`` arrays),
  ``j`` the y index (H) and ``k`` the z index (D): ``world = affine @ (x, y, z, 1)``;
* ``voxel_size`` is ``(sz, sy, sx)`` in mm, the package's order (for an axis-aligned affine
  ``diag(sx, sy, sz, 1)`` plus a translation; in general the lengths of the first three columns);
* ``code`` is the NIfTI xform code of the affine's frame: 0 unknown (the affine only states the
  voxel size), 1 scanner, 2 aligned, 3 Talairach, 4 MNI 152, 5 another template.

``simulate --volume`` records the input's :class:`Spatial` in the measurements (``meta["spatial"]``)
and ``reconstruct`` writes it back: NIfTI with that affine and code, and the affine as an
attribute or sidecar entry of the other formats (:func:`unrolled3d.io.write_volume`).

Examples
--------
>>> from unrolled3d.io.spatial import Spatial
>>> s = Spatial.from_affine([[-0.8, 0, 0, 90], [0, -0.8, 0, 120], [0, 0, 2, -50], [0, 0, 0, 1]], code=1)
>>> s.voxel_size, s.origin
((2.0, 0.8, 0.8), (90.0, 120.0, -50.0))
>>> Spatial.from_dict(s.to_dict()) == s
True
>>> Spatial.from_voxel_size(0.5).is_default
True
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Spatial", "FRAME_CODES"]

#: NIfTI xform codes and the frames they name
FRAME_CODES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}

Affine = tuple[tuple[float, float, float, float], ...]


def _voxel_size(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        vs = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{where} must be a number or 3 numbers (sz, sy, sx) in mm, got {value!r}") from None
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"{where} must be 3 finite positive numbers (sz, sy, sx) in mm, got {value!r}")
    return vs  # a 3-tuple: its length is checked above


def _affine(value: Any, where: str) -> Affine:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{where} must be a 4 x 4 matrix of numbers, got {value!r}"[:300]) from None
    if a.shape != (4, 4):
        raise ValueError(f"{where} must be a 4 x 4 matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{where} holds NaN or infinite values")
    if not np.array_equal(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{where}: the last row of an affine must be (0, 0, 0, 1), got {a[3].tolist()}")
    norms = np.abs(a[:3, :3]).max(axis=0)  # not the 2-norm: squares of tiny entries underflow
    # independent columns, whatever their scale (a denormal voxel size is a voxel size, not a singularity)
    if not np.all(norms > 0) or abs(np.linalg.det(a[:3, :3] / norms)) < 1e-9:
        raise ValueError(f"{where} is singular (its 3 x 3 part maps the volume onto a plane)")
    return tuple((float(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in a)  # 4 x 4, checked above


@dataclasses.dataclass(frozen=True)
class Spatial:
    """A volume's voxel size and affine (see the module docstring for the conventions).

    Parameters
    ----------
    voxel_size : (float, float, float)
        ``(sz, sy, sx)`` in mm.
    affine : 4 x 4 numbers
        voxel index ``(x, y, z, 1)`` to world mm (NIfTI's convention).
    code : int
        NIfTI xform code of the affine's frame (0 to 5, :data:`FRAME_CODES`).

    Raises
    ------
    ValueError, TypeError
        A voxel size that is not 3 positive numbers, an affine that is not a finite invertible
        4 x 4 matrix with last row ``(0, 0, 0, 1)``, a code outside 0-5.

    Examples
    --------
    >>> from unrolled3d.io import Spatial
    >>> s = Spatial((2.0, 0.5, 0.5), [[0.5, 0, 0, -10], [0, 0.5, 0, -20], [0, 0, 2, 5], [0, 0, 0, 1]], code=2)
    >>> s.origin, s.axis_aligned, s.is_default
    ((-10.0, -20.0, 5.0), True, False)
    >>> Spatial((1.0, 1.0, 1.0), [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    Traceback (most recent call last):
        ...
    ValueError: Spatial.affine is singular (its 3 x 3 part maps the volume onto a plane)
    """

    voxel_size: tuple[float, float, float]
    affine: Affine
    code: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size", _voxel_size(self.voxel_size, "Spatial.voxel_size"))
        object.__setattr__(self, "affine", _affine(self.affine, "Spatial.affine"))
        if isinstance(self.code, bool) or not isinstance(self.code, (int, np.integer)) or int(self.code) not in FRAME_CODES:
            raise ValueError(f"Spatial.code must be a NIfTI xform code {sorted(FRAME_CODES)}, got {self.code!r}")
        object.__setattr__(self, "code", int(self.code))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_voxel_size(cls, voxel_size: float | Sequence[float]) -> "Spatial":
        """Voxels of ``voxel_size`` ``(sz, sy, sx)`` mm and nothing more: ``diag(sx, sy, sz, 1)``, code 0."""
        sz, sy, sx = _voxel_size(voxel_size, "voxel_size")
        return cls((sz, sy, sx), tuple(tuple(r) for r in np.diag([sx, sy, sz, 1.0]).tolist()), 0)

    @classmethod
    def from_affine(cls, affine: Any, code: int = 0, voxel_size: Sequence[float] | None = None) -> "Spatial":
        """From an affine; the voxel size defaults to the lengths of its first three columns."""
        a = np.asarray(_affine(affine, "affine"))
        if voxel_size is None:
            sx, sy, sz = (float(v) for v in np.linalg.norm(a[:3, :3], axis=0))
            voxel_size = (sz, sy, sx)
        return cls(tuple(voxel_size), a.tolist(), code)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ views
    @property
    def matrix(self) -> np.ndarray:
        """The affine as a float64 array ``(4, 4)``."""
        return np.array(self.affine, dtype=np.float64)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World coordinates ``(x, y, z)`` of the voxel index ``(0, 0, 0)`` in mm."""
        return tuple(float(v) for v in self.matrix[:3, 3])  # type: ignore[return-value]

    @property
    def is_default(self) -> bool:
        """Whether the affine says nothing beyond the voxel size (``diag(sx, sy, sz, 1)``, code 0)."""
        return self == Spatial.from_voxel_size(self.voxel_size)

    @property
    def axis_aligned(self) -> bool:
        """Whether the affine is diagonal with positive entries (a translation aside): what formats
        without a full affine (ImageJ TIFF) can state with their origin."""
        m = self.matrix[:3, :3]
        return bool(np.all(m == np.diag(np.diag(m))) and np.all(np.diag(m) > 0))

    def with_voxel_size(self, voxel_size: Sequence[float]) -> "Spatial":
        """The same frame with the voxel size checked against ``voxel_size`` (relative 1e-5: a
        float32 file's precision); ``ValueError`` when they differ."""
        vs = _voxel_size(voxel_size, "voxel_size")
        if not np.allclose(vs, self.voxel_size, rtol=1e-5, atol=0.0):
            raise ValueError(f"the recorded affine is for {self.voxel_size} mm voxels, the volume has {vs}")
        return self

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"voxel_size_zyx_mm", "affine_xyz", "frame_code"}``."""
        return {"voxel_size_zyx_mm": list(self.voxel_size), "affine_xyz": [list(r) for r in self.affine],
                "frame_code": self.code}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Spatial":
        """The inverse of :meth:`to_dict` (``ValueError``/``TypeError`` naming the bad entry)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a spatial record must be a JSON object, got {type(d).__name__}")
        missing = {"voxel_size_zyx_mm", "affine_xyz"} - set(d)
        if missing:
            raise ValueError(f"a spatial record needs {sorted(missing)}")
        return cls(d["voxel_size_zyx_mm"], d["affine_xyz"], d.get("frame_code", 0))
