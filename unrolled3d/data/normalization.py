r"""Intensity normalisation of training volumes, stored in the model file and applied at inference.

A network trained on volumes in some units reconstructs volumes in those units; a model file
therefore records how its training volumes were scaled, and ``unrolled3d reconstruct`` applies
the same (and its inverse to the output where that makes sense). Three kinds, each an affine
map ``u = a v + b`` of the file's values ``v`` to the training units ``u``:

================  ==========================================================================
``attenuation``   the files already hold linear attenuation in 1/mm: ``u = v``. Measurements
                  are line integrals of it, so the reconstruction is attenuation too.
``hu``            the files hold Hounsfield units: ``u = mu_water (1 + v / 1000)`` in 1/mm,
                  clipped at 0 (air is -1000 HU; the -1024 or -2000 HU padding of scanners
                  outside their field of view would otherwise be negative attenuation).
                  ``reconstruct`` writes its output back in HU: ``1000 (u / mu_water - 1)``.
``percentile``    per volume, ``u = value * v / p_q(v)``: the ``percentile``-th percentile
                  ``p_q`` of the volume maps to ``value`` (units of unknown scale, e.g. MRI
                  magnitudes or uncalibrated CT). ``p_q`` is computed from a regular
                  sub-sample of at most 2^21 voxels (:meth:`LazyVolume.sample
                  <unrolled3d.io.LazyVolume.sample>`), so the file is never read whole.
                  ``reconstruct`` scales the measurements by ``value / p_q(x_0)``, ``x_0`` their
                  FDK, and the output back by the inverse: it is in the measurements' units.
================  ==========================================================================

Examples
--------
>>> import numpy as np
>>> from unrolled3d.data import IntensityNormalization
>>> hu = IntensityNormalization("hu", mu_water=0.02)
>>> hu.apply(np.array([-1024.0, -1000.0, 0.0, 1000.0]), *hu.affine())    # 1/mm, air and padding at 0
array([0.  , 0.  , 0.02, 0.04], dtype=float32)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import torch

from .._validation import choice, real

__all__ = ["IntensityNormalization", "NORMALIZATIONS", "MU_WATER", "SAMPLE_VOXELS"]

NORMALIZATIONS = ("attenuation", "hu", "percentile")
#: linear attenuation of water in 1/mm at about 70 keV (NIST XCOM: 0.1929 cm^2/g), the default of "hu"
MU_WATER = 0.0193
#: voxels of the regular sub-sample a percentile is computed from (a file is never read whole)
SAMPLE_VOXELS = 2**21
# the parameters each kind takes (the others are refused, so that a setting is never silently ignored)
_PARAMETERS = {"attenuation": (), "hu": ("mu_water",), "percentile": ("percentile", "value")}


@dataclasses.dataclass(frozen=True)
class IntensityNormalization:
    r"""How the values of training volumes map to the units the network learns (module docstring).

    Parameters
    ----------
    kind : str
        ``"attenuation"`` (values in 1/mm, unchanged), ``"hu"`` (Hounsfield units to 1/mm) or
        ``"percentile"`` (per-volume scaling).
    mu_water : float
        ``"hu"`` only: water's attenuation in 1/mm (default :data:`MU_WATER` = 0.0193).
    percentile : float
        ``"percentile"`` only: which percentile, in (0, 100] (default 99).
    value : float
        ``"percentile"`` only: the value it maps to (default 1).

    Examples
    --------
    >>> import numpy as np
    >>> from unrolled3d.data import IntensityNormalization
    >>> norm = IntensityNormalization("percentile", percentile=50.0, value=2.0)
    >>> a, b = norm.affine(np.array([1.0, 4.0, 5.0]))   # median 4 -> 2
    >>> a, b
    (0.5, 0.0)
    >>> norm.to_dict()
    {'kind': 'percentile', 'percentile': 50.0, 'value': 2.0}
    >>> IntensityNormalization.from_dict(norm.to_dict()) == norm
    True
    >>> IntensityNormalization("hu").output(np.array([0.0193])).round(6).tolist()   # back to HU
    [0.0]
    """

    kind: str = "attenuation"
    mu_water: float = MU_WATER
    percentile: float = 99.0
    value: float = 1.0

    def __post_init__(self) -> None:
        choice("normalization", self.kind, NORMALIZATIONS)
        object.__setattr__(self, "mu_water", real("mu_water", self.mu_water, positive=True))
        q = real("percentile", self.percentile, positive=True)
        if q > 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile!r}")
        object.__setattr__(self, "percentile", q)
        object.__setattr__(self, "value", real("value", self.value, positive=True))

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The kind and its own parameters (what the model file stores)."""
        return {"kind": self.kind, **{k: getattr(self, k) for k in _PARAMETERS[self.kind]}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IntensityNormalization":
        """The inverse of :meth:`to_dict`; unknown or foreign keys raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a normalisation must be a mapping with 'kind', got {d!r}")
        if "kind" not in d:
            raise ValueError(f"a normalisation needs 'kind' (one of {', '.join(NORMALIZATIONS)}), got {dict(d)}")
        kind = choice("normalization kind", d["kind"], NORMALIZATIONS)
        extra = set(d) - {"kind", *_PARAMETERS[kind]}
        if extra:
            raise ValueError(f"normalisation {kind!r} takes {list(_PARAMETERS[kind]) or 'no parameters'}, "
                             f"got also {sorted(extra)}")
        return cls(kind, **{k: d[k] for k in _PARAMETERS[kind]})

    # ------------------------------------------------------------------ training
    @property
    def needs_sample(self) -> bool:
        """Whether :meth:`affine` depends on the volume (a percentile), or is fixed."""
        return self.kind == "percentile"

    def affine(self, sample: np.ndarray | None = None) -> tuple[float, float]:
        """``(a, b)`` of ``u = a v + b`` for one volume.

        ``sample`` (any shape; e.g. :meth:`LazyVolume.sample <unrolled3d.io.LazyVolume.sample>`)
        is needed by ``"percentile"`` only; a percentile that is not positive (an empty or
        negative volume) raises ``ValueError``.
        """
        if self.kind == "attenuation":
            return 1.0, 0.0
        if self.kind == "hu":
            return self.mu_water / 1000.0, self.mu_water
        if sample is None:
            raise ValueError("the percentile normalisation needs a sample of the volume")
        p = float(np.percentile(np.asarray(sample, dtype=np.float64), self.percentile))
        if not np.isfinite(p) or p <= 0:
            raise ValueError(f"the {self.percentile:g}th percentile of the volume is {p:g}: it must be positive to "
                             f"scale the volume (choose a higher percentile, or another normalisation)")
        return self.value / p, 0.0

    def apply(self, v: np.ndarray, a: float, b: float) -> np.ndarray:
        """``a v + b`` (clipped at 0 for ``"hu"``), float32, same shape as ``v``."""
        u = np.asarray(v, dtype=np.float32) * np.float32(a) + np.float32(b)
        return np.maximum(u, np.float32(0)) if self.kind == "hu" else u

    # ------------------------------------------------------------------ inference
    @property
    def output_units(self) -> str:
        """The units :meth:`output` gives."""
        return {"attenuation": "1/mm", "hu": "HU", "percentile": "the measurements' units"}[self.kind]

    def measurement_scale(self, x0: torch.Tensor) -> float:
        """The factor that brings measurements into the training units (``"percentile"``: ``value /
        p_q(x0)`` with ``x0`` their FDK, any shape; 1 for the calibrated kinds)."""
        if self.kind != "percentile":
            return 1.0
        flat = x0.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLE_VOXELS)  # the same bound on the sample as in training
        a, _ = self.affine(flat[::step].double().cpu().numpy())
        return a

    def output(self, u):
        """A reconstruction in attenuation (1/mm) or the measurements' units to the output units:
        HU for ``"hu"`` (``1000 (u / mu_water - 1)``), unchanged otherwise. Same type and shape."""
        if self.kind != "hu":
            return u
        return 1000.0 * (u / self.mu_water - 1.0)
