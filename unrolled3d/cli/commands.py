"""The ``unrolled3d`` subcommands: each takes the parsed arguments and returns the exit status."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._validation import integer, real
from ..errors import FileFormatError
from .bench import bench_cmd
from .output import emit
from .preview import check_preview, write_preview
from .scan_files import (check_field_of_view, hu_to_attenuation, input_units, known_norm, output_spatial,
                         read_input_volume, source_meta)
from .streamed import is_store_path, reconstruct_store, simulate_store

__all__ = ["demo", "info", "simulate", "fit_normal", "reconstruct", "train_cmd", "import_walnut", "bench_cmd",
           "load_train_config"]


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r} (use cpu, cuda or cuda:N)")
    return dev


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars and notes go to stderr, unless ``--quiet`` or ``--json``."""
    return not (args.quiet or args.json)


def _note(args: argparse.Namespace, text: str) -> None:
    """A line about what the command is doing, like a progress bar's (stderr: stdout is for results
    and JSON; unprefixed, so that an error stays the one line that starts with ``unrolled3d``)."""
    if _show_progress(args):
        print(f"{text} ...", file=sys.stderr, flush=True)


def demo(args: argparse.Namespace) -> int:
    from ..io import check_not_input, resolve_output
    from .demo import DEFAULT_WEIGHTS, as_dict, check_png_name, result_table, run_demo

    out = check_png_name(args.out)
    integer("--seed", args.seed, 0)
    check_not_input([out], [args.weights or DEFAULT_WEIGHTS])
    resolve_output(out, args.force)
    size, n_volumes = (24, 1) if args.quick else (args.size, args.volumes)
    result = run_demo(weights=args.weights, size=size, n_volumes=n_volumes, seed=args.seed, out=out,
                      progress=_show_progress(args), force=args.force)
    if args.json:
        print(json.dumps({**as_dict(result), "wall_seconds": round(result.seconds, 2)}))
    elif not args.quiet:
        print(result_table(result))
        print(f"demo finished in {result.seconds:.1f} s")
    return 0


def info(args: argparse.Namespace) -> int:
    from .. import __version__, backends
    from ..ops.dispatch import BACKENDS, backend_switches, backend_table

    info = {"version": __version__, **backends()}
    table, switches = backend_table(), backend_switches()
    if args.json:
        print(json.dumps({**info, "ops": table, "backend_switches": switches}))
        return 0
    for k, v in info.items():
        print(f"{k:18s} {v}")
    origin = {"prebuilt": f"prebuilt, compiled for torch {info['extension_torch'] or '(not recorded)'}",
              "jit": f"built on first use for torch {info['extension_torch']} (cached)",
              "twins": "none: the ops run their pure-PyTorch twins (slow)"}[info["extension"]]
    print(f"\nprojector extension: {origin}; running torch {info['torch']} "
          f"(CUDA {info['torch_cuda'] or 'none: a CPU build'})")
    print("GPU visible now" if info["cuda_device"] else "no GPU visible: only the 'cpu' column applies")
    width, cpu_width = max(map(len, table)), max(len(w["cpu"]) for w in table.values())
    print(f"\n{'op':{width}s}  {'cpu tensors':{cpu_width}s}  cuda tensors")
    for op, where in table.items():
        print(f"{op:{width}s}  {where['cpu']:{cpu_width}s}  {where['cuda']}")
    print(f"\nbackend switches ({' | '.join(BACKENDS)}):")
    for family, sw in switches.items():
        print(f"  {family:9s}  {sw['variable'] + '=' + sw['value']:34s} read {sw['read']}")
    return 0


