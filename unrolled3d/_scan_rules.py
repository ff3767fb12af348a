"""The rules of a reconstruction with a trained model, shared by :mod:`unrolled3d.api` in memory and streamed.

What a scan is (a geometry or a physics, and so the units of its measurements), measurements
checked and brought to the ``"views"`` layout, the scale check against the model's training
scans, the approximation ``H`` of a call, and :class:`Reconstruction`, what a call returns.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .geometry import ConeBeamGeometry

if TYPE_CHECKING:
    from .pretrained import PretrainedModel

__all__ = ["Reconstruction", "ScaleCheck", "ScaleMismatchWarning", "METHODS", "SCALE_CHECKS", "WARN_FACTOR",
           "ERROR_FACTOR", "Scan", "scan_of", "measurements", "judge", "note", "normal_operator", "normalised_physics",
           "in_physics_units", "shaped"]

METHODS = ("unrolled", "fdk")
#: what to do about a scan of another scale than the training scans'
SCALE_CHECKS = ("check", "warn", "rescale", "ignore")
#: a scan this many times brighter or darker than the training scans gets a warning
WARN_FACTOR = 3.0
#: and this many times an error (``scale_check="check"``): the output would be meaningless
ERROR_FACTOR = 10.0


class ScaleMismatchWarning(UserWarning):
    """Measurements of another scale than the model's training scans (:func:`check_measurement_scale`).

    Examples
    --------
    >>> import warnings
    >>> from unrolled3d.api import ScaleMismatchWarning
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("4.2x the training scale", ScaleMismatchWarning)
    >>> caught[0].category.__name__
    'ScaleMismatchWarning'
    """


@dataclasses.dataclass
class ScaleCheck:
    """How a scan's scale compares with the model's training scans, and what was done about it.

    Attributes
    ----------
    status : str
        ``"ok"``, ``"warned"``, ``"rescaled"`` or ``"unchecked"`` (no recorded training scale,
        or ``scale_check="ignore"``).
    ratio : float or None
        the scan's FDK percentile over the training scans' (1: the same scale).
    factor : float
        applied to the measurements (``"rescaled"``: ``1 / ratio``; else 1); the output is
        divided by it.
    percentile : float or None
        the scan's FDK percentile, in the model's units.
    message : str
        what was found, in words.

    Examples
    --------
    >>> from unrolled3d.api import ScaleCheck
    >>> ScaleCheck("ok", 1.1, 1.0, 1.05, "").to_dict()["status"]
    'ok'
    """

    status: str
    ratio: float | None
    factor: float
    percentile: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Reconstruction:
    """What :func:`reconstruct_detailed` did: the volume and how it was made.

    Attributes
    ----------
    volume : torch.Tensor or ArrayStore
        the reconstruction, shaped as the input (``[B, C, D, H, W]``, or ``(D, H, W)`` for
        ``(n_views, rows, cols)`` measurements); a store for a streamed reconstruction.
    method : str
        ``"unrolled"`` or ``"fdk"``.
    units : str
        the volume's units (``"input"``: those of the measured volume; ``"HU"`` for a ``"hu"``
        model with ``output_units="model"``).
    seconds : float
        the reconstruction's time (the plan's trial runs excluded).
    plan : dict or None
        the inference plan (:class:`unrolled3d.budget.InferencePlan` as a dict; patch and sweeps).
    scale : ScaleCheck or None
        the scale check (``None`` for FDK).
    normalization : dict or None
        the model's intensity normalisation.
    operator_norm : float or None
        ``||A||`` of the scan (the unrolled method).
    peak_bytes : int or None
        the measured peak memory of the reconstruction (``measure_memory=True``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.api import Reconstruction
    >>> Reconstruction(torch.zeros(2, 2, 2), "fdk", "input", 0.1).to_dict()["method"]
    'fdk'
    """

    volume: Any
    method: str
    units: str
    seconds: float
    plan: dict[str, Any] | None = None
    scale: ScaleCheck | None = None
    normalization: dict[str, Any] | None = None
    operator_norm: float | None = None
    peak_bytes: int | None = None

    def _affine(self) -> tuple[float, float]:
        """``(a, c)``: the volume's units are ``a v + c`` of the input's ``v`` (``"hu"``: HU)."""
        if self.units == "input" or self.normalization is None:
            return 1.0, 0.0
        from .data.normalization import IntensityNormalization

        norm = IntensityNormalization.from_dict(self.normalization)
        c = float(norm.output(0.0))
        return float(norm.output(1.0)) - c, c

    @property
    def model_units(self) -> str | None:
        """The units of the model's own output (``"HU"`` for a ``"hu"`` model), ``None`` for FDK."""
        if self.normalization is None:
            return None
        from .data.normalization import IntensityNormalization

        return IntensityNormalization.from_dict(self.normalization).output_units

    def in_model_units(self) -> Any:
        """The volume (a tensor) in the model's output units (unchanged for FDK and calibrated models)."""
        if self.units != "input" or self.normalization is None:
            return self.volume
        from .data.normalization import IntensityNormalization

        return IntensityNormalization.from_dict(self.normalization).output(self.volume)

    def to_input_units(self, v: Any) -> Any:
        """Values in this reconstruction's units (an array or tensor) back in the input's units."""
        a, c = self._affine()
        return v if (a, c) == (1.0, 0.0) else (v - c) / a

    def to_dict(self) -> dict[str, Any]:
        """Everything but the volume, as plain values (the command line's JSON)."""
        out = {k: getattr(self, k) for k in ("method", "units", "plan", "normalization", "operator_norm",
                                              "peak_bytes")}
        out["seconds"] = round(self.seconds, 3)
        out["scale_check"] = None if self.scale is None else self.scale.to_dict()
        return out


# ---------------------------------------------------------------------------------- the scan
@dataclasses.dataclass
class Scan:
    """The geometry, and the units, layout and device of measurements given with it (:func:`scan_of`).

    Examples
    --------
    >>> from unrolled3d._scan_rules import scan_of
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> g = standard_cone_beam(8, 4)
    >>> scan_of(g).norm is None, scan_of(ConeBeamCT(g, normalize=True, norm=2.5)).norm
    (True, 2.5)
    """

    geometry: ConeBeamGeometry
    norm: float | None  # ||A|| the given measurements are divided by (a normalised physics), else None
    layout: str
    device: torch.device | None
    fdk_window: str


def scan_of(geometry_or_physics: Any) -> Scan:
    """The scan of a geometry (raw line integrals) or of a ConeBeamCT (its units, layout, device)."""
    from .physics import ConeBeamCT
    from .protocols import CarriesNormal

    if isinstance(geometry_or_physics, CarriesNormal):  # the paper's wrapper: its exact physics
        geometry_or_physics = geometry_or_physics.physics
    if isinstance(geometry_or_physics, ConeBeamGeometry):
        return Scan(geometry_or_physics, None, "views", None, "ram-lak")
    if isinstance(geometry_or_physics, ConeBeamCT):
        p = geometry_or_physics
        if hasattr(p, "window"):
            raise TypeError("geometry_or_physics is a patch operator (ConeBeamPatch): give the full scan")
        given = float(p.operator_norm) if p.normalize else None
        return Scan(p.geometry, given, p.layout, p.operator_norm.device, p.fdk_window)
    raise TypeError(f"geometry_or_physics must be a ConeBeamGeometry or a ConeBeamCT physics, got "
                    f"{type(geometry_or_physics).__name__}")


def measurements(y: Any, scan: Scan, device: torch.device | None) -> tuple[torch.Tensor, bool]:
    """``y`` as ``[B, C, n_views, rows, cols]`` float32 (the ``"views"`` layout); whether it was 3-D."""
    import numpy as np

    from ._validation import check_finite

    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor, a NumPy array, a store or a path to a measurements store, got "
                        f"{type(y).__name__}")
    if not (y.is_floating_point() or y.dtype in (torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"y must hold real numbers, got {y.dtype}")
    three_d = y.ndim == 3
    if three_d:
        y = y[None, None]
    views, rows, cols = scan.geometry.sino_shape
    expected = (views, rows, cols) if scan.layout == "views" else (rows, views, cols)
    if y.ndim != 5 or tuple(y.shape[2:]) != expected or y.numel() == 0:
        what = "[B, C, n_views, rows, cols]" if scan.layout == "views" else "[B, C, rows, n_views, cols] ('astra')"
        raise ValueError(f"y has shape {tuple(y.shape)}, the geometry's measurements are {what} = "
                         f"[B, C, {', '.join(map(str, expected))}] (or without B, C)")
    if scan.layout != "views":
        y = y.transpose(2, 3)
    y = y.to(device=device or scan.device or y.device, dtype=torch.float32).contiguous()
    check_finite(y, "y")
    return y, three_d


def shaped(x: torch.Tensor, three_d: bool) -> torch.Tensor:
    return x[0, 0] if three_d else x


def note(show: bool, text: str) -> None:
    """A line about what is being done, like a progress bar's (stderr)."""
    if show:
        print(f"{text} ...", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- the scale check
def judge(percentile: float, model: PretrainedModel, action: str) -> ScaleCheck:
    """Compare a scan's FDK percentile (model units) with the training scans' (see :data:`SCALE_CHECKS`)."""
    training = model.training_scale if action != "ignore" else None
    if training is None:
        why = "scale_check='ignore'" if action == "ignore" else "the model file records no training scale"
        return ScaleCheck("unchecked", None, 1.0, percentile, why)
    ratio = training.ratio(percentile) if percentile > 0 else 0.0
    off = max(ratio, 1 / ratio) if ratio > 0 else float("inf")
    what = model.name or model.path.name
    text = (f"the measurements are {_times(ratio)} the scale {what} was trained on (the {training.percentile:g}th "
            f"percentile of their FDK is {percentile:.4g} in the model's units, the training scans' {training.fdk:.4g})")
    if off <= WARN_FACTOR:
        return ScaleCheck("ok", ratio, 1.0, percentile, text)
    if action == "rescale" and ratio > 0:
        warnings.warn(f"{text}: rescaled to the training scale (scale_check='rescale'), the output scaled back",
                      ScaleMismatchWarning, stacklevel=3)
        return ScaleCheck("rescaled", ratio, 1.0 / ratio, percentile, text)
    hint = ("measurements of a normalised physics given as raw line integrals (or the reverse), a volume in other "
            "units, or the wrong model? scale_check='rescale' brings them to the training scale, 'ignore' skips this")
    if action == "check" and off > ERROR_FACTOR:
        raise ValueError(f"{text}: the reconstruction would be meaningless ({hint})")
    warnings.warn(f"{text}: expect a poor reconstruction ({hint})", ScaleMismatchWarning, stacklevel=3)
    return ScaleCheck("warned", ratio, 1.0, percentile, text)


def _times(ratio: float) -> str:
    if ratio <= 0:
        return "zero times"
    return f"{ratio:.3g} times" if ratio >= 1 else f"1/{1 / ratio:.3g} of"


def normalised_physics(scan: Scan, norm: float | None, device: torch.device, progress: bool) -> Any:
    from .physics import ConeBeamCT

    known = scan.norm if scan.norm is not None else norm
    return ConeBeamCT(scan.geometry, normalize=True, norm=known, device=device, fdk_window=scan.fdk_window,
                      progress=progress)


def in_physics_units(y: torch.Tensor, scan: Scan, physics: Any) -> torch.Tensor:
    """Measurements of the scan in the normalised physics' units: as given for a normalised
    physics (same ``||A||``), else raw line integrals divided by ``||A||``."""
    return y if scan.norm is not None else physics.normalize_measurements(y)


def normal_operator(normal: Any, physics: Any, device: torch.device) -> Any:
    """``normal``: ``None``, an approximation ``H``, or the path of a fitted one."""
    if normal is None:
        return None
    H, name = normal, "normal"
    if isinstance(normal, (str, os.PathLike)):
        from .normal import load_normal

        H, name = load_normal(normal, physics, device=device), f"normal {normal}"  # refused for another geometry
    shape = getattr(H, "img_shape", None)
    if shape is not None and tuple(shape) != tuple(physics.img_shape):
        raise ValueError(f"{name} is for a {tuple(shape)} volume, the measurements are of a "
                         f"{tuple(physics.img_shape)} volume")
    return H
