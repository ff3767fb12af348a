r"""``simulate --modality mri`` and ``reconstruct`` of MRI k-space files.

``unrolled3d simulate --modality mri --output k.pt`` takes a phantom (``--phantom``, ``--size``)
or a volume file (``--volume``) as the image's magnitude, multiplies it by a smooth random
phase (:func:`~unrolled3d.data.smooth_phase`, range up to pi), measures it with ``--coils``
birdcage coils (:func:`~unrolled3d.mri.birdcage_maps`) through a ``--mask`` mask of
acceleration ``--acceleration`` (:func:`~unrolled3d.mri.variable_density_mask`: Poisson-disc by
default, a fully sampled calibration block at the centre) and adds complex Gaussian noise on
the sampled k-space: std ``--noise`` per real channel, relative to the image's largest
magnitude (the DFT is orthonormal: the same std on the image). The file
(:mod:`unrolled3d.io.kspace_files`) holds k-space, coil maps, mask, voxel size and the truth.

``unrolled3d reconstruct k.pt --output x.nii.gz`` writes the magnitude image. Methods:
``zero-filled`` (``sum_c conj(S_c) F^-1 y_c``), ``cg-sense`` (the default: CG on the normal
equations, ``--cg-iters`` iterations, Tikhonov ``--cg-lam``; the defaults were chosen on
validation heads, :data:`CG_DEFAULTS`) and ``unrolled`` (``--weights``, an MRI model such as
``unrolled3d/weights/mri_heads.pt``): the k-space is brought to the model's training scale
(the percentile of the zero-filled magnitude its normalisation names), reconstructed, and the
output scaled back. A CT model on k-space, an MRI model on cone-beam data, CT options on MRI
and the reverse are refused with one clear line.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .._validation import check_device, integer, real
from ..pretrained import check_modality
from .output import emit
from .streamed import is_store_path

__all__ = ["MRI_METHODS", "CG_DEFAULTS", "is_mri_input", "simulate_mri", "reconstruct_mri", "unrolled_mri",
           "load_mri_model", "refuse_mri_model"]

MRI_METHODS = ("zero-filled", "cg-sense")
#: CG-SENSE's iterations and Tikhonov weight chosen on the validation heads (MNI152, INIA19, and S1) at
#: 64^3, 8 coils, R = 8, noise std 0.01 of the peak (bench/experiments/quality_mri.py,
#: bench/results/quality_mri_heads.json): early stopping beat every Tikhonov weight tried
CG_DEFAULTS = {"n_iter": 2, "lam": 0.0}
#: the smooth random phase of simulations: range up to pi (radians), quadratic
MAX_PHASE = math.pi


def _note(args: argparse.Namespace, text: str) -> None:
    import sys

    if not (args.quiet or args.json):
        print(f"{text} ...", file=sys.stderr, flush=True)


def is_mri_input(path: str | None) -> bool:
    """Whether ``path`` is an MRI k-space file (a cheap look at its format entry; anything else,
    or a file that cannot be read, is not)."""
    from ..io import file_kind

    if path is None or is_store_path(path) or not Path(path).is_file():
        return False
    return file_kind(path) == "kspace"


# ------------------------------------------------------------------------------------ simulate
def _listed(options: list[str]) -> str:
    """``"--a applies"`` or ``"--a, --b apply"``."""
    return f"{', '.join(options)} {'applies' if len(options) == 1 else 'apply'}"


def _given(args: argparse.Namespace, names: dict[str, str]) -> list[str]:
    """The options among ``names`` (attribute -> option) that the command line set."""
    return [opt for attr, opt in names.items() if getattr(args, attr, None) not in (None, False)]


def check_ct_simulate_options(args: argparse.Namespace) -> None:
    """A CT simulation refuses the MRI options (never silently ignored)."""
    given = _given(args, {"coils": "--coils", "acceleration": "--acceleration", "mask": "--mask"})
    if given:
        raise ValueError(f"{_listed(given)} to --modality mri, not to cone-beam CT")


def _magnitude(args: argparse.Namespace, seed: int, phantom_volume: Callable[[str, int, int], torch.Tensor]
               ) -> tuple[torch.Tensor, tuple[float, float, float], dict]:
    """The image's magnitude ``(D, H, W)``, its voxel size and where it came from (``phantom_volume``:
    CT's ``simulate --phantom`` maker, ``(kind, size, seed) -> (size,) * 3``, the same choices)."""
    from .scan_files import read_input_volume

    if args.volume is not None:
        vol, voxel_size = read_input_volume(args)
        return vol.to(torch.float32), voxel_size, {"volume": str(args.volume)}
    size = 64 if args.size is None else integer("--size", args.size, 4)
    phantom = args.phantom or "shepp-logan"
    return phantom_volume(phantom, size, seed), (1.0, 1.0, 1.0), {"phantom": phantom}