def simulate(args: argparse.Namespace) -> int:
    from ..io import check_not_input, check_pt_name, resolve_output, save_measurements
    from ..ops import cone_project
    from ..physics import scan_for_volume, standard_cone_beam
    from ..physics.noise import scan_noise

    from .mri import check_ct_simulate_options, simulate_mri

    if args.modality == "mri":
        return simulate_mri(args, _phantom_volume)
    check_ct_simulate_options(args)
    noise = _noise_option(args)
    integer("--seed", args.seed, 0)  # as [phantoms] seed and [train] seed: torch takes -1, numpy's generators not
    views = integer("--views", 30 if args.views is None else args.views, 1)
    if is_store_path(args.out):  # a Zarr store: the volume is made and projected slab by slab
        return _simulate_store(args, noise, views)
    out = check_pt_name(args.out, "measurements")
    check_not_input([out], [args.volume])
    resolve_output(out, args.force)
    scan = "short" if args.short_scan else "full"
    units, spatial = "attenuation", None
    if args.volume is not None:
        from ..io import read_spatial

        vol, voxel_size = read_input_volume(args)
        spatial = read_spatial(args.volume)  # its affine goes into the measurements, reconstruct writes it back
        units = _volume_units(args, float(vol.min()))
        g = scan_for_volume(tuple(vol.shape), voxel_size, views, scan)
        x = (hu_to_attenuation()(vol) if units == "hu" else vol).to(torch.float32)[None, None]
        source = {"volume": str(args.volume)}
    else:
        size = 64 if args.size is None else integer("--size", args.size, 4)
        phantom = args.phantom or "shepp-logan"
        g = standard_cone_beam(size, views, scan=scan)
        x = _phantom_volume(phantom, size, args.seed)[None, None]
        source = {"phantom": phantom}
    y = cone_project(x, g)
    # one noise convention (unrolled3d.physics.noise): --noise is the std on normalised measurements
    raw_std, record = scan_noise(g, float(y.max()), **noise, progress=_show_progress(args))
    y = y + raw_std * torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
    meta = {**source_meta(args, source, units, spatial), **record}
    save_measurements(out, y, g, x_true=x, meta=meta, force=args.force)
    emit(args, {"out": args.out, "sino_shape": list(y.shape), "units": units},
         f"wrote {args.out}: measurements {tuple(y.shape)}")
    return 0


def _phantom_volume(kind: str, size: int, seed: int) -> torch.Tensor:
    """``simulate --phantom``: the ``(size,) * 3`` phantom (1 mm voxels), random kinds drawn with ``seed``."""
    from ..data import random_ellipsoids, shepp_logan_3d, voxelize
    from ..data.textured import textured_phantom

    if kind == "textured":
        if size < 8:
            raise ValueError(f"--size must be at least 8 for --phantom textured, got {size}")
        return textured_phantom((size,) * 3, torch.Generator().manual_seed(seed))
    radius = 0.45 * size
    ell = shepp_logan_3d(radius) if kind == "shepp-logan" else random_ellipsoids(10, radius, seed=seed)
    return voxelize(ell, (size,) * 3, supersample=2)


def _volume_units(args: argparse.Namespace, smallest: float) -> str:
    """``--units`` resolved for a volume whose smallest value is ``smallest`` (a note when guessed)."""
    units = input_units(getattr(args, "units", "auto"), smallest)
    if units == "hu" and getattr(args, "units", "auto") == "auto":
        _note(args, f"{args.volume} looks like Hounsfield units (smallest value {smallest:g}): converted to "
                    f"attenuation in 1/mm before projecting (--units attenuation projects the values as they are)")
    return units


def _noise_option(args: argparse.Namespace) -> dict[str, float]:
    """``{"noise_std": --noise}`` (on normalised measurements, the default 0.01) or
    ``{"relative": --noise-relative}`` (to the largest line integral); NaN, inf and negatives refused."""
    relative = getattr(args, "noise_relative", None)
    if relative is not None:
        if args.noise is not None:
            raise ValueError("give --noise (on normalised measurements) or --noise-relative, not both")
        return {"relative": real("--noise-relative", relative, nonnegative=True)}
    return {"noise_std": real("--noise", 0.01 if args.noise is None else args.noise, nonnegative=True)}


