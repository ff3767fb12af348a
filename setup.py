"""Build script: the pure-Python package plus the C++ (OpenMP) / CUDA cone-beam extension.

Switches (environment variables):
  FORCE_CUDA=1   build the CUDA twin even when no GPU is visible (needs nvcc + a CUDA torch)
  NO_CUDA=1      never build the CUDA twin
  TORCH_CUDA_ARCH_LIST  GPU architectures; defaults to "8.0;9.0+PTX" when no GPU is visible

Two ways to build:
  * ``pip install --no-build-isolation -e .`` after torch (the development path, see README): the
    extension is compiled now, against the installed torch, and ``_C_build.json`` beside it records
    which torch that was.
  * ``pip install .`` / ``python -m build`` (build isolation, torch absent from the build
    environment): a pure-Python wheel; the extension is compiled on first use against whatever torch
    is installed then (``unrolled3d/_build.py``), from the sources shipped as ``unrolled3d/csrc``.
  NO_EXTENSION=1 gives the pure-Python wheel even when torch is importable.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    if os.environ.get("NO_EXTENSION", "0") == "1":
        raise ImportError("NO_EXTENSION=1")
    import torch

    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script there (as on our CI image)
    # makes it guess /usr/local, which has no libcudart. Prefer the toolkit matching torch's CUDA.
    if "CUDA_HOME" not in os.environ and torch.version.cuda is not None:
        for _candidate in (f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"):
            if os.path.exists(os.path.join(_candidate, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = _candidate
                break
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as _exc:  # build isolation without torch: the extension is built on first use
    torch = None
    print(f"unrolled3d: no prebuilt extension ({_exc}): it will be compiled on first use against the installed torch")


# The extension's compiled sources (unrolled3d/_build.py compiles the same for a build on first use;
# tests/test_build.py checks that the two lists agree).
CPU_SOURCES = ("bindings.cpp", "cone_beam.cpp", "column_backproject.cpp", "fdk_backproject.cpp")
CUDA_SOURCES = ("cone_beam_cuda.cu", "column_backproject_cuda.cu", "fdk_backproject_cuda.cu")

# Reason codes compiled into the extension; unrolled3d/_build.py turns them back into words.
CUDA_BUILT, CUDA_DISABLED_BY_USER, CUDA_TORCH_IS_CPU_ONLY, CUDA_NO_TOOLKIT = 0, 1, 2, 3


def _cuda_decision() -> tuple[int, str]:
    """Return (reason code, words) — the reason is reported at build and import time."""
    if os.environ.get("NO_CUDA", "0") == "1":
        return CUDA_DISABLED_BY_USER, "NO_CUDA=1 was set at build time"
    if torch.version.cuda is None:
        return CUDA_TORCH_IS_CPU_ONLY, f"torch {torch.__version__} is a CPU-only build"
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    if CUDA_HOME is None or not nvcc or not os.path.exists(nvcc):
        return CUDA_NO_TOOLKIT, "no CUDA toolkit (nvcc / CUDA_HOME) found at build time"
    return CUDA_BUILT, f"built with nvcc from {CUDA_HOME} for torch CUDA {torch.version.cuda}"


def _extension():
    code, reason = _cuda_decision()
    build_cuda = code == CUDA_BUILT
    if os.environ.get("FORCE_CUDA", "0") == "1" and not build_cuda:
        sys.exit(f"unrolled3d: FORCE_CUDA=1 but the CUDA twin cannot be built: {reason}")
    print(f"unrolled3d: CUDA projector {'ENABLED' if build_cuda else 'DISABLED'}: {reason}")
    sources = [f"csrc/{name}" for name in CPU_SOURCES]
    define = [("U3D_CUDA_REASON", str(code))]
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice (C++20 for torch >= 2.10)
    link = ["-fopenmp"]
    if build_cuda:
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        return CUDAExtension(
            "unrolled3d._C",
            sources + [f"csrc/{name}" for name in CUDA_SOURCES],
            define_macros=define + [("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link,
        )
    return CppExtension(
        "unrolled3d._C", sources, define_macros=define,
        extra_compile_args={"cxx": cxx}, extra_link_args=link,
    )


def packages() -> list[str]:
    """Every package of the source tree, plus the folders mapped into it (see ``PACKAGE_DIR``)."""
    return sorted(find_packages(include=["unrolled3d", "unrolled3d.*"]) + list(PACKAGE_DIR))


# Folders kept at the repository root but installed inside the package: the Triton kernels, the C++
# and CUDA sources (for the build on first use) and the benchmark suites (`unrolled3d bench`).
PACKAGE_DIR = {"unrolled3d.kernels": "kernels", "unrolled3d.csrc": "csrc", "unrolled3d.bench": "bench"}
PACKAGE_DATA = {
    # the demo's trained weights and the configuration that trained them; the type-hint marker
    "unrolled3d": ["weights/*.pt", "weights/*.toml", "weights/*.md", "weights/*.json", "py.typed"],
    "unrolled3d.csrc": ["*.h", "*.cpp", "*.cu"],
    # the timing suites at the top; the experiments (quality runs, report, peers) in experiments/
    "unrolled3d.bench": ["*.py", "run_gpu.sh", "experiments/*.py", "experiments/peers/*.py", "experiments/peers/*.sh"],
}


def _build_ext_class():
    """torch's BuildExtension, which also records the torch the extension was compiled for."""

    class RecordingBuildExtension(BuildExtension.with_options(use_ninja=True)):
        def build_extension(self, ext):
            super().build_extension(ext)
            targets = [os.path.dirname(self.get_ext_fullpath(ext.name))]
            if getattr(self, "editable_mode", False):  # the editable build copies only the library back
                targets.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "unrolled3d"))
            for folder in targets:
                with open(os.path.join(folder, "_C_build.json"), "w") as f:
                    json.dump({"torch": torch.__version__, "cuda": torch.version.cuda}, f)

    return RecordingBuildExtension


if __name__ == "__main__":
    setup(
        packages=packages(),
        package_dir=PACKAGE_DIR,
        package_data=PACKAGE_DATA,
        ext_modules=[_extension()] if torch is not None else [],
        cmdclass={"build_ext": _build_ext_class()} if torch is not None else {},
    )
