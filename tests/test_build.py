"""The build: extension loaded, backends reported, and the CUDA twin compiles with nvcc."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unrolled3d

ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    found = shutil.which("nvcc")
    if found:
        return found
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return os.path.join(CUDA_HOME, "bin", "nvcc")
    return None


def test_backends_report():
    info = unrolled3d.backends()
    assert info["cpp_cpu"] is True
    assert info["openmp"] is True
    assert info["cuda_status"].startswith("built") == info["cuda_built"]
    assert info["cuda_device"] == torch.cuda.is_available()


def test_kernels_install_as_subpackage():
    import unrolled3d.kernels

    assert Path(unrolled3d.kernels.__file__).resolve().parent == (ROOT / "kernels").resolve()


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (no CUDA toolkit on this machine)")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build: no CUDA headers to compile against")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    from torch.utils.cpp_extension import include_paths

    cmd = [
        _nvcc(), "-c", str(ROOT / "csrc" / "cone_beam_cuda.cu"), "-o", str(tmp_path / "cone_beam_cuda.o"),
        "-std=c++20", "-O1", "-DWITH_CUDA", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
        "-gencode", "arch=compute_90,code=sm_90",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *[f"-I{p}" for p in include_paths(device_type="cuda")],
        f"-I{sys.prefix}/include",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "cone_beam_cuda.o").stat().st_size > 10_000