def _simulate_store(args: argparse.Namespace, noise: dict[str, float], views: int) -> int:
    """``simulate --output m.zarr``: the phantom voxelised (or the volume file read) slab by slab."""
    from ..data import random_ellipsoids, shepp_logan_3d, voxelize
    from ..io import LazyVolume, check_not_input
    from ..physics import scan_for_volume, standard_cone_beam

    check_not_input([args.out], [args.volume])
    scan = "short" if args.short_scan else "full"
    units, spatial = "attenuation", None
    if args.volume is not None:
        if args.phantom is not None or args.size is not None:
            raise ValueError("--volume replaces --phantom and --size: give one or the other")
        vol = LazyVolume(args.volume)
        spatial = vol.spatial
        units = _volume_units(args, float(vol.sample().min()))  # a regular sub-sample: the file is not read whole
        convert = hu_to_attenuation() if units == "hu" else (lambda v: v)
        g = scan_for_volume(vol.shape, vol.voxel_size, views, scan)
        h, w = vol.shape[1:]

        def slab(z0: int, s: int) -> torch.Tensor:
            return convert(torch.from_numpy(vol.read((z0, 0, 0), (s, h, w))))

        source = {"volume": str(args.volume)}
    else:
        size = 64 if args.size is None else integer("--size", args.size, 4)
        phantom = args.phantom or "shepp-logan"
        g = standard_cone_beam(size, views, scan=scan)
        radius = 0.45 * size
        if phantom == "textured":  # drawn on the voxel grid: made whole, then handed out slab by slab
            whole = _phantom_volume(phantom, size, args.seed)

            def slab(z0: int, s: int) -> torch.Tensor:
                return whole[z0:z0 + s]
        else:
            ell = shepp_logan_3d(radius) if phantom == "shepp-logan" else random_ellipsoids(10, radius, seed=args.seed)

            def slab(z0: int, s: int) -> torch.Tensor:  # 1 mm voxels, the volume centred on the origin
                return voxelize(ell, (s, size, size), vol_offset=(z0 + 0.5 * (s - 1) - 0.5 * (size - 1), 0.0, 0.0),
                                supersample=2)

        source = {"phantom": phantom}
    return simulate_store(args, g, slab, noise, source_meta(args, source, units, spatial))


def import_walnut(args: argparse.Namespace) -> int:
    """A Walnut CBCT orbit folder -> our measurements file (line integrals + geometry)."""
    from ..data import read_walnut
    from ..io import check_not_input, check_pt_name, resolve_output, save_measurements

    out = check_pt_name(args.out, "measurements")
    check_not_input([out], [Path(args.folder) / args.geometry_file])
    resolve_output(out, args.force)
    t0 = time.perf_counter()
    y, g = read_walnut(args.folder, geometry_file=args.geometry_file, vol_shape=tuple(args.vol_shape),
                       voxel_size=args.voxel_size, view_step=args.view_step, binning=args.binning,
                       progress=_show_progress(args))
    meta = {"source": "walnut", "folder": str(args.folder), "geometry_file": args.geometry_file,
            "view_step": args.view_step, "binning": args.binning}
    save_measurements(out, y, g, meta=meta, force=args.force)
    seconds = time.perf_counter() - t0
    emit(args, {"out": args.out, "sino_shape": list(y.shape), "vol_shape": list(g.vol_shape),
                 "voxel_size": list(g.voxel_size), "seconds": round(seconds, 3)},
          f"wrote {args.out}: {g.n_views} views of {g.det_shape[0]} x {g.det_shape[1]} pixels, "
          f"volume {g.vol_shape} of {g.voxel_size[0]:g} mm voxels ({seconds:.1f} s)")
    return 0


