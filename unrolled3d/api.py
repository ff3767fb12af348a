r"""Reconstruct a scan in one call, with the rules of the model applied: :func:`reconstruct`.

A learned reconstruction is only as good as its inputs' agreement with training. The rules,
applied here once for the Python API and the command line (``unrolled3d reconstruct``):

1. **Units.** Measurements are line integrals of the raw projector (given a
   :class:`~unrolled3d.geometry.ConeBeamGeometry`, or a physics with ``normalize=False``), or of
   a normalised physics (``normalize=True``: divided by its ``||A||``). Either way they are
   brought to the units the network was trained in, ``y / ||A||`` (``||A||`` recorded, cached per
   geometry or estimated once: :mod:`unrolled3d.physics.norm`).
2. **The model's intensity normalisation** (:class:`~unrolled3d.data.IntensityNormalization`):
   ``"percentile"`` scales the measurements so that their FDK's percentile is the training
   volumes', and the output back.
3. **The scale check** (:func:`check_measurement_scale`): the 99.5th percentile of the FDK start
   point is compared with the training scans' (:class:`~unrolled3d.models.scale.TrainingScale`);
   beyond :data:`WARN_FACTOR` a :class:`ScaleMismatchWarning`, beyond :data:`ERROR_FACTOR` a
   ``ValueError`` (``scale_check="rescale"`` brings the scan to the training scale instead). A
   calibrated model whose file records no training scale (and whose recipe cannot make one again)
   is held to a fixed range instead (:data:`~unrolled3d._scan_rules.CALIBRATED_RANGE`). A scan
   whose rays all miss the volume (``||A|| = 0``) is refused as outside the field of view.
4. **Inference plan**: the patch by the memory budget (the whole volume and one sweep when it
   fits, bfloat16 where native: :func:`unrolled3d.budget.plan_inference`), under
   ``torch.no_grad``, with progress on stderr.
5. **The output in the input's units** (attenuation for calibrated models; ``output_units="model"``
   gives the model's own, e.g. Hounsfield units for a ``"hu"`` model).

Measurements in stores (Zarr, ``.npy``, a path to a measurements store ``.zarr``) are
reconstructed streamed into the store ``out`` (:mod:`unrolled3d.partition.streamed`): memory
follows ``memory_budget``, not the volume.

Examples
--------
>>> import torch, unrolled3d
>>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
>>> from unrolled3d.data import PhantomDataset
>>> g = standard_cone_beam(24, 30)
>>> x = PhantomDataset(1, 24, seed=7)[0][None]                      # [1, 1, 24, 24, 24]
>>> y = ConeBeamCT(g)(x)                                            # raw line integrals
>>> x_hat = unrolled3d.reconstruct(y, g, model="demo_ct", progress=False)
>>> x_hat.shape
torch.Size([1, 1, 24, 24, 24])
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from ._scan_rules import (ERROR_FACTOR, METHODS, SCALE_CHECKS, WARN_FACTOR, Reconstruction, Scan, ScaleCheck,
                          ScaleMismatchWarning, in_physics_units, judge, measurements, normal_operator,
                          normalised_physics, note, scan_of, shaped)
from ._validation import choice
from .models.ensemble import SELF_ENSEMBLES, ensembled
from .pretrained import PRETRAINED, WEIGHTS_DIR, PretrainedModel

__all__ = ["reconstruct", "reconstruct_detailed", "load_pretrained", "Reconstructor", "check_measurement_scale",
           "Reconstruction", "ScaleCheck", "ScaleMismatchWarning", "PretrainedModel", "WARN_FACTOR", "ERROR_FACTOR",
           "SCALE_CHECKS", "METHODS", "PRECISIONS", "network_amp"]


class Reconstructor(PretrainedModel):
    """A trained model, ready to reconstruct: ``model(y, geometry_or_physics, **options)`` is
    :func:`reconstruct` with this model (made by :func:`load_pretrained`; everything else is
    :class:`~unrolled3d.pretrained.PretrainedModel`'s).

    Examples
    --------
    >>> import unrolled3d
    >>> from unrolled3d.data import PhantomDataset
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> model = unrolled3d.load_pretrained("demo_ct")
    >>> g = standard_cone_beam(24, 30)
    >>> y = ConeBeamCT(g)(PhantomDataset(1, 24, seed=7)[0][None])
    >>> model(y, g, progress=False).shape
    torch.Size([1, 1, 24, 24, 24])
    """

    def __call__(self, y: Any, geometry_or_physics: Any = None, **options: Any) -> Any:
        return reconstruct(y, geometry_or_physics, model=self, **options)


def load_pretrained(name_or_path: str | os.PathLike, device: torch.device | str = "cpu") -> Reconstructor:
    """A shipped model by name (``"heads_ct"``, ``"demo_ct"``) or any model file by path, ready
    to reconstruct, with its recorded normalisation, scan recipe, training patch and training
    scale (:mod:`unrolled3d.pretrained`).

    Parameters
    ----------
    name_or_path : str or path
        a name of :data:`unrolled3d.pretrained.PRETRAINED` or a model file written by
        ``unrolled3d train``.
    device : torch.device or str
        where the network's weights go.

    Raises
    ------
    FileNotFoundError
        neither a shipped name nor an existing file (the message lists the names).
    FileFormatError
        not a model file, or one whose configuration or weights do not build the network.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a shipped model's name ({', '.join(PRETRAINED)}) or a model file's "
                        f"path, got {type(name_or_path).__name__}")
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        return Reconstructor(WEIGHTS_DIR / PRETRAINED[name_or_path], name=name_or_path, device=device)
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"no model {str(name_or_path)!r}: neither a shipped model ({', '.join(PRETRAINED)}) "
                                f"nor a model file")
    return Reconstructor(name_or_path, device=device)


