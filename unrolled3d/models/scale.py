r"""The scale of a model's training scans, recorded in its file and compared with new measurements.

An unrolled network is not scale invariant: trained on volumes whose bright tissue is about 1, it
turns measurements 40 times larger (an un-normalised scan given to a normalised physics, a volume
in other units) into meaningless output (-6 dB instead of 42 dB) without an error. A model file
therefore records what its training scans looked like, in the units the network saw them
(:class:`TrainingScale`), and :func:`unrolled3d.api.check_measurement_scale` compares a new scan
with it.

The statistic compared is the ``percentile``-th percentile (99.5 by default) of the FDK start
point ``x0 = A_dagger(y)`` of the normalised measurements, after the model's intensity
normalisation: FDK undoes ``||A||``, so it is in the volume's units and does not depend on the
number of views, the detector or the volume size, unlike the measurements themselves (a
normalised line integral grows about as ``sqrt(n / n_views)`` with the volume edge ``n``). The
percentiles of the training volumes and of their normalised measurements are recorded beside it,
for reference.

Examples
--------
>>> from unrolled3d.data import PhantomDataset
>>> from unrolled3d.models.scale import measure_training_scale
>>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
>>> physics = ConeBeamCT(standard_cone_beam(16, 8), normalize=True, progress=False)
>>> scale = measure_training_scale(PhantomDataset(4, 16), physics, noise_std=0.02, samples=2)
>>> scale.samples, 0.3 < scale.fdk / scale.volume < 3
(2, True)
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Mapping

import torch

from .._validation import integer, real

__all__ = ["TrainingScale", "measure_training_scale", "percentile_of", "SCALE_PERCENTILE", "SCALE_SAMPLES",
           "SAMPLE_VOXELS"]

#: the percentile of the volumes compared (the brightest tissue, not single outlier voxels)
SCALE_PERCENTILE = 99.5
#: training volumes measured when a model file is written
SCALE_SAMPLES = 16
#: voxels of the regular sub-sample a percentile is taken from (as the percentile normalisation's)
SAMPLE_VOXELS = 2**21


def percentile_of(x: torch.Tensor, q: float = SCALE_PERCENTILE) -> float:
    """The ``q``-th percentile of ``x`` (any shape), from a regular sub-sample of at most
    :data:`SAMPLE_VOXELS` values (every ``k``-th of the flattened tensor)."""
    flat = x.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE_VOXELS)
    return float(torch.quantile(flat[::step].double().cpu(), q / 100.0))


@dataclasses.dataclass(frozen=True)
class TrainingScale:
    """What a model's training scans looked like, in the units its network saw them.

    Parameters
    ----------
    fdk : float
        median over the measured training volumes of the ``percentile``-th percentile of the
        FDK start point of their noisy normalised measurements (the statistic checked).
    fdk_range : tuple of float
        its smallest and largest value over those volumes.
    volume : float
        median of the same percentile of the training volumes themselves.
    measurements : float
        median of the same percentile of ``|y|``, the noisy normalised measurements
        ``A x / ||A|| + noise`` of the training scan (depends on the scan: reference only).
    noise_std : float
        the training noise's standard deviation on the normalised measurements.
    percentile : float
        which percentile (default :data:`SCALE_PERCENTILE`).
    samples : int
        how many training volumes were measured.

    Examples
    --------
    >>> from unrolled3d.models.scale import TrainingScale
    >>> s = TrainingScale(fdk=1.02, fdk_range=(0.8, 1.3), volume=1.0, measurements=0.51, noise_std=0.02, samples=16)
    >>> TrainingScale.from_dict(s.to_dict()) == s
    True
    >>> round(s.ratio(40.8), 2)      # a scan 40 times brighter than the training scans
    40.0
    """

    fdk: float
    fdk_range: tuple[float, float]
    volume: float
    measurements: float
    noise_std: float
    percentile: float = SCALE_PERCENTILE
    samples: int = SCALE_SAMPLES

    def __post_init__(self) -> None:
        for name in ("fdk", "volume", "measurements"):
            object.__setattr__(self, name, real(f"TrainingScale.{name}", getattr(self, name), positive=True))
        lo, hi = (real("TrainingScale.fdk_range", v, positive=True) for v in self.fdk_range)
        object.__setattr__(self, "fdk_range", (lo, hi))
        object.__setattr__(self, "noise_std", real("TrainingScale.noise_std", self.noise_std, nonnegative=True))
        q = real("TrainingScale.percentile", self.percentile, positive=True)
        if q > 100:
            raise ValueError(f"TrainingScale.percentile must be in (0, 100], got {q!r}")
        object.__setattr__(self, "percentile", q)
        object.__setattr__(self, "samples", integer("TrainingScale.samples", self.samples, 1))

    def ratio(self, fdk_percentile: float) -> float:
        """How many times the training scale a scan is, from its FDK's percentile (same units)."""
        return float(fdk_percentile) / self.fdk

    def to_dict(self) -> dict[str, Any]:
        """What a model file records (``config["training_scale"]``)."""
        d = dataclasses.asdict(self)
        d["fdk_range"] = list(self.fdk_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainingScale":
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a training scale must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"a training scale takes {sorted(names)}, got also {sorted(extra)}")
        rng = d.get("fdk_range")
        if not isinstance(rng, (list, tuple)) or len(rng) != 2:
            raise ValueError(f"training scale 'fdk_range' must be two numbers, got {rng!r}")
        return cls(**{**d, "fdk_range": tuple(rng)})


def measure_training_scale(dataset: Any, physics: Any, noise_std: float, samples: int = SCALE_SAMPLES,
                           seed: int = 0, percentile: float = SCALE_PERCENTILE) -> TrainingScale:
    """The :class:`TrainingScale` of training volumes scanned as in training.

    Parameters
    ----------
    dataset
        the training volumes ``(C, D, H, W)`` (items drawn at ``samples`` evenly spaced indices:
        datasets of random draws give the same item for an index, so the training's own draws
        are not disturbed).
    physics : ConeBeamCT
        the normalised training scan (``normalize=True``).
    noise_std : float
        the training noise on the normalised measurements.
    samples : int
        how many volumes to measure.
    seed : int
        seed of the noise drawn here.
    percentile : float
        the percentile recorded.
    """
    samples = min(integer("samples", samples, 1), len(dataset))
    noise_std = real("noise_std", noise_std, nonnegative=True)
    gen = torch.Generator().manual_seed(integer("seed", seed, 0))
    vols, fdks, meas = [], [], []
    with torch.no_grad():
        for k in range(samples):
            x = dataset[k * len(dataset) // samples]
            x = (x if x.ndim == 5 else x.reshape(1, -1, *x.shape[-3:])).to(torch.float32)
            y = physics.A(x)
            y = y + noise_std * torch.randn(y.shape, generator=gen, dtype=y.dtype)
            x0 = physics.A_dagger(y)
            vols.append(percentile_of(x, percentile))
            fdks.append(percentile_of(x0, percentile))
            meas.append(percentile_of(y.abs(), percentile))
    tiny = math.ulp(1.0)  # an all-air sample must not record a zero scale
    return TrainingScale(fdk=max(statistics.median(fdks), tiny), fdk_range=(max(min(fdks), tiny), max(max(fdks), tiny)),
                         volume=max(statistics.median(vols), tiny), measurements=max(statistics.median(meas), tiny),
                         noise_std=noise_std, percentile=percentile, samples=samples)