def fit_normal(args: argparse.Namespace) -> int:
    from ..io import check_not_input, check_pt_name, load_measurements, resolve_output
    from ..normal import DiagCirculantNormal, fit_normal as fit_h, relative_error, save_normal
    from ..physics import ConeBeamCT

    iters = integer("--iters", args.iters, 1)
    lr = real("--lr", args.lr, positive=True)
    out = check_pt_name(args.out, "operator")
    check_not_input([out], [args.measurements])
    resolve_output(out, args.force)
    _, g, _, _ = load_measurements(args.measurements)
    _note(args, f"estimating ||A|| of the {g.vol_shape} scan")
    physics = ConeBeamCT(g, normalize=True, progress=_show_progress(args))
    check_field_of_view(float(physics.operator_norm), args.measurements)
    H = DiagCirculantNormal.for_physics(physics, g.vol_shape, kernel_radius=args.kernel_radius)
    hist = fit_h(H, physics, n_iter=iters, lr=lr, progress=_show_progress(args))
    err = relative_error(H, physics)
    save_normal(H, out, force=args.force)  # with the fingerprint of the geometry it was fitted for
    emit(args, {"out": args.out, "relative_error": err, "first_batch_error": hist[0]},
          f"wrote {args.out}: relative error of H {err:.4f} (started at {hist[0]:.4f})")
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    """``unrolled3d reconstruct``: the files around :func:`unrolled3d.api.reconstruct_detailed`,
    which applies the rules (units, the model's normalisation, the scale check, the plan)."""
    from ..api import reconstruct_detailed
    from ..io import check_not_input, check_volume_target, load_measurements, volume_files, write_volume
    from ..metrics import psnr

    from .mri import MRI_METHODS, is_mri_input, reconstruct_mri, refuse_mri_model

    if args.method in MRI_METHODS or is_mri_input(args.measurements):  # MRI k-space (or an MRI method)
        return reconstruct_mri(args)
    args.method = args.method or "fdk"
    # Everything about the output is checked before minutes of computing: its ending, that it is
    # none of the inputs (the .npy sidecar included), that it may be replaced.
    unrolled = _check_reconstruct_options(args)
    check_preview(args)
    if unrolled:
        refuse_mri_model(args.weights)
    if is_store_path(args.measurements) or is_store_path(args.out):  # streamed, slab by slab and patch by patch
        return reconstruct_store(args)
    if not unrolled and args.memory_budget is not None:
        raise ValueError("--memory-budget applies to --method unrolled, or to FDK of a Zarr store (streamed)")
    check_not_input(volume_files(args.out), [args.measurements, args.weights, args.normal])
    check_volume_target(args.out, args.force)
    device = _device(args.device)
    y, g, x_true, meta = load_measurements(args.measurements)
    spatial = output_spatial(meta, g, args.measurements)  # the input volume's affine, written back
    if unrolled and args.patch_size is not None and any(args.patch_size > n for n in g.vol_shape):
        raise ValueError(f"--patch-size {args.patch_size} is larger than the volume {tuple(g.vol_shape)}")
    norm = known_norm(meta, g, args.measurements, unrolled, device, _show_progress(args))
    result = reconstruct_detailed(
        y, g, model=args.weights if unrolled else None, method=args.method, memory_budget=args.memory_budget,
        normal=args.normal, progress=_show_progress(args), patch_size=args.patch_size if unrolled else None,
        device=device, norm=norm, measure_memory=unrolled and
        args.patch_size is None, scale_check=getattr(args, "scale_check", "check"),
        fdk_window=getattr(args, "fdk_window", None), precision=getattr(args, "precision", "auto") if unrolled else None,
        n_sweeps=args.sweeps if unrolled else None, overlap=args.overlap if unrolled else None,
        self_ensemble=getattr(args, "self_ensemble", "none"))
    x = result.volume
    if not unrolled and bool(y.any()) and not bool(x.any()):
        check_field_of_view(0.0, args.measurements)  # measurements, but nothing of them reaches the volume
    # format from the ending, the input volume's affine and voxel size
    out_volume = result.in_model_units()[0, 0]
    write_volume(args.out, out_volume, force=args.force, spatial=spatial)
    payload = {"out": args.out, "seconds": round(result.seconds, 3), "method": args.method}
    units = "attenuation (1/mm)" if not unrolled else result.model_units
    assert units is not None  # an unrolled result records its model's normalization (its units)
    if write_preview(args, out_volume, g.vol_shape, units) is not None:
        payload["preview"] = args.preview
    if unrolled:
        payload.update(self_ensemble=getattr(args, "self_ensemble", "none"))
        payload.update(normalization=result.normalization, units=result.model_units,
                       scale_check=result.scale.to_dict() if result.scale else None)
    if result.plan:
        payload.update(result.plan)
    if result.peak_bytes is not None:
        payload.update(measured_peak_mib=round(result.peak_bytes / 2**20, 1))
    if x_true is not None:
        payload["psnr"] = psnr(x.cpu(), x_true)
    emit(args, payload, f"wrote {args.out} ({args.method}, {result.seconds:.1f} s"
                         + (f", PSNR {payload['psnr']:.2f} dB)" if "psnr" in payload else ")"))
    return 0