def as_pretrained(model: Any, device: torch.device | str | None = None) -> PretrainedModel:
    """``model`` as a :class:`PretrainedModel` (a name or path is loaded), on ``device`` if given."""
    if isinstance(model, PretrainedModel):
        return model if device is None else model.to(device)
    if isinstance(model, (str, os.PathLike)):
        return load_pretrained(model, device="cpu" if device is None else device)
    raise TypeError(f"model must be a shipped model's name ({', '.join(PRETRAINED)}), a model file's path or a "
                    f"PretrainedModel, got {type(model).__name__}")


def check_measurement_scale(y: Any, geometry_or_physics: Any, model: Any, scale_check: str = "check",
                            norm: float | None = None, progress: bool = False) -> ScaleCheck:
    """Whether measurements ``y`` are of the scale the model was trained on.

    The 99.5th percentile of their FDK, in the model's units (``y / ||A||``, the model's
    intensity normalisation applied), is compared with the training scans'
    (:class:`~unrolled3d.models.scale.TrainingScale`). ``scale_check`` says what to do when
    they differ: ``"check"`` warns (:class:`ScaleMismatchWarning`) beyond :data:`WARN_FACTOR`
    and raises ``ValueError`` beyond :data:`ERROR_FACTOR`; ``"warn"`` only warns; ``"rescale"``
    returns the factor that brings them to the training scale (with a warning); ``"ignore"``
    checks nothing.

    Parameters
    ----------
    y : torch.Tensor
        measurements, as for :func:`reconstruct`.
    geometry_or_physics : ConeBeamGeometry or ConeBeamCT
        the scan (a geometry: ``y`` are raw line integrals; a physics: in its units).
    model : str, path or PretrainedModel
        the model.
    norm : float, optional
        ``||A||`` of the raw projector, when known.

    Examples
    --------
    >>> import unrolled3d
    >>> from unrolled3d.api import check_measurement_scale
    >>> from unrolled3d.data import PhantomDataset
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> g = standard_cone_beam(24, 30)
    >>> y = ConeBeamCT(g)(PhantomDataset(1, 24, seed=7)[0][None])           # raw line integrals
    >>> check_measurement_scale(y, g, "demo_ct").status
    'ok'
    >>> normalised = ConeBeamCT(g, normalize=True)
    >>> check_measurement_scale(y, normalised, "demo_ct")                     # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: the measurements are ... times the scale demo_ct was trained on ...
    """
    scale_check = choice("scale_check", scale_check, SCALE_CHECKS)
    scan = scan_of(geometry_or_physics)
    model = as_pretrained(model)
    y, _ = measurements(y, scan, scan.device)
    physics = normalised_physics(scan, norm, model.device if scan.device is None else scan.device, progress)
    with torch.no_grad():
        x0 = physics.A_dagger(in_physics_units(y, scan, physics))
        x0 = x0 * model.normalization.measurement_scale(x0)
    from .models.scale import percentile_of

    return judge(percentile_of(x0), model, scale_check)


