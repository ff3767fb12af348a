"""Loading of the compiled extension (prebuilt, built on first use, or none), the backend
switches' vocabulary, and the backend report.

**One vocabulary** for both backend switches (:data:`BACKENDS`):

* ``auto`` (default): the compiled kernels where they can run, else the PyTorch reference twins;
* ``compiled``: the compiled kernels, or an error where they cannot run;
* ``reference``: the pure-PyTorch reference twins (correct, slow: for debugging and as oracles).

``UNROLLED3D_EXTENSION`` chooses it for the cone-beam projector (C++/OpenMP and CUDA), once, when
:mod:`unrolled3d.ops` is first imported: its ops are registered once per process.
``UNROLLED3D_FUSED_BACKEND`` chooses it for the fused ops (Triton) at import too, and
:func:`unrolled3d.ops.set_backend` / :func:`~unrolled3d.ops.use_backend` switch those later, per
call. The words of the previous release, ``twins`` (projector) and ``triton`` (fused ops), still
work with a ``DeprecationWarning``, until the next release.

Where the compiled projector comes from, in order:

1. **prebuilt**: ``unrolled3d._C``, compiled by ``pip install --no-build-isolation`` against the torch
   installed then. ``setup.py`` writes ``_C_build.json`` beside it (the torch and CUDA it was built
   for); a prebuilt extension built for another torch is skipped *before* it is imported, because a
   mismatched library may import and then crash, and its op registrations could not be undone.
2. **jit**: the sources (``csrc/``, shipped in the wheel as ``unrolled3d/csrc``) compiled with
   ``torch.utils.cpp_extension.load`` into the user's cache, one folder per torch version, CUDA
   version and source hash, so a new torch or a new release builds once and is then reused.
3. nothing compiled can be had (no compiler, a failed build): under ``auto``, ``unrolled3d.ops``
   registers the pure-PyTorch reference twins under the same op names, with a ``UserWarning``.

``UNROLLED3D_EXTENSION`` also takes ``prebuilt`` or ``jit``: ``compiled``, from that source only.
``UNROLLED3D_CACHE_DIR`` moves the cache (default ``$XDG_CACHE_HOME/unrolled3d`` or
``~/.cache/unrolled3d``); ``NO_CUDA=1`` builds the JIT extension without its CUDA twin.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

__all__ = ["load_extension", "extension_status", "backends", "cache_dir", "source_dir", "jit_build",
           "EXTENSION_MODES", "BACKENDS", "backend_word"]

_CUDA_REASONS = {
    0: "built",
    1: "not built: NO_CUDA=1 was set at build time",
    2: "not built: torch was a CPU-only build at build time",
    3: "not built: no CUDA toolkit (nvcc / CUDA_HOME) was found at build time",
}
# The same reason codes as setup.py's (compiled into the extension as U3D_CUDA_REASON).
CUDA_BUILT, CUDA_DISABLED_BY_USER, CUDA_TORCH_IS_CPU_ONLY, CUDA_NO_TOOLKIT = 0, 1, 2, 3

#: the values of both backend switches (module docstring)
BACKENDS = ("auto", "compiled", "reference")
#: the projector's switch also names the source of its compiled kernels
EXTENSION_MODES = BACKENDS + ("prebuilt", "jit")
#: the previous release's words, per switch: accepted with a DeprecationWarning
_DEPRECATED = {"UNROLLED3D_EXTENSION": {"twins": "reference"},
               "UNROLLED3D_FUSED_BACKEND": {"triton": "compiled"}, "backend": {"triton": "compiled"}}
_PACKAGE = Path(__file__).resolve().parent
# the compiled sources (as setup.py's CPU_SOURCES / CUDA_SOURCES) and the headers they include
_CPU_SOURCES = ("bindings.cpp", "cone_beam.cpp", "column_backproject.cpp", "fdk_backproject.cpp")
_CUDA_SOURCES = ("cone_beam_cuda.cu", "column_backproject_cuda.cu", "fdk_backproject_cuda.cu")
_HEADERS = ("cone_beam.h", "column_backproject.h", "fdk_backproject.h", "schemas.h", "view_consts_cuda.h")
_SOURCES = _CPU_SOURCES + _HEADERS + _CUDA_SOURCES

# What load_extension found: filled once per process (the ops can be registered only once).
_status: dict[str, Any] = {}
_module: Optional[ModuleType] = None


class ExtensionBuildError(RuntimeError):
    """The extension could not be built on first use (no compiler, or the compiler failed)."""


def backend_word(value: str, name: str, allowed: tuple = BACKENDS) -> str:
    """``value`` of the backend switch ``name`` in this release's words.

    Parameters
    ----------
    value : str
        What was asked for.
    name : str
        The switch (``"UNROLLED3D_EXTENSION"``, ``"UNROLLED3D_FUSED_BACKEND"`` or ``"backend"``,
        the argument of :func:`unrolled3d.ops.set_backend`), named in the messages.
    allowed : tuple of str
        Its values.

    Raises
    ------
    ValueError
        ``value`` is none of ``allowed`` and no deprecated word of ``name``.

    Examples
    --------
    >>> import warnings
    >>> from unrolled3d._build import backend_word
    >>> backend_word("reference", "UNROLLED3D_FUSED_BACKEND")
    'reference'
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     backend_word("triton", "UNROLLED3D_FUSED_BACKEND"), caught[0].category.__name__
    ('compiled', 'DeprecationWarning')
    """
    renamed = _DEPRECATED.get(name, {})
    if value in renamed:
        warnings.warn(f"{name}={value!r} is deprecated and will be removed in the next release: use "
                      f"{renamed[value]!r} (the backend words are {', '.join(BACKENDS)})", DeprecationWarning,
                      stacklevel=3)
        return renamed[value]
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


# --------------------------------------------------------------------------- where things are
def source_dir() -> Path:
    """The folder holding the C++/CUDA sources: ``unrolled3d/csrc`` in an installed wheel, the
    repository's ``csrc/`` in a source checkout (editable install).

    Raises
    ------
    FileNotFoundError
        When neither holds the sources.
    """
    for candidate in (_PACKAGE / "csrc", _PACKAGE.parent / "csrc"):
        if all((candidate / name).is_file() for name in _SOURCES):
            return candidate
    raise FileNotFoundError(f"the C++ sources ({', '.join(_SOURCES)}) are neither in {_PACKAGE / 'csrc'} nor in "
                            f"{_PACKAGE.parent / 'csrc'}")


def cache_dir() -> Path:
    """The root of the build cache: ``UNROLLED3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/unrolled3d``,
    else ``~/.cache/unrolled3d``."""
    if os.environ.get("UNROLLED3D_CACHE_DIR"):
        return Path(os.environ["UNROLLED3D_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unrolled3d"


def _torch_tag() -> tuple[str, str]:
    import torch

    return str(torch.__version__), (f"cu{torch.version.cuda}" if torch.version.cuda else "cpu")


def _cuda_plan() -> tuple[int, Optional[str]]:
    """(reason code, CUDA_HOME) for a JIT build: the CUDA twin only with a CUDA torch and nvcc."""
    import torch

    if os.environ.get("NO_CUDA", "0") == "1":
        return CUDA_DISABLED_BY_USER, None
    if torch.version.cuda is None:
        return CUDA_TORCH_IS_CPU_ONLY, None
    # torch guesses CUDA_HOME from the nvcc on PATH; prefer the toolkit matching torch's CUDA (as setup.py)
    home = os.environ.get("CUDA_HOME")
    for candidate in ([home] if home else []) + [f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"]:
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return CUDA_BUILT, candidate
    return CUDA_NO_TOOLKIT, None


def _build_key(sources: Path, cuda_code: int) -> str:
    """``ext-<torch>-<cuda tag>-<hash>``: a new torch, CUDA choice or source builds anew."""
    version, cuda = _torch_tag()
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (sources / name).read_bytes())
    digest.update(f"cuda={cuda_code}".encode())
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in version)
    return f"ext-{safe}-{cuda if cuda_code == CUDA_BUILT else 'cpu'}-{digest.hexdigest()[:12]}"


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


# --------------------------------------------------------------------------- the three paths
def _prebuilt() -> tuple[Optional[ModuleType], str]:
    """Import the prebuilt ``unrolled3d._C`` unless its record says it was built for another torch."""
    import torch

    record = _PACKAGE / "_C_build.json"
    if record.is_file():
        built_for = json.loads(record.read_text()).get("torch")
        if built_for != str(torch.__version__):
            return None, f"the prebuilt extension was built for torch {built_for}, this is torch {torch.__version__}"
    try:
        return importlib.import_module("unrolled3d._C"), ""
    except ImportError as exc:
        return None, f"no usable prebuilt extension ({exc})"


def jit_build(verbose: bool = False) -> tuple[ModuleType, Path]:
    """Compile the extension from :func:`source_dir` into the cache (or reuse it) and import it.

    Returns
    -------
    (module, folder)

    Raises
    ------
    ExtensionBuildError
        No C++ compiler, or the build failed (its message ends with the compiler's last lines).
    """
    if _compiler() is None:
        raise ExtensionBuildError("no C++ compiler found (looked for $CXX, c++, g++, clang++): install one "
                                  "(e.g. `apt install g++`, `conda install gxx`) to build the projector")
    from torch.utils import cpp_extension

    sources = source_dir()
    code, cuda_home = _cuda_plan()
    folder = cache_dir() / _build_key(sources, code)
    folder.mkdir(parents=True, exist_ok=True)
    files = [str(sources / name) for name in _CPU_SOURCES]
    cflags = ["-O3", "-fopenmp", f"-DU3D_CUDA_REASON={code}"]
    cuda_flags = []
    if code == CUDA_BUILT:
        assert cuda_home is not None  # _cuda_plan found nvcc there
        os.environ.setdefault("CUDA_HOME", cuda_home)
        cpp_extension.CUDA_HOME = cuda_home  # cpp_extension guessed it at import, from the nvcc on PATH
        files += [str(sources / name) for name in _CUDA_SOURCES]
        cflags.append("-DWITH_CUDA")
        cuda_flags = ["-O3", "-DWITH_CUDA"]
        import torch

        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    if not (folder / "_C.so").exists():  # a cached build is only checked and loaded: no message
        print(f"unrolled3d: building the projector extension for torch {_torch_tag()[0]} "
              f"({'with' if code == CUDA_BUILT else 'without'} CUDA) in {folder}, once (1-5 min)...",
              file=sys.stderr, flush=True)
    try:
        module = cpp_extension.load(
            name="_C", sources=files, extra_cflags=cflags, extra_cuda_cflags=cuda_flags,
            extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=verbose,
            with_cuda=code == CUDA_BUILT,
        )
    except Exception as exc:  # the compiler's error is long: keep its tail
        raise ExtensionBuildError(f"building the extension in {folder} failed: {str(exc)[-1500:]}") from exc
    return module, folder


# --------------------------------------------------------------------------- the loader
def _find(mode: str, builder: Callable[[], tuple[ModuleType, Path]]) -> tuple[Optional[ModuleType], str, list]:
    """``(module or None, source, reasons)`` for the mode asked for; ImportError where a
    ``compiled``/``prebuilt``/``jit`` mode cannot be met."""
    reasons: list = []
    if mode in ("auto", "compiled", "prebuilt"):
        module, why = _prebuilt()
        if module is not None:
            return module, "prebuilt", reasons
        reasons.append(why)
        if mode == "prebuilt":
            raise ImportError(f"UNROLLED3D_EXTENSION=prebuilt: {why}. Rebuild with "
                              "`pip install --no-build-isolation -e .` after torch")
    if mode in ("auto", "compiled", "jit"):
        try:
            module, folder = builder()
        except (ExtensionBuildError, FileNotFoundError, OSError) as exc:
            reasons.append(str(exc))
            if mode != "auto":
                raise ImportError(f"UNROLLED3D_EXTENSION={mode}: " + "; ".join(reasons)) from exc
        else:
            sys.modules["unrolled3d._C"] = module
            return module, "jit", reasons + [f"built on first use in {folder}"]
    if mode == "reference":
        reasons.append("UNROLLED3D_EXTENSION=reference")
    else:
        warnings.warn("unrolled3d: the C++ projector is unavailable, using the pure-PyTorch twins (correct, "
                      "much slower and memory hungry): " + "; ".join(reasons), UserWarning, stacklevel=3)
    return None, "twins", reasons


def load_extension(builder: Optional[Callable[[], tuple[ModuleType, Path]]] = None) -> Optional[ModuleType]:
    """Make the compiled projector ops available, once per process, as ``UNROLLED3D_EXTENSION``
    asks (module docstring).

    Parameters
    ----------
    builder : callable, optional
        Replaces :func:`jit_build` (tests).

    Returns
    -------
    module or None
        The extension module (prebuilt or JIT-built), or ``None``: the caller
        (``unrolled3d.ops.projector``) then registers the PyTorch twins. :func:`extension_status`
        says which and why.

    Raises
    ------
    ValueError
        ``UNROLLED3D_EXTENSION`` is not one of :data:`EXTENSION_MODES`.
    ImportError
        ``UNROLLED3D_EXTENSION=compiled``, ``prebuilt`` or ``jit`` and that cannot be had.
    """
    global _module
    if _status:
        return _module
    mode = backend_word(os.environ.get("UNROLLED3D_EXTENSION", "auto"), "UNROLLED3D_EXTENSION", EXTENSION_MODES)
    import torch

    module, source, reasons = _find(mode, builder or jit_build)
    _module = module
    built = module.build_info() if module is not None else {}
    record = _PACKAGE / "_C_build.json"
    built_for = str(torch.__version__) if source == "jit" else None
    if source == "prebuilt" and record.is_file():
        built_for = json.loads(record.read_text()).get("torch")
    _status.update(mode=mode, source=source, reasons=reasons, built_for_torch=built_for,
                   cuda_built=bool(built.get("cuda", False)), openmp=bool(built.get("openmp", False)),
                   cuda_status=_CUDA_REASONS.get(int(built.get("cuda_reason", -1)), "no compiled extension"))
    return module


def extension_status() -> dict[str, Any]:
    """What :func:`load_extension` found: ``mode`` (what ``UNROLLED3D_EXTENSION`` asked for, in
    this release's words), ``source`` (where the projector's kernels come from: ``"prebuilt"``,
    ``"jit"``, or ``"twins"``: none compiled, the reference twins), ``reasons``,
    ``built_for_torch``, ``cuda_built``, ``openmp``, ``cuda_status``."""
    load_extension()
    return dict(_status)


def backends() -> dict[str, Any]:
    """Which compute backends this installation can use, and why one is missing.

    Returns
    -------
    dict
        ``cpp_cpu`` (bool: a compiled projector is loaded), ``extension`` (where it came from),
        ``extension_mode`` (what ``UNROLLED3D_EXTENSION`` asked for), ``extension_torch`` (the
        torch it was built for), ``torch`` (the running torch), ``torch_cuda`` (its CUDA, or
        None), ``openmp``, ``cuda_built``, ``cuda_status``, ``cuda_device`` (a GPU is visible
        now), ``triton`` (importable), ``triton_interpret``.
    """
    import torch

    status = extension_status()
    info: dict[str, Any] = {
        "cpp_cpu": status["source"] != "twins", "extension": status["source"], "extension_mode": status["mode"],
        "extension_torch": status["built_for_torch"], "torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
        "openmp": status["openmp"], "cuda_built": status["cuda_built"], "cuda_status": status["cuda_status"],
    }
    if status["source"] == "twins":
        info["extension_reasons"] = status["reasons"]
    info["cuda_device"] = torch.cuda.is_available()
    try:
        import triton  # noqa: F401

        info["triton"] = True
    except ImportError:
        info["triton"] = False
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    return info