def _check_reconstruct_options(args: argparse.Namespace) -> bool:
    """The options of ``reconstruct`` that go together (before any file is read); whether unrolled."""
    if args.method == "fdk":
        given = [f for f, v in (("--weights", args.weights), ("--normal", args.normal),
                                ("--patch-size", args.patch_size), ("--overlap", args.overlap is not None),
                                ("--sweeps", args.sweeps is not None),
                                ("--self-ensemble", getattr(args, "self_ensemble", "none") != "none")) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --method unrolled, not to FDK")
        return False
    if getattr(args, "fdk_window", None) is not None:  # the network was trained from one start point
        raise ValueError("--fdk-window applies to --method fdk: the network's start point is the FDK it was "
                         "trained with")
    if args.sweeps is not None:
        integer("--sweeps", args.sweeps, 1)
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be a fraction in [0, 1) of the patch edge, got {args.overlap}")
    if args.weights is None:
        raise ValueError("--method unrolled needs --weights (a model file written by `unrolled3d train`, or a "
                         "shipped model: heads_ct, demo_ct)")
    if args.patch_size is not None:
        integer("--patch-size", args.patch_size, 1)
        if args.memory_budget is not None:
            raise ValueError("give either --patch-size or --memory-budget, not both")
    return True


# ---------------------------------------------------------------------------------- train
def load_train_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """The tables of a TOML training configuration, every key checked and the defaults filled in
    (:meth:`unrolled3d.training.RunConfig.from_toml`, as plain dictionaries; ``[train] out_dir``
    kept where the file gives it).

    The training volumes are synthetic phantoms (``[phantoms]``, the default) or volume files
    (``[data]``, see :mod:`unrolled3d.cli.train_data`); a configuration with both is refused.
    Unknown sections and keys, and values of the wrong kind (``size = 16.7`` where an integer is
    meant: refused, not truncated; a string where a number is meant) raise a
    :class:`~unrolled3d.errors.FileFormatError` naming the file and the ``[section] key``.
    """
    from ..training import RunConfig

    run = RunConfig.from_toml(path)
    return {**run.to_dict(), "train": run.train.to_table()}


def _initial_weights(run: Any, config_path: Path) -> tuple[dict, dict[str, Any]] | None:
    """The weights ``[model] init`` names (a model file, relative to the TOML), checked against ``[model]``.

    Fine-tuning starts from them instead of random weights; the file must hold the same
    architecture (:data:`unrolled3d.models.config.ARCHITECTURE`), else a :class:`FileFormatError`
    names the key. Returns ``None`` without ``init``, else ``(state_dict, record)`` where the
    record (path and SHA-256 of the file) goes into the new model file's configuration.
    """
    from ..io import load_model
    from ..models import ModelConfig

    init = run.model.init
    if init is None:
        return None
    path = (config_path.resolve().parent / init).resolve()  # an absolute init stays as it is
    if not path.is_file():
        raise FileNotFoundError(f"[model] init {init!r} of {config_path}: no model file at {path}")
    weights, init_cfg = load_model(path)
    try:
        theirs = ModelConfig.from_dict(init_cfg["model"]).architecture()
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, str(exc)) from None
    mine = run.model.architecture()
    differ = [f"{k} {theirs[k]!r} there, {mine[k]!r} here" for k in mine if theirs[k] != mine[k]]
    if differ:
        raise FileFormatError(config_path, f"[model] init {init!r} holds another architecture ({'; '.join(differ)}): "
                                           f"fine-tuning needs the same [model] n_iter, base, depth and shared")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return weights, {"path": str(path), "sha256": digest}


def _file_data(run: Any, config_path: str | Path):
    """The ``[data]`` sets (files checked: headers, sizes, normalisation), ``None`` for phantoms."""
    if run.data is None:
        return None
    try:
        from .train_data import build_file_data  # the training stack: imported by `train` alone

        return build_file_data(run.data, run.geometry.size, Path(config_path).resolve().parent)
    except ValueError as exc:
        if isinstance(exc, FileFormatError):  # names the volume file already
            raise
        raise FileFormatError(config_path, str(exc)) from None


def _training_set(run: Any, file_data: Any, physics: Any, args: argparse.Namespace):
    """``(dataset, validation pairs or None, what the model file records of the data)``."""
    from ..data import IntensityNormalization, PhantomDataset

    size = run.geometry.size
    if file_data is None:
        phantoms = PhantomDataset(100_000, (size,) * 3, kind=run.phantoms.kind, seed=run.phantoms.seed)
        return phantoms, None, {"normalization": IntensityNormalization().to_dict()}
    dataset, val_set, held_out, norm = file_data
    _note(args, f"training on random {size}^3 blocks of {len(dataset.paths)} file(s)"
                + (f", {len(held_out)} held out" if held_out else "") + f", normalisation {norm.kind}")
    val_data = None
    if val_set is not None:
        # the validation scans carry the training noise, drawn once from the data seed
        gen = torch.Generator().manual_seed(run.data.seed)
        val_data = []
        with torch.no_grad():
            for i in range(len(val_set)):
                x = val_set[i][None]
                y = physics.A(x)
                val_data.append((x, y + run.train.noise_std * torch.randn(y.shape, generator=gen)))
    recorded = {"normalization": norm.to_dict(),
                "data_files": {"train": [str(p) for p in dataset.paths], "held_out": [str(p) for p in held_out]}}
    return dataset, val_data, recorded