def _acceleration(value: Any) -> float:
    r = real("--acceleration", 8.0 if value is None else value)
    if r < 1:
        raise ValueError(f"--acceleration must be >= 1 (R: the fraction 1/R of the phase-encode lines is sampled), "
                         f"got {value!r}")
    return r


def _mask(shape: tuple[int, int, int], r: float, seed: int, kind: str) -> torch.Tensor:
    from ..mri import variable_density_mask

    try:
        return variable_density_mask(shape, r, seed=seed, kind=kind)
    except ValueError as exc:  # e.g. more calibration lines than R allows on a small volume
        raise ValueError(f"--acceleration {r:g}: {exc}") from None


def simulate_mri(args: argparse.Namespace, phantom_volume: Callable[[str, int, int], torch.Tensor]) -> int:
    """``simulate --modality mri``: a magnitude -> complex image -> coils -> masked noisy k-space file."""
    from ..data import smooth_phase
    from ..io import check_not_input, check_pt_name, resolve_output, save_kspace
    from ..mri import MultiCoilMRI3D, acceleration, birdcage_maps

    ct_only = _given(args, {"views": "--views", "short_scan": "--short-scan"})
    if getattr(args, "units", "auto") != "auto":  # HU and attenuation are CT's: a magnitude image has neither
        ct_only.append("--units")
    if ct_only:
        raise ValueError(f"{_listed(ct_only)} to cone-beam CT, not to --modality mri")
    if getattr(args, "noise_relative", None) is not None:  # MRI's --noise is relative to the image already
        raise ValueError("--noise-relative applies to cone-beam CT; for MRI give --noise (its std relative to the "
                         "image's largest magnitude)")
    noise = real("--noise", 0.01 if args.noise is None else args.noise, nonnegative=True)
    seed = integer("--seed", args.seed, 0)
    coils = integer("--coils", 8 if args.coils is None else args.coils, 1)
    r = _acceleration(args.acceleration)
    kind = args.mask or "poisson"
    if is_store_path(args.out):
        raise ValueError(f"MRI k-space is written as one .pt file, not a Zarr store: got --output {args.out}")
    out = check_pt_name(args.out, "k-space")
    check_not_input([out], [args.volume])
    resolve_output(out, args.force)
    magnitude, voxel_size, source = _magnitude(args, seed, phantom_volume)
    d, h, w = (int(s) for s in magnitude.shape)  # (D, H, W): read_volume refuses other than 3-D
    shape = (d, h, w)
    mask = _mask(shape, r, seed, kind)
    maps = birdcage_maps(coils, shape)
    phase = smooth_phase(shape, torch.Generator().manual_seed(seed), max_phase=MAX_PHASE, dtype=torch.float64)
    x = torch.stack([magnitude * phase.cos(), magnitude * phase.sin()]).to(torch.float32)[None]
    physics = MultiCoilMRI3D(mask, maps)
    with torch.no_grad():
        y = physics.A(x)
    peak = float(magnitude.abs().max())
    gen = torch.Generator().manual_seed(seed + 1)  # another stream than the phase's
    y = y + (noise * peak) * physics.mask * torch.randn(y.shape, generator=gen)
    achieved = acceleration(mask)
    meta = {**source, "modality": "mri", "noise": noise, "noise_std": noise * peak, "acceleration": r,
            "acceleration_achieved": achieved, "mask": kind, "coils": coils, "seed": seed, "max_phase": MAX_PHASE}
    save_kspace(out, y, mask, maps, x_true=x, voxel_size=voxel_size, meta=meta, force=args.force)
    emit(args, {"out": args.out, "kspace_shape": list(y.shape), "acceleration": achieved},
         f"wrote {args.out}: k-space of {coils} coils on a {shape} grid, {kind} mask of R {achieved:.2f}")
    return 0