# ---------------------------------------------------------------------------------- reconstruct
def reconstruct(y: Any, geometry_or_physics: Any = None, model: Any = None, method: str | None = None,
                memory_budget: int | str | None = None, normal: Any = None, progress: bool = True,
                **options: Any) -> Any:
    """Reconstruct a cone-beam scan, with the rules of the model applied (module docstring).

    Parameters
    ----------
    y : torch.Tensor, numpy array, ArrayStore or path
        the measurements ``[B, C, n_views, rows, cols]`` or ``(n_views, rows, cols)`` (the
        ``"astra"`` layout ``[B, C, rows, n_views, cols]`` for a physics of that layout); or, to
        stream, an :class:`~unrolled3d.io.stores.ArrayStore`, a ``.npy``/Zarr array or the path
        of a measurements store (``.zarr``, whose geometry is used when ``geometry_or_physics``
        is ``None``), with ``out=``.
    geometry_or_physics : ConeBeamGeometry or ConeBeamCT
        a geometry: ``y`` are raw line integrals (of the unnormalised projector); a physics:
        ``y`` are in its units (``normalize=True``: divided by its ``||A||``, which is reused).
    model : str, path or PretrainedModel, optional
        ``"heads_ct"``, ``"demo_ct"``, a model file, or :func:`load_pretrained`'s result.
    method : str, optional
        ``"unrolled"`` (the default with a model) or ``"fdk"`` (the default without).
    memory_budget : int or str, optional
        bytes (or ``"2G"``, ``"512M"``) the reconstruction may take; default half of the memory
        available. Chooses the patch (:func:`unrolled3d.budget.plan_inference`).
    normal : NormalApproximation or path, optional
        ``H`` mode: an approximation of ``A^T A`` (e.g. a fitted ``DiagCirculantNormal``) or
        the file of one (``unrolled3d fit-normal``).
    progress : bool
        progress bars and notes on stderr.
    **options
        ``patch_size`` (a patch edge instead of the budget's choice), ``n_sweeps`` and ``overlap``
        (a fraction of the patch edge shared by neighbours; defaults
        :data:`unrolled3d.budget.PATCHED_SWEEPS`, :data:`~unrolled3d.budget.PATCHED_OVERLAP`), ``precision``
        (the network's arithmetic, :data:`PRECISIONS`: ``"auto"``, the default, bfloat16 where the
        device runs it natively; the data step is float32; ``amp=True``/``False`` is the same as
        ``"bfloat16"``/``"float32"``), ``scale_check`` (:data:`SCALE_CHECKS`,
        default ``"check"``), ``norm`` (``||A||`` of the raw projector, when known),
        ``self_ensemble`` (:data:`unrolled3d.models.ensemble.SELF_ENSEMBLES`: ``"none"``, the default;
        ``"flips"`` averages the network's answers over the 8 flips of the volume's axes: +0.11 dB
        for ``heads_ct`` on held-out heads, for 8x the network's time), ``fdk_window``, ``device``,
        ``output_units`` (``"input"`` or ``"model"``), ``out`` (the
        output store of a streamed reconstruction: a path ending ``.zarr``/``.npy``, or an
        ArrayStore), ``force`` (replace an existing ``out``), ``measure_memory``.

    Returns
    -------
    torch.Tensor or ArrayStore
        the volume in the input's units, shaped as ``y`` (``[B, C, D, H, W]`` or ``(D, H, W)``);
        the output store when streamed. :func:`reconstruct_detailed` returns how it was made too.
    """
    return reconstruct_detailed(y, geometry_or_physics, model, method, memory_budget, normal, progress,
                                **options).volume


