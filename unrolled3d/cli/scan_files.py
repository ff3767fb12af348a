"""What ``simulate`` records of its input volume and what ``reconstruct`` writes back.

* **Units**: a volume in Hounsfield units (air -1000, water 0) projected as it is gives negative
  line integrals. ``simulate --units auto`` (the default) takes a volume whose smallest value is
  below :data:`HU_BELOW` for HU (attenuation is never negative, and HU volumes hold air at -1000
  or padding at -1024/-2000), ``--units hu`` declares it, ``--units attenuation`` projects values
  as they are. HU become attenuation in 1/mm, ``mu_water (1 + v / 1000)`` clipped at 0 (the
  ``"hu"`` intensity normalisation of training), before the projection; the measurements' meta
  records ``units`` and ``mu_water``.
* **Place in space**: the input's :class:`~unrolled3d.io.Spatial` (NIfTI qform/sform, HDF5/Zarr
  attributes) goes into the meta (``spatial``); ``reconstruct`` writes its output with it.
* **Scale**: a model trained on calibrated values (``"attenuation"``, ``"hu"``) is nonlinear in
  its input's scale: measurements orders of magnitude off (a scan scaled by 1e-8 gave PSNR
  -111 dB, exit 0) are refused by :func:`check_model_scale` (a ``"percentile"`` model rescales
  any scan itself).
* **Field of view**: a geometry whose rays all miss the volume (``||A|| = 0``) is named as such,
  not left to surface as a NaN reconstruction.
"""
from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import FileFormatError

__all__ = ["HU_BELOW", "UNITS", "input_units", "hu_to_attenuation", "source_meta", "output_spatial",
           "check_field_of_view", "SCALE_RANGE", "check_model_scale"]

#: a volume whose smallest value is below this is taken for Hounsfield units by ``--units auto``
HU_BELOW = -500.0
#: the choices of ``simulate --units``
UNITS = ("auto", "attenuation", "hu")


def input_units(declared: str, smallest: float) -> str:
    """``"hu"`` or ``"attenuation"``: ``declared``, or for ``"auto"`` what the smallest value says.

    Examples
    --------
    >>> from unrolled3d.cli.scan_files import input_units
    >>> input_units("auto", -1024.0), input_units("auto", 0.0), input_units("hu", 0.0)
    ('hu', 'attenuation', 'hu')
    """
    if declared not in UNITS:
        raise ValueError(f"--units must be one of {', '.join(UNITS)}, got {declared!r}")
    if declared != "auto":
        return declared
    return "hu" if math.isfinite(smallest) and smallest < HU_BELOW else "attenuation"


def hu_to_attenuation() -> Callable[[Any], Any]:
    """The map of HU to attenuation in 1/mm (training's ``"hu"`` normalisation: water at
    :data:`~unrolled3d.data.MU_WATER`, clipped at 0), on float32 arrays or tensors."""
    import torch

    from ..data import IntensityNormalization

    norm = IntensityNormalization("hu")
    a, b = norm.affine()

    def convert(v):
        if isinstance(v, torch.Tensor):
            return torch.from_numpy(norm.apply(v.detach().cpu().numpy(), a, b))
        return norm.apply(np.asarray(v), a, b)

    return convert


def source_meta(args: argparse.Namespace, source: dict[str, Any], units: str, spatial: Any) -> dict[str, Any]:
    """What a measurements file records of where its volume came from: the source, its units (and
    water's attenuation for HU), its place in space, the command (shell-quoted) and the noise."""
    from ..data.normalization import MU_WATER

    meta: dict[str, Any] = {**source, "units": units}
    if units == "hu":
        meta["mu_water"] = MU_WATER
    if spatial is not None:
        meta["spatial"] = spatial.to_dict()
    argv = getattr(args, "argv", None)
    if argv is not None:
        meta["command"] = shlex.join(["unrolled3d", *map(str, argv)])
    return meta


def output_spatial(meta: dict[str, Any], geometry: Any, path: str | Path) -> Any:
    """The :class:`~unrolled3d.io.Spatial` a reconstruction is written with: the one the
    measurements recorded (checked against the geometry's voxel size), else plain voxels."""
    from ..io import Spatial

    raw = meta.get("spatial")
    if raw is None:
        return Spatial.from_voxel_size(geometry.voxel_size)
    try:
        return Spatial.from_dict(raw).with_voxel_size(geometry.voxel_size)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"invalid spatial record in its meta ({exc})") from None


def check_field_of_view(norm: float, path: str | Path) -> None:
    """Refuse a scan whose rays all miss the volume (``norm``, the operator norm, is 0)."""
    if not (math.isfinite(norm) and norm > 0):
        raise FileFormatError(path, f"no ray of the scan crosses the volume (operator norm ||A|| = {norm:g}): the "
                                    f"volume lies outside the geometry's field of view (check its vol_offset and "
                                    f"size)")


#: the 99th percentile of an FDK (1/mm) a calibrated model accepts: the training values lie between
#: water's attenuation (real scans, 0.0193/mm) and the phantoms' dimensionless densities (about 1);
#: two orders of magnitude either side
SCALE_RANGE = (1.93e-4, 100.0)


def check_model_scale(sample: Any, kind: str, path: str | Path) -> None:
    """Refuse measurements whose FDK ``sample`` (any shape, the model's input units) is orders of
    magnitude off :data:`SCALE_RANGE`, for a model of normalisation ``kind``.

    A ``"percentile"`` model scales every scan to its training scale itself, and an empty
    reconstruction (percentile 0) has no scale to judge: both pass.

    Examples
    --------
    >>> import numpy as np
    >>> from unrolled3d.cli.scan_files import check_model_scale
    >>> check_model_scale(np.full(8, 0.02), "attenuation", "m.pt")  # a head in 1/mm
    >>> check_model_scale(np.full(8, 2e-10), "attenuation", "m.pt")
    Traceback (most recent call last):
    ...
    unrolled3d.errors.FileFormatError: m.pt: its FDK's 99th percentile is 2e-10 (1/mm), outside the 0.000193 to 100 a model trained on attenuation values takes: the scan is scaled orders of magnitude off (check its units), or reconstruct it with a model trained with normalization = "percentile"
    """
    if kind == "percentile":
        return
    import torch

    from ..data.normalization import SAMPLE_VOXELS

    if isinstance(sample, torch.Tensor):
        sample = sample.detach().reshape(-1).cpu().numpy()
    flat = np.asarray(sample).reshape(-1)
    flat = flat[::max(1, flat.size // SAMPLE_VOXELS)]  # the bound on the sample training uses
    p = float(np.percentile(np.abs(flat.astype(np.float64)), 99.0))
    lo, hi = SCALE_RANGE
    if p == 0 or lo <= p <= hi:
        return
    what = "Hounsfield-unit" if kind == "hu" else "attenuation"
    raise FileFormatError(path, f"its FDK's 99th percentile is {p:.3g} (1/mm), outside the {lo:g} to {hi:g} a model "
                                f"trained on {what} values takes: the scan is scaled orders of magnitude off (check "
                                f"its units), or reconstruct it with a model trained with normalization = "
                                f'"percentile"')
