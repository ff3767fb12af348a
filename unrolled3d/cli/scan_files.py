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
* **Field of view**: a geometry whose rays all miss the volume (``||A|| = 0``) is named as such,
  with the measurements file, not left to surface as a NaN reconstruction (:func:`known_norm`).

The scale of the measurements against the model's training scans is one of the rules
:mod:`unrolled3d.api` applies (``--scale-check``), not a file matter.
"""
from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import FileFormatError

__all__ = ["read_input_volume", "HU_BELOW", "UNITS", "input_units", "hu_to_attenuation", "source_meta", "output_spatial",
           "check_field_of_view", "known_norm"]

#: a volume whose smallest value is below this is taken for Hounsfield units by ``--units auto``
HU_BELOW = -500.0
#: the choices of ``simulate --units``
UNITS = ("auto", "attenuation", "hu")


def read_input_volume(args: argparse.Namespace) -> tuple[Any, tuple[float, float, float]]:
    """``simulate --volume``: the volume and its voxel size (mm), refused with ``--phantom``/``--size``
    and, when it holds NaN or infinite values, as a bad file (CT and MRI alike)."""
    from .._validation import check_finite
    from ..io import read_volume

    if args.phantom is not None or args.size is not None:
        raise ValueError("--volume replaces --phantom and --size: give one or the other")
    vol, voxel_size = read_volume(args.volume)
    try:
        check_finite(vol, "the volume")
    except ValueError as exc:
        raise FileFormatError(args.volume, str(exc)) from None
    sz, sy, sx = voxel_size  # a tuple, whatever sequence the reader gave
    return vol, (sz, sy, sx)


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
    """Refuse a scan whose rays all miss the volume (``norm``, the operator norm, is 0), naming
    the measurements file ``path`` (:func:`unrolled3d._scan_rules.check_field_of_view`)."""
    from .._scan_rules import check_field_of_view as check

    try:
        check(norm)
    except ValueError as exc:
        raise FileFormatError(path, str(exc)) from None


def known_norm(meta: dict[str, Any], geometry: Any, path: str | Path, unrolled: bool, device: Any,
               progress: bool) -> float | None:
    """``||A||`` of the scan: the one the measurements file recorded (refused for another geometry),
    else, for the unrolled method, the cached estimate (:mod:`unrolled3d.physics.norm`; the API
    then reuses it). A scan whose rays all miss the volume is refused naming ``path``."""
    from ..physics.norm import cached_operator_norm, norm_from_record

    norm = norm_from_record(meta.get("operator_norm"), geometry)
    if unrolled:
        if norm is None:
            norm = cached_operator_norm(geometry, device, progress=progress)
        check_field_of_view(norm, path)
    return norm