#: the network's arithmetic: ``"auto"`` (bfloat16 where native), or as named
PRECISIONS = ("auto", "float32", "bfloat16")

_OPTIONS = ("patch_size", "n_sweeps", "overlap", "amp", "precision", "self_ensemble", "scale_check", "norm",
            "fdk_window", "device", "output_units", "out",
            "force", "measure_memory", "scratch")


def reconstruct_detailed(y: Any, geometry_or_physics: Any = None, model: Any = None, method: str | None = None,
                         memory_budget: int | str | None = None, normal: Any = None, progress: bool = True,
                         **options: Any) -> Reconstruction:
    """:func:`reconstruct`, returning the volume and how it was made (:class:`Reconstruction`)."""
    from ._validation import boolean

    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"reconstruct() got unexpected options {unknown} (it takes {', '.join(_OPTIONS)})")
    method = choice("method", method if method is not None else ("fdk" if model is None else "unrolled"), METHODS)
    progress = boolean("progress", progress)
    choice("scale_check", options.get("scale_check", "check"), SCALE_CHECKS)
    choice("output_units", options.get("output_units", "input"), ("input", "model"))
    if choice("self_ensemble", options.get("self_ensemble", "none"), SELF_ENSEMBLES) == "flips+conj":
        raise ValueError("self_ensemble='flips+conj' is for complex (MRI) images; cone-beam CT volumes are real: "
                         "use 'flips'")
    if method == "unrolled" and model is None:
        raise ValueError("method='unrolled' needs a model (a shipped name such as 'heads_ct', or a model file)")
    options["amp"] = network_amp(options.get("precision"), options.get("amp"))
    if method == "fdk":
        given = [k for k, v in (("model", model), ("normal", normal), ("patch_size", options.get("patch_size")),
                                ("precision/amp", options["amp"] is not None),
                                ("self_ensemble", options.get("self_ensemble", "none") != "none")) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to method='unrolled', not to FDK")
    if _is_streamed(y, options.get("out")):
        from ._streamed_api import reconstruct_streamed_store

        model = None if model is None else as_pretrained(model, "cpu")
        return reconstruct_streamed_store(y, geometry_or_physics, model, method, memory_budget, normal, progress,
                                          options)
    if geometry_or_physics is None:
        raise TypeError("geometry_or_physics is needed for measurements in memory (a ConeBeamGeometry or ConeBeamCT)")
    if options.get("out") is not None:
        raise ValueError("out= is for streamed reconstructions (measurements in a store); here the volume is returned")
    scan = scan_of(geometry_or_physics)
    device = None if options.get("device") is None else torch.device(options["device"])
    y, three_d = measurements(y, scan, device)
    if method == "fdk":
        return _fdk(y, scan, three_d, progress, options)
    return _unrolled(y, scan, three_d, as_pretrained(model, y.device), memory_budget, normal, progress, options)


def network_amp(precision: str | None, amp: Any = None) -> bool | None:
    """The network's bfloat16 switch from ``precision`` (:data:`PRECISIONS`) or ``amp`` (bool):
    ``None`` for ``"auto"`` (bfloat16 where the device runs it natively:
    :func:`unrolled3d.budget.bf16_is_native`), ``True`` for bfloat16, ``False`` for float32."""
    from ._validation import boolean

    wanted = None if amp is None else boolean("amp", amp)
    if precision is None:
        return wanted
    named = {"auto": None, "float32": False, "bfloat16": True}[choice("precision", precision, PRECISIONS)]
    if wanted is not None and named is not None and wanted != named:
        raise ValueError(f"precision={precision!r} and amp={amp!r} disagree: give one of them")
    return wanted if named is None else named


def _is_streamed(y: Any, out: Any) -> bool:
    from .io.stores import ArrayStore

    if isinstance(y, ArrayStore) or (isinstance(y, (str, os.PathLike)) and str(y).rstrip("/").endswith((".zarr", ".npy"))):
        return True
    if isinstance(y, (str, os.PathLike)):
        raise ValueError(f"y {str(y)!r}: a path must name a measurements store (.zarr) or a .npy array to stream; "
                         f"read a .pt measurements file with unrolled3d.io.load_measurements")
    return out is not None and not isinstance(y, torch.Tensor) and hasattr(y, "shape") and not _is_ndarray(y)


def _is_ndarray(y: Any) -> bool:
    import numpy as np

    return type(y) is np.ndarray  # a memory map (np.memmap) streams


def _fdk(y: torch.Tensor, scan: Scan, three_d: bool, progress: bool, options: dict) -> Reconstruction:
    from .physics import FDK_WINDOWS, fdk

    window = choice("fdk_window", options.get("fdk_window") or scan.fdk_window, FDK_WINDOWS)
    g = scan.geometry
    note(progress, f"FDK of {g.n_views} views into a {g.vol_shape} volume")
    t0 = time.perf_counter()
    raw = y if scan.norm is None else y * scan.norm  # FDK inverts the raw projector
    with torch.no_grad():
        x = fdk(raw, g, window=window, progress=progress)
    return Reconstruction(shaped(x, three_d), "fdk", "input", time.perf_counter() - t0)


def _unrolled(y: torch.Tensor, scan: Scan, three_d: bool, model: PretrainedModel, memory_budget: Any, normal: Any,
              progress: bool, options: dict) -> Reconstruction:
    """The partitioned unrolled reconstruction of each scan of the batch (one plan for all)."""
    from .models.scale import percentile_of

    physics = normalised_physics(scan, options.get("norm"), y.device, progress)
    H = normal_operator(normal, physics, y.device)
    plan = _Planned(model, scan.geometry.vol_shape, memory_budget, options, progress)
    outs, checks = [], []
    for b in range(y.shape[0]):  # each scan its own percentile scale and scale check
        y_n = in_physics_units(y[b:b + 1], scan, physics)
        with torch.no_grad():
            x0 = physics.A_dagger(y_n)  # FDK: the start point, in the volume's units
        scale = model.normalization.measurement_scale(x0)
        check = judge(percentile_of(x0 * scale), model, options.get("scale_check", "check"))
        total = scale * check.factor  # the training units: y / ||A||, times the percentile and rescale factors
        x = plan.run(y_n * total, physics, x0 * total, H) / total
        if not bool(torch.isfinite(x).all()):  # the inputs are checked finite: this is the model's doing
            raise FloatingPointError("the reconstruction holds NaN or infinite values")
        outs.append(x)
        checks.append(check)
    x = torch.cat(outs)
    units = "input"
    if options.get("output_units", "input") == "model":
        x, units = model.normalization.output(x), model.normalization.output_units
    worst = max(checks, key=_mismatch)  # the batch's scan furthest from the training scale
    return Reconstruction(shaped(x, three_d), "unrolled", units, plan.seconds, plan.info, worst,
                          model.normalization.to_dict(), float(physics.operator_norm), plan.peak)


class _Planned:
    """The reconstructor for a volume, planned (patch by memory budget) at its first scan."""

    def __init__(self, model: PretrainedModel, vol_shape: tuple[int, int, int], memory_budget: Any, options: dict,
                 progress: bool) -> None:
        from ._validation import integer
        from .budget import PATCHED_OVERLAP, PATCHED_SWEEPS, patched_stride

        self.patch_size = options.get("patch_size")
        if self.patch_size is not None and memory_budget is not None:
            raise ValueError("give either patch_size or memory_budget, not both")
        self.rec = model.reconstructor(vol_shape, self.patch_size)
        self.rec = ensembled(self.rec, options.get("self_ensemble", "none"))
        self.rec.progress = progress
        self.n_sweeps = None if options.get("n_sweeps") is None else integer("n_sweeps", options["n_sweeps"], 1)
        self.overlap = options.get("overlap")
        if self.patch_size is not None:  # the patch given: the patched defaults, as the planner's
            patch = self.rec.patch_shape
            self.rec = self.rec.with_patch_size(
                patch, patched_stride(patch, PATCHED_OVERLAP if self.overlap is None else self.overlap),
                PATCHED_SWEEPS if self.n_sweeps is None else self.n_sweeps)
        self.budget, self.amp = memory_budget, options.get("amp")
        self.measure, self.progress = bool(options.get("measure_memory", False)), progress
        self.info: dict[str, Any] | None = None
        self.planned = False
        self.seconds = 0.0
        self.peak: int | None = None  # bytes, measured with options["measure_memory"]

    def _plan(self, y: torch.Tensor, physics: Any, x0: torch.Tensor, H: Any) -> None:
        from .budget import bf16_is_native, network_precision, parse_bytes, plan_inference

        if self.patch_size is not None:  # the patch as given: only the network's precision is chosen
            amp = bf16_is_native(y.device) if self.amp is None else self.amp
            base, amp = network_precision(self.rec.base, amp)
            self.rec = self.rec.with_base(base)
            note(self.progress and amp, "bfloat16 network")
            return
        budget = None if self.budget is None else parse_bytes(self.budget)
        self.rec, plan = plan_inference(self.rec, y, physics, x0, budget_bytes=budget, normal=H, amp=self.amp,
                                        n_sweeps=self.n_sweeps, overlap=self.overlap)
        self.info = plan.to_dict()
        note(self.progress, f"memory budget {self.info['budget_mib']:.0f} MiB: "
                             + ("the whole volume as one patch" if plan.whole_volume else f"patches of {plan.patch}")
                             + f"{', bfloat16 network' if plan.amp else ''} (predicted peak "
                               f"{self.info['predicted_peak_mib']:.0f} MiB)")

    def run(self, y: torch.Tensor, physics: Any, x0: torch.Tensor, H: Any) -> torch.Tensor:
        from .budget import measure_peak

        if not self.planned:
            self._plan(y, physics, x0, H)
            self.planned = True
        rec = self.rec
        if y.device.type == "cpu":  # denormals from the blend windows made the demo 5x slower (README)
            torch.set_flush_denormal(True)
        note(self.progress, f"partitioned unrolled reconstruction: {len(rec.patches())} patches of {rec.patch_shape} "
                             f"x {rec.n_sweeps} sweeps")
        t0 = time.perf_counter()
        with torch.no_grad():
            if not self.measure:
                x = rec(y, physics, normal=H, x_init=x0)
            else:  # the real run's peak, to set against the plan's prediction
                held: dict[str, torch.Tensor] = {}
                peak = measure_peak(lambda: held.setdefault("x", rec(y, physics, normal=H, x_init=x0)), y.device)
                self.peak = max(self.peak or 0, peak)
                x = held["x"]
        self.seconds += time.perf_counter() - t0
        return x


def _mismatch(check: ScaleCheck) -> float:
    """How far a check's ratio is from 1, either way (0 for an unchecked scan)."""
    if check.ratio is None:
        return 0.0
    return math.inf if check.ratio <= 0 else abs(math.log(check.ratio))