# --------------------------------------------------------------------------------- reconstruct
def _check_options(args: argparse.Namespace, method: str) -> None:
    """Options of another method or modality are refused, not ignored."""
    given = _given(args, {"normal": "--normal", "fdk_window": "--fdk-window", "preview": "--preview"})
    if given:
        raise ValueError(f"{_listed(given)} to cone-beam CT, not to MRI k-space")
    given = [opt for attr, opt in (("overlap", "--overlap"), ("sweeps", "--sweeps"))
             if getattr(args, attr, None) is not None]  # --overlap 0 is given too
    if getattr(args, "scale_check", "check") != "check":
        given.append("--scale-check")
    if given:
        raise ValueError(f"{_listed(given)} to cone-beam CT's unrolled reconstruction, not to MRI k-space "
                         f"(MRI: --patch-size, --memory-budget)")
    if getattr(args, "precision", "auto") == "bfloat16":  # auto and float32 are what MRI runs: float32
        raise ValueError("--precision bfloat16 applies to cone-beam CT; MRI reconstructions run in float32 "
                         "(give --precision auto or float32)")
    if method != "unrolled":
        given = _given(args, {"weights": "--weights", "patch_size": "--patch-size", "memory_budget": "--memory-budget"})
        if getattr(args, "self_ensemble", "none") != "none":
            given.append("--self-ensemble")
        if given:
            raise ValueError(f"{_listed(given)} to --method unrolled, not to {method}")
    if method != "cg-sense":
        given = _given(args, {"cg_iters": "--cg-iters", "cg_lam": "--cg-lam"})
        if given:
            raise ValueError(f"{_listed(given)} to --method cg-sense, not to {method}")
    if method == "unrolled" and args.weights is None:
        raise ValueError("--method unrolled needs --weights (an MRI model file, e.g. unrolled3d/weights/mri_heads.pt)")
    if method == "unrolled" and args.patch_size is not None and args.memory_budget is not None:
        raise ValueError("give either --patch-size or --memory-budget, not both")
    if is_store_path(args.out):
        raise ValueError(f"MRI reconstructions are written as volume files, not Zarr stores: got --output {args.out}")