def _training_records(dataset: Any, physics: Any, noise_std: float, args: argparse.Namespace) -> dict[str, Any]:
    """What a model file records of its training scans: their scale and ``||A||`` of the scan."""
    from ..models.scale import measure_training_scale
    from ..physics.norm import norm_record

    _note(args, "measuring the scale of the training scans")
    scale = measure_training_scale(dataset, physics, noise_std)
    return {"training_scale": scale.to_dict(),
            "operator_norm": norm_record(physics.geometry, float(physics.operator_norm))}


def train_cmd(args: argparse.Namespace) -> int:
    from .. import training
    from ..io import resolve_output, save_model
    from ..models import build_model
    from ..physics import ConeBeamCT, standard_cone_beam

    run = training.RunConfig.from_toml(args.config)
    file_data = _file_data(run, args.config)  # the files and the start are checked before the folder is touched
    initial = _initial_weights(run, Path(args.config))
    out_dir_given = args.out_dir if args.out_dir is not None else run.train.out_dir
    if out_dir_given is None:
        raise ValueError("give --out-dir (or out_dir in the config's [train] section)")
    out_dir = Path(out_dir_given)
    training.RunFolder.check_start(args.resume, args.overwrite)
    folder = training.RunFolder(out_dir, checkpoints="checkpoints", outputs=("model.pt",))
    command = shlex.join(["unrolled3d", *args.argv])
    with folder.claim(command):
        model_path = out_dir / "model.pt"
        resolve_output(model_path)  # a read-only model.pt fails now: not archived, not after the training
        folder.prepare(resume=args.resume, overwrite=args.overwrite)
        if folder.archived_to is not None:
            _note(args, f"archived the previous run to {folder.archived_to}")
        if folder.removed_temporaries:
            _note(args, f"removed {len(folder.removed_temporaries)} temporary file(s) of an interrupted save")
        size = run.geometry.size
        val_metric = None
        if run.mri is not None:  # complex images, multi-coil k-space, a mask per item
            from ..metrics import magnitude_psnr
            from .mri_train import mri_training_setup

            physics, dataset, val_data, recorded = mri_training_setup(run, file_data, lambda t: _note(args, t))
            val_metric = magnitude_psnr
        else:
            physics = ConeBeamCT(standard_cone_beam(size, run.geometry.views), normalize=True,
                                 progress=_show_progress(args))
            dataset, val_data, recorded = _training_set(run, file_data, physics, args)
        torch.manual_seed(run.train.seed)
        rec = build_model(run, (size,) * 3)
        if initial is not None:  # fine-tuning; a resumed run then loads its checkpoint over these
            rec.load_state_dict(initial[0])
            recorded["init"] = initial[1]
            _note(args, f"starting from the weights of {initial[1]['path']}")
        tcfg = dataclasses.replace(run.train, out_dir=None, progress=_show_progress(args))
        resume_cmd = shlex.join(["unrolled3d", "train", str(args.config), "--out-dir", str(out_dir), "--resume"])
        args.interrupt_hint = f"the checkpoints written so far are in {folder.checkpoint_dir}: continue with `{resume_cmd}`"
        log = training.train(rec, physics, dataset, tcfg, resume=args.resume, run_info=run.identity(),
                             val_data=val_data, folder=folder, val_metric=val_metric)
        if log["resumed_checkpoint"]:
            _note(args, f"resumed from {log['resumed_checkpoint']} (step {log['resumed_from']})")
        args.interrupt_hint = ""
        # the model file records how the training volumes were scaled (reconstruct applies the same),
        # the scale of the training scans (reconstruct checks new scans against it) and ||A||
        if run.mri is None:  # MRI: k-space is scaled by its zero-filled image's percentile, no scan scale check
            recorded.update(_training_records(dataset, physics, run.train.noise_std, args))
        save_model(model_path, rec, {**run.to_dict(), **recorded, "command": command})
    payload = {"model": str(model_path), "steps": log["step"], "final_loss": log["losses"][-1],
               "resumed_from": log["resumed_checkpoint"], "skipped_checkpoints": log["skipped_checkpoints"],
               "fingerprint": log["fingerprint"], "normalization": recorded["normalization"]}
    if log["val"]:
        payload["val"] = log["val"]
    last_val = f", validation PSNR {log['val'][-1]['psnr']:.2f} dB" if log["val"] else ""
    emit(args, payload, f"wrote {model_path} after {log['step']} steps (last loss {log['losses'][-1]:.3e}{last_val})")
    return 0
