r"""The package's one noise convention, and conversions from the others.

**Noise levels are standard deviations of Gaussian noise on the normalised measurements**
``A x / ||A||`` (the units of ``ConeBeamCT(geometry, normalize=True)``, where ``||A^T A|| = 1``):
``[train] noise_std`` of a training configuration, ``unrolled3d simulate --noise``, the noise a
model file records (``[train] noise_std``), the benchmarks' ``--noise``, and deepinv's
``GaussianNoise(sigma)`` on a normalised physics all mean this. So ``simulate --noise 0.02`` makes
the noise a model trained with ``noise_std = 0.02`` saw.

On raw line integrals (the unnormalised projector, ``ConeBeamCT(geometry)``, a measurements
file) the same noise has standard deviation ``noise_std * ||A||`` (:func:`raw_noise_std`).

The other convention, which ``simulate --noise`` followed before: a fraction of the largest line
integral, ``relative * max(y)`` on raw line integrals; ``simulate --noise-relative`` keeps it, and
:func:`relative_to_noise_std` converts (0.02 relative is 0.0068 normalised for the 48^3
Shepp-Logan scan of 30 views).

Examples
--------
>>> from unrolled3d.physics.noise import raw_noise_std, relative_to_noise_std
>>> round(raw_noise_std(0.02, operator_norm=37.57), 4)           # on raw line integrals
0.7514
>>> round(relative_to_noise_std(0.02, y_max=12.7, operator_norm=37.57), 4)
0.0068
"""
from __future__ import annotations

from typing import Any

from .._validation import real

__all__ = ["raw_noise_std", "relative_to_noise_std", "scan_noise", "NOISE_CONVENTION"]

#: the convention, in words (recorded with simulated measurements)
NOISE_CONVENTION = "standard deviation on the normalised measurements A x / ||A||"


def raw_noise_std(noise_std: float, operator_norm: float) -> float:
    """The standard deviation on raw line integrals of noise ``noise_std`` on normalised
    measurements: ``noise_std * ||A||``."""
    return real("noise_std", noise_std, nonnegative=True) * real("operator_norm", operator_norm, positive=True)


def relative_to_noise_std(relative: float, y_max: float, operator_norm: float) -> float:
    """The package's ``noise_std`` of noise ``relative * y_max`` on raw line integrals (the
    convention ``simulate --noise`` followed before): ``relative * y_max / ||A||``."""
    return (real("relative", relative, nonnegative=True) * real("y_max", y_max, nonnegative=True)
            / real("operator_norm", operator_norm, positive=True))


def scan_noise(geometry: Any, y_max: float, noise_std: float | None = None, relative: float | None = None,
               progress: bool = True) -> tuple[float, dict[str, Any]]:
    """The standard deviation on raw line integrals of a simulated scan's noise, and what a
    measurements file records of it.

    Parameters
    ----------
    geometry : ConeBeamGeometry
        the scan (its ``||A||`` is taken from the cache or estimated once, if needed).
    y_max : float
        the largest raw line integral of the noiseless scan.
    noise_std : float, optional
        the noise in the package's convention (module docstring).
    relative : float, optional
        or as a fraction of ``y_max`` (the former ``simulate --noise``); give one of the two.

    Returns
    -------
    (float, dict)
        the raw standard deviation, and ``{"noise_std", "noise_relative", "noise_convention",
        "operator_norm"}`` (``noise_std`` and ``operator_norm`` ``None`` where ``||A||`` is not
        known and was not needed: relative or no noise).
    """
    from .norm import cached_operator_norm, known_operator_norm, norm_record

    if (noise_std is None) == (relative is None):
        raise ValueError("give the noise as noise_std (on normalised measurements) or as relative (to the largest "
                         "line integral), one of the two")
    y_max = real("y_max", y_max, nonnegative=True)
    if relative is not None:
        raw = real("relative", relative, nonnegative=True) * y_max
        norm = known_operator_norm(geometry)
    else:
        noise_std = real("noise_std", noise_std, nonnegative=True)
        if noise_std > 0:
            exact = cached_operator_norm(geometry, progress=progress)
            norm, raw = exact, noise_std * exact
        else:
            norm, raw = known_operator_norm(geometry), 0.0
    record = {"noise_std": raw / norm if norm else None, "noise_relative": raw / y_max if y_max > 0 else None,
              "noise_convention": NOISE_CONVENTION, "operator_norm": norm_record(geometry, norm) if norm else None}
    return raw, record