def _method(args: argparse.Namespace) -> str:
    """The method for a k-space file (default CG-SENSE); refuses a CT file and CT methods."""
    from ..io import file_kind

    path = args.measurements
    if is_store_path(path) or (Path(path).is_file() and file_kind(path) == "measurements"):
        raise ValueError(f"{path} holds cone-beam CT measurements: --method {args.method} is for MRI k-space "
                         f"(for CT use --method fdk or unrolled)")
    method = args.method or "cg-sense"
    if method == "fdk":
        raise ValueError(f"{path} holds MRI k-space: FDK is for cone-beam CT (use --method zero-filled, cg-sense or "
                         f"unrolled)")
    return method


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` of images ``(B, 2, ...)`` (channels real, imaginary): ``(B, ...)``."""
    return torch.linalg.vector_norm(x, dim=1)


def unrolled_mri(rec: Any, norm: Any, y: torch.Tensor, physics: Any, budget_bytes: int | None = None,
                 patch: int | None = None, self_ensemble: str = "none") -> tuple[torch.Tensor, dict[str, Any]]:
    """The MRI model's reconstruction of k-space ``y``: ``(x (B, 2, D, H, W), what was run)``.

    ``y`` is scaled to the model's training units (``norm.measurement_scale`` of the zero-filled
    magnitude), reconstructed from the zero-filled start, and the output scaled back. Without
    ``patch`` the whole volume is one patch if it fits ``budget_bytes``, else the largest patch
    that does (:func:`unrolled3d.budget.plan_inference`, network in float32); with ``patch``, that
    patch, half overlap, two sweeps. ``self_ensemble``: the denoisers' answers averaged over
    symmetries (:data:`unrolled3d.models.ensemble.SELF_ENSEMBLES`; ``"flips+conj"`` for complex images).
    """
    from ..budget import plan_inference
    from ..models.ensemble import ensembled
    from ..mri import zero_filled

    rec = ensembled(rec, self_ensemble)
    with torch.no_grad():
        x0 = zero_filled(y, physics)
    scale = norm.measurement_scale(magnitude(x0))
    y_n, x0 = y * scale, x0 * scale
    info: dict[str, Any] = {"scale": scale}
    if patch is None:
        rec, plan = plan_inference(rec, y_n, physics, x0, budget_bytes=budget_bytes, amp=False)
        info.update(plan.to_dict())
    with torch.no_grad():
        x = rec(y_n, physics, x_init=x0)
    info.update(patch=list(rec.patch_shape), sweeps=rec.n_sweeps, patches=len(rec.patches()),
                self_ensemble=self_ensemble)
    return x / scale, info


def refuse_mri_model(weights: str | None) -> None:
    """A model file trained for MRI (an ``[mri]`` section) given for cone-beam data: one clear line
    (shipped names such as ``heads_ct`` are CT models)."""
    from ..io import load_model

    if weights is not None and Path(weights).is_file():
        check_modality(load_model(weights)[1], weights, "ct")


def load_mri_model(args: argparse.Namespace, vol_shape: tuple[int, int, int]) -> tuple[Any, Any]:
    """``(rec, normalisation)``: the MRI model of ``--weights`` on volumes of ``vol_shape`` (patch
    ``--patch-size`` or the whole-volume plan), and how its training volumes were scaled; a CT
    model is refused."""
    from ..io import load_model
    from ..pretrained import build_from_file, file_normalization

    state, config = load_model(args.weights)
    check_modality(config, args.weights, "mri")
    norm = file_normalization(config, args.weights)
    if args.patch_size is not None:
        integer("--patch-size", args.patch_size, 1)
        if any(args.patch_size > n for n in vol_shape):
            raise ValueError(f"--patch-size {args.patch_size} is larger than the volume {tuple(vol_shape)}")
    return build_from_file(config, state, args.weights, vol_shape, patch=args.patch_size), norm


def reconstruct_mri(args: argparse.Namespace) -> int:
    """``reconstruct`` of a k-space file: zero-filled, CG-SENSE or an MRI model; writes ``|x|``."""
    from ..budget import parse_bytes
    from ..io import check_not_input, check_volume_target, load_kspace, volume_files, write_volume
    from ..metrics import magnitude_psnr
    from ..mri import MultiCoilMRI3D, cg_sense, zero_filled

    method = _method(args)
    _check_options(args, method)
    check_not_input(volume_files(args.out), [args.measurements, args.weights])
    check_volume_target(args.out, args.force)
    device = check_device("--device", args.device)
    scan = load_kspace(args.measurements)
    physics = MultiCoilMRI3D(scan.mask, scan.coil_maps, device=device)
    y = scan.y.to(device)
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    if method == "zero-filled":
        with torch.no_grad():
            x = zero_filled(y, physics)
    elif method == "cg-sense":
        n_iter = integer("--cg-iters", CG_DEFAULTS["n_iter"] if args.cg_iters is None else args.cg_iters, 1)
        lam = real("--cg-lam", CG_DEFAULTS["lam"] if args.cg_lam is None else args.cg_lam, nonnegative=True)
        _note(args, f"CG-SENSE: {n_iter} iterations, lam {lam:g}")
        with torch.no_grad():
            x = cg_sense(y, physics, n_iter=n_iter, tol=0.0, lam=lam)
        info = {"cg_iters": n_iter, "cg_lam": lam}
    else:
        rec, norm = load_mri_model(args, scan.shape)
        rec.to(device).eval()
        rec.progress = not (args.quiet or args.json)
        budget = parse_bytes(args.memory_budget) if args.memory_budget is not None else None
        _note(args, f"partitioned unrolled reconstruction of a {scan.shape} volume")
        x, info = unrolled_mri(rec, norm, y, physics, budget_bytes=budget, patch=args.patch_size,
                               self_ensemble=args.self_ensemble)
    seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("the reconstruction holds NaN or infinite values: not written")
    write_volume(args.out, magnitude(x)[0].cpu(), scan.voxel_size, force=args.force)
    payload = {"out": args.out, "seconds": round(seconds, 3), "method": method, "output": "magnitude", **info}
    if scan.x_true is not None:
        payload["psnr"] = magnitude_psnr(x.cpu(), scan.x_true)
    emit(args, payload, f"wrote {args.out} ({method}, magnitude, {seconds:.1f} s"
                        + (f", PSNR {payload['psnr']:.2f} dB)" if "psnr" in payload else ")"))
    return 0
