"""The ``unrolled3d`` command line: the parser, and the dispatch to :mod:`unrolled3d.cli.commands`.

Nothing here imports torch before the arguments are parsed, so ``--help`` answers at once
(tested: under a second, without importing torch).

Exit status: 0 on success; 2 and one line on stderr for every expected failure (a bad argument
or file, a refused output, a diverged fit, an out-of-memory error); 130 and one line on Ctrl-C
(SIGINT), 143 on SIGTERM (what schedulers, ``timeout`` and container stops send) and 129 on
SIGHUP, handled alike: the temporary file of a write under way is removed, and ``train`` says
how to resume; 141, in silence, when the reader of stdout has gone (``unrolled3d info | head -1``);
1 and one line for anything else, which is a bug: ``--debug`` shows its traceback (and the
traceback of any other failure).

The installed ``unrolled3d`` program runs :func:`run`, which calls :func:`main` and then ignores
Ctrl-C and SIGTERM while the interpreter shuts down: the work is done and written by then, and a
signal arriving in that last second would otherwise print a traceback from a library's finalizer.
A command that writes nothing (``info``) ends there with ``os._exit``, without the teardown.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, Sequence

from .bench import BENCH_SUITES

__all__ = ["main", "run", "build_parser", "FDK_WINDOWS", "PHANTOMS", "SELF_ENSEMBLES"]

#: ``reconstruct --fdk-window``: the ramp filter's windows (:data:`unrolled3d.physics.fdk.FDK_WINDOWS`,
#: restated so that the parser imports no torch; a test keeps the two equal)
FDK_WINDOWS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
#: ``reconstruct --self-ensemble`` (:data:`unrolled3d.models.ensemble.SELF_ENSEMBLES`, restated for the same
#: reason; a test keeps the two equal)
SELF_ENSEMBLES = ("none", "flips", "flips+conj")
#: ``simulate --phantom``
PHANTOMS = ("shepp-logan", "ellipsoids", "textured")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings (no progress)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (for scripts; no progress)")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure (for bug reports)")


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace a read-only output file (and, for .npy, an unrelated .json of the same name); "
                        "an output is never written over an input of the command")


def _add_scan_commands(sub) -> None:
    """``demo``, ``simulate``, ``fit-normal``."""
    p = sub.add_parser("demo", help="sparse-view cone-beam CT of held-out phantoms: FDK vs the shipped "
                                    "partitioned unrolled network (CPU, no downloads)")
    p.add_argument("--weights", help="model file from `unrolled3d train` (default: the shipped demo weights)")
    p.add_argument("--size", type=int, help="volume edge in voxels (default: the training size)")
    p.add_argument("--volumes", type=int, default=2, help="held-out phantoms to score (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    p.add_argument("--out", default="unrolled3d_demo.png", help="PNG of orthogonal slices (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny run (one 24^3 volume) for smoke tests")
    _common(p)
    _force(p)
    p.set_defaults(command_name="demo")

    p = sub.add_parser("simulate", help="phantom (or a volume file) + cone-beam scan -> measurements file (.pt); "
                                        "--modality mri: multi-coil k-space file (.pt)")
    p.add_argument("--modality", choices=["ct", "mri"], default="ct",
                   help="ct: cone-beam projections (default); mri: the volume as the magnitude of a complex image "
                        "(smooth random phase), multi-coil k-space undersampled by a mask")
    p.add_argument("--phantom", choices=PHANTOMS,
                   help="shepp-logan (default), ellipsoids (random, drawn with --seed) or textured (soft tissue, "
                        "organs, fine texture and trabecular-like sheets on the voxel grid, drawn with --seed; "
                        "training's [phantoms] kind = \"textured\")")
    p.add_argument("--size", type=int, help="phantom volume edge in voxels, 1 mm voxels (default 64)")
    p.add_argument("--volume", metavar="FILE",
                   help="use this volume as the phantom (.npy, .nii, .nii.gz, .h5, .hdf5, .tif, .tiff, .pt; "
                        "its voxel size is kept) instead of --phantom/--size")
    p.add_argument("--views", type=int, help="CT: projections over the orbit, equally spaced (default 30)")
    p.add_argument("--short-scan", action="store_true",
                   help="CT: a short scan (180 degrees plus the fan angle, Parker-weighted FDK) instead of a full 360")
    p.add_argument("--coils", type=int, help="MRI: receive coils (birdcage maps, default 8)")
    p.add_argument("--acceleration", type=float, metavar="R",
                   help="MRI: undersampling factor, 1/R of the phase-encode lines sampled (default 8)")
    p.add_argument("--mask", choices=["poisson", "random"],
                   help="MRI: Poisson-disc (default) or variable-density random sampling, centre fully sampled")
    p.add_argument("--units", choices=["auto", "attenuation", "hu"], default="auto",
                   help="the --volume's values: attenuation in 1/mm, or Hounsfield units (converted to attenuation "
                        "before projecting); auto (default): HU when its smallest value is below -500")
    p.add_argument("--noise", type=float, default=None,
                   help="Gaussian noise (default 0.01). CT: its std on the normalised measurements A x / ||A|| (the "
                        "convention of [train] noise_std, so 0.02 is the shipped models' training noise); MRI: its "
                        "std per real channel of the sampled k-space, relative to the image's largest magnitude")
    p.add_argument("--noise-relative", type=float, default=None, metavar="FRACTION",
                   help="CT, instead of --noise: its std as a fraction of the largest line integral (what --noise "
                        "meant before)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise, of the random phantoms and (MRI) of the phase and mask (default %(default)s)")
    p.add_argument("--output", "--out", dest="out", required=True, metavar="FILE",
                   help="measurements file: .pt, or a Zarr store (.zarr) written slab by slab for large volumes; MRI: "
                        "a k-space file (.pt) with coil maps, mask and voxel size")
    _common(p)
    _force(p)
    p.set_defaults(command_name="simulate")

    p = sub.add_parser("fit-normal", help="fit and save the diagonal-circulant H for a measurement file's geometry")
    p.add_argument("measurements", help="measurements file written by `unrolled3d simulate` or `import-walnut`")
    p.add_argument("--iters", type=int, default=200,
                   help="Adam steps of the fit, one random probe each (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (default %(default)s)")
    p.add_argument("--kernel-radius", type=int, default=None, metavar="VOXELS",
                   help="cut H's kernel to lags |l| <= VOXELS: smaller FFT grids on patches, larger error "
                        "(default: every lag)")
    p.add_argument("--out", required=True, help="operator file (.pt)")
    _common(p)
    _force(p)
    p.set_defaults(command_name="fit_normal")


def _add_train_command(sub) -> None:
    """``train``."""
    p = sub.add_parser("train", help="train a partitioned unrolled network from a TOML config (resumable)")
    p.add_argument("config", help="TOML file; sections [geometry] [phantoms] or [data] (volume files) [model] "
                                  "[partition] [train]")
    p.add_argument("--out-dir", help="checkpoints and model.pt go here (default: [train] out_dir of the config); "
                                      "a folder belongs to one run")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest readable checkpoint in --out-dir (same configuration only)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out-dir that holds another run: its files are moved to "
                        "<out-dir>/archived/<time>/ first")
    _common(p)
    p.set_defaults(command_name="train_cmd")


def _add_other_commands(sub) -> None:
    """``reconstruct``, ``import-walnut``, ``bench``, ``info``."""
    p = sub.add_parser("reconstruct", help="measurements -> volume file: FDK or partitioned unrolled (CT); "
                                           "zero-filled, CG-SENSE or partitioned unrolled (MRI k-space)")
    p.add_argument("measurements", help="measurements file (.pt from `simulate` or `import-walnut`, or a .zarr store; "
                                        "or an MRI k-space file from `simulate --modality mri`)")
    p.add_argument("--method", choices=["fdk", "unrolled", "zero-filled", "cg-sense"],
                   help="fdk (filtered backprojection; CT, the default for CT), cg-sense (MRI, the default for "
                        "k-space), zero-filled (MRI), unrolled (either: the partitioned network of --weights)")
    p.add_argument("--fdk-window", choices=FDK_WINDOWS, default=None,
                   help="the ramp filter's window of --method fdk (default ram-lak; hann smooths noise). The "
                        "network's start point keeps the FDK it was trained with")
    p.add_argument("--cg-iters", type=int, help="CG-SENSE iterations (default 2, chosen on validation heads)")
    p.add_argument("--cg-lam", type=float, help="CG-SENSE Tikhonov weight (default 0, chosen on validation heads)")
    p.add_argument("--weights", help="model file written by `unrolled3d train`, or a shipped CT model: heads_ct, "
                                     "demo_ct (method unrolled)")
    p.add_argument("--patch-size", type=int,
                   help="patch edge of the unrolled method (default: the largest that fits the memory budget, the "
                        "whole volume when it fits)")
    p.add_argument("--scale-check", choices=["check", "warn", "rescale", "ignore"], default="check",
                   help="measurements of another scale than the model's training scans: 'check' warns beyond 3x "
                        "and refuses beyond 10x, 'warn' only warns, 'rescale' brings them to the training scale "
                        "(the output back), 'ignore' (default %(default)s)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="memory the reconstruction may use, e.g. 512M, 2G (GPU memory on a GPU, resident memory on "
                        "the CPU beyond what the loaded libraries hold; default half of what is available): sizes "
                        "the patch (measured on trial patches) and, for Zarr stores, the slabs")
    p.add_argument("--overlap", type=float, metavar="FRACTION",
                   help="share of the patch edge that neighbouring patches overlap, in [0, 1) (default 0.25; "
                        "unused when the whole volume is one patch)")
    p.add_argument("--sweeps", type=int, metavar="N",
                   help="passes over the patch grid, each taking its context from the previous one (default 1)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the network's arithmetic (the data step is float32): bfloat16 where the CPU or GPU runs it "
                        "natively (auto, the default: no loss measured on held-out real volumes), or as given")
    p.add_argument("--self-ensemble", choices=list(SELF_ENSEMBLES), default="none",
                   help="method unrolled: average the network's answers over the 8 flips of the volume's axes "
                        "('flips': +0.11 dB for heads_ct on held-out heads, 8x the network's time), times complex "
                        "conjugation for MRI ('flips+conj': +0.10 dB for mri_heads stage 3, 16x); default %(default)s")
    p.add_argument("--normal", help="operator file from `unrolled3d fit-normal`: use H on the patches")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--preview", metavar="PNG",
                   help="also write a PNG of three orthogonal central slices (window, colour bar in the output's "
                        "units, slice indices)")
    p.add_argument("--output", "--out", dest="out", required=True, metavar="FILE",
                   help="volume file; the ending picks the format: .npy (+ .json voxel size), .nii, .nii.gz, "
                        ".h5, .hdf5, .tif, .tiff, .pt (the scan's voxel size is stored); MRI: the magnitude image")
    _common(p)
    _force(p)
    p.set_defaults(command_name="reconstruct")

    p = sub.add_parser("import-walnut", help="a Walnut CBCT orbit folder (e.g. Walnut1/Projections/tubeV2) "
                                             "-> measurements file (.pt)")
    p.add_argument("folder", help="folder with di000000.tif, io00000[01].tif, scan_NNNNNN.tif and the .geom files")
    p.add_argument("--output", "--out", dest="out", required=True, metavar="FILE", help="measurements file (.pt)")
    p.add_argument("--view-step", type=int, default=1,
                   help="keep every N-th view (default 1: all 1200; at most 1199, which keeps two)")
    p.add_argument("--vol-shape", type=int, nargs=3, default=[501, 501, 501], metavar=("D", "H", "W"),
                   help="reconstruction volume in voxels (default 501 501 501, as the data set's authors)")
    p.add_argument("--voxel-size", type=float, default=0.1, metavar="S", help="cubic voxel edge in mm (default 0.1)")
    p.add_argument("--binning", type=int, default=1, help="average B x B detector pixels (default 1: none)")
    p.add_argument("--geometry-file", default="scan_geom_corrected.geom",
                   help="geometry file in the folder (default %(default)s; or scan_geom_original.geom)")
    _common(p)
    _force(p)
    p.set_defaults(command_name="import_walnut")

    p = sub.add_parser("bench", help="run the benchmark suites (pytest-benchmark) and write bench/results/report.md")
    p.add_argument("--suite", nargs="+", default=["all"],
                   help=f"suites to run: {', '.join(BENCH_SUITES)} or all (default all; takes long)")
    p.add_argument("--select", "-k", metavar="EXPR", help="pytest -k expression to run only some cases")
    p.add_argument("--quick", action="store_true",
                   help="the quick selection: small sizes, one round each (a few minutes on 2 cores)")
    p.add_argument("--sizes", metavar="N,N", help="volume sizes of the cases, comma-separated (e.g. 64,128)")
    p.add_argument("--results", help="folder for <suite>_<device>.json and report.md (default: bench/results in a "
                                     "source checkout, ./bench-results otherwise)")
    p.add_argument("--bench-dir", help="a bench/ folder to run (default: the suites installed with the package, "
                                       "or the source checkout's)")
    _common(p)
    p.set_defaults(command_name="bench_cmd")

    p = sub.add_parser("info", help="which backends (C++ CPU, CUDA, Triton) this installation has, and why not")
    _common(p)
    p.set_defaults(command_name="info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unrolled3d", description="Memory-efficient unrolled reconstruction of large 3D volumes."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_scan_commands(sub)
    _add_train_command(sub)
    _add_other_commands(sub)
    return parser


def _version() -> str:
    from .. import __version__  # the package's __init__ imports no torch

    return __version__


#: failures the user can fix (arguments, files, refused outputs, a diverged run, memory): one line, exit 2.
#: RuntimeError is here because torch reports running out of memory with it.
_EXPECTED = (ValueError, TypeError, OSError, ImportError, ArithmeticError, RuntimeError, MemoryError)
#: a word (a path, a value) longer than this is shortened in an error line: a 200 KB path argument
#: must not become a 200 KB message
_LONGEST_WORD = 200


def _shorten(word: str) -> str:
    if len(word) <= _LONGEST_WORD:
        return word
    return f"{word[:100]}...{word[-40:]} ({len(word)} characters)"


def _one_line(exc: BaseException) -> str:
    text = " ".join(_shorten(w) for w in str(exc).split())
    if isinstance(exc, MemoryError):  # numpy: "Unable to allocate 3.6 TiB for an array ..."; Python: ""
        text = f"not enough memory{': ' + text if text else ''}"
    return text or type(exc).__name__


def _one_line_warnings(command: str):
    """A ``warnings.showwarning`` that prints one line (``unrolled3d train: warning: ...``), not
    Python's two-line form with a source line."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        print(f"unrolled3d {command}: warning: {_one_line(message)}", file=sys.stderr)

    return show


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is (as SIGINT raises ``KeyboardInterrupt``), so
    that the same clean-up runs: the ``finally`` blocks, the removal of a temporary file."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    for sig in _TERMINATING:  # one signal is enough: the clean-up is not interrupted by a second
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _handle_termination() -> dict[int, Any]:
    """Route SIGTERM and SIGHUP to :class:`Terminated`; the previous handlers (to restore). Only the
    main thread may set handlers: elsewhere (main() called from a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_terminated) for sig in _TERMINATING}


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """One line for Ctrl-C, SIGTERM or SIGHUP (with ``train``'s resume hint); the exit status 128 + signal."""
    signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    hint = getattr(args, "interrupt_hint", "")
    print(f"unrolled3d {args.command}: {what}{'; ' + hint if hint else ''}", file=sys.stderr)
    return 128 + int(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    import warnings

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    global _last_command
    _last_command = args.command_name
    shown = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _one_line_warnings(args.command)
    handlers = _handle_termination()
    try:
        import torch

        from . import commands

        # Denormal floats (e.g. blending weights times tiny activations) make CPU convolutions several
        # times slower (5x measured on the demo's inference); flushing them to zero costs no accuracy here.
        torch.set_flush_denormal(True)
        return getattr(commands, args.command_name)(args)
    except KeyboardInterrupt as exc:
        from ..io.atomic import remove_own_temporaries
        from ..io.stores import remove_own_temporary_stores

        remove_own_temporaries()  # of a write the signal caught just after its temporary file was made
        remove_own_temporary_stores()  # and of a store the signal caught before its maker's caller held it
        if args.debug:
            raise
        return _interrupted(args, exc)
    except BrokenPipeError:  # the reader of stdout left (`unrolled3d info | head -1`): nobody to tell
        return _BROKEN_PIPE
    except _EXPECTED as exc:
        if args.debug:
            raise
        print(f"unrolled3d {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line, and how to see more
        if args.debug:
            raise
        print(f"unrolled3d {args.command}: internal error ({type(exc).__name__}: {_one_line(exc)}); this is a bug: "
              f"rerun with --debug for the traceback", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown  # main() may be called from a program: leave its warnings and
        for sig, handler in handlers.items():  # signal handlers as they were
            signal.signal(sig, handler)


def run() -> None:
    """The ``unrolled3d`` program: :func:`main` on ``sys.argv``, then exit with its status.

    Once :func:`main` has returned, a Ctrl-C or SIGTERM has nothing left to stop: they are ignored
    while the interpreter shuts down (a signal there would interrupt a library's finalizer and print
    its traceback, measured with torch's operator registrations). A program calling :func:`main`
    keeps its own handlers.
    """
    status = main()
    for sig in (signal.SIGINT, *_TERMINATING):
        signal.signal(sig, signal.SIG_IGN)
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left (`unrolled3d info | head -1`): as cat, stop in silence
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())  # the exit's own flush must not fail
            status = status or _BROKEN_PIPE
        except OSError:  # a full disk under a redirected stream: the ordinary exit reports it
            flushed = False
    if flushed and _last_command in _WRITE_NOTHING:
        os._exit(status)
    sys.exit(status)


#: commands that write no file and leave nothing to flush but stdout and stderr: :func:`run` ends
#: them without the interpreter's teardown, which frees torch's objects one by one and unloads its
#: libraries: 0.45 s of the 2.0 s ``info`` took (measured: ``import torch`` alone 1.8 s as a whole
#: process, 1.3 s when it ends with ``os._exit``). Commands that write keep the ordinary exit, with
#: its ``atexit`` hooks and finalizers.
_WRITE_NOTHING = frozenset({"info"})
#: the exit status when the reader of stdout has gone, as a program killed by SIGPIPE (128 + 13)
_BROKEN_PIPE = 128 + 13
#: the command :func:`main` ran last (for :func:`run`)
_last_command: str | None = None
