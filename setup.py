"""Build script: the pure-Python package plus the C++ (OpenMP) / CUDA cone-beam extension.

Switches (environment variables):
  FORCE_CUDA=1   build the CUDA twin even when no GPU is visible (needs nvcc + a CUDA torch)
  NO_CUDA=1      never build the CUDA twin
  TORCH_CUDA_ARCH_LIST  GPU architectures; defaults to "8.0;9.0+PTX" when no GPU is visible

Install after torch: ``pip install --no-build-isolation -e .`` (see README).
"""
from __future__ import annotations

import os
import shutil
import sys

from setuptools import setup

try:
    import torch

    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script there (as on our CI image)
    # makes it guess /usr/local, which has no libcudart. Prefer the toolkit matching torch's CUDA.
    if "CUDA_HOME" not in os.environ and torch.version.cuda is not None:
        for _candidate in (f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"):
            if os.path.exists(os.path.join(_candidate, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = _candidate
                break
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - explained to the user
    sys.exit(
        "unrolled3d: torch must be installed before building (pip install deepinv), and the build "
        "must see it: use `pip install --no-build-isolation -e .`"
    )


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
    sources = ["csrc/bindings.cpp", "csrc/cone_beam.cpp"]
    define = [("U3D_CUDA_REASON", str(code))]
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice (C++20 for torch >= 2.10)
    link = ["-fopenmp"]
    if build_cuda:
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        return CUDAExtension(
            "unrolled3d._C",
            sources + ["csrc/cone_beam_cuda.cu"],
            define_macros=define + [("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link,
        )
    return CppExtension(
        "unrolled3d._C", sources, define_macros=define,
        extra_compile_args={"cxx": cxx}, extra_link_args=link,
    )


setup(
    packages=[
        "unrolled3d", "unrolled3d.cli", "unrolled3d.data", "unrolled3d.io", "unrolled3d.models", "unrolled3d.mri",
        "unrolled3d.normal", "unrolled3d.ops", "unrolled3d.physics", "unrolled3d.kernels",
    ],
    package_dir={"unrolled3d.kernels": "kernels"},
    # the demo's trained weights and the configuration that trained them
    package_data={"unrolled3d": ["weights/*.pt", "weights/*.toml", "weights/*.md"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
