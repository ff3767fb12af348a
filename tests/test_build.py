"""The build: extension loaded, backends reported, and the CUDA twin compiles with nvcc."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
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


CUDA_SOURCES = ("cone_beam_cuda.cu", "column_backproject_cuda.cu", "fdk_backproject_cuda.cu")
# ptxas -v: "N bytes stack frame, S bytes spill stores, L bytes spill loads" per kernel
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (no CUDA toolkit on this machine)")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build: no CUDA headers to compile against")
@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_cuda_sources_compile_with_nvcc(tmp_path, source):
    """Each CUDA source compiles for sm_90 (the lent H100/H200), and ptxas reports no register
    spill in any kernel. Its report (registers, shared memory, stack per kernel) is printed: run
    with -s to read it, and it is written beside the object file."""
    from torch.utils.cpp_extension import include_paths

    obj = tmp_path / (source + ".o")
    cmd = [
        _nvcc(), "-c", str(ROOT / "csrc" / source), "-o", str(obj),
        "-std=c++20", "-O1", "-DWITH_CUDA", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
        "-gencode", "arch=compute_90,code=sm_90", "-Xptxas", "-v",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *[f"-I{p}" for p in include_paths(device_type="cuda")],
        f"-I{sysconfig.get_paths()['include']}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert obj.stat().st_size > 10_000
    report = [line for line in proc.stderr.splitlines() if "ptxas" in line or "stack frame" in line]
    (tmp_path / (source + ".ptxas.txt")).write_text("\n".join(report) + "\n")
    print(f"ptxas -v, {source}:", *report, sep="\n  ")
    frames = _PTXAS_FRAME.findall(proc.stderr)
    assert frames, "no ptxas report: -Xptxas -v printed nothing"
    spills = [line for line in report if (m := _PTXAS_FRAME.search(line)) and (int(m[2]) or int(m[3]))]
    assert not spills, f"{source}: ptxas spilled registers:\n" + "\n".join(spills)


# --------------------------------------------------------------------------- install anywhere (issue 16)
from unrolled3d import _build  # noqa: E402
from unrolled3d.geometry import ConeBeamGeometry  # noqa: E402

_GEOMETRY = "ConeBeamGeometry.circular(4, 50.0, 30.0, (6, 7), 1.0, (5, 4, 6))"


def _run_ops(extra_env: dict[str, str], out: Path) -> subprocess.CompletedProcess:
    """Project, backproject (three algorithms), reconstruct (FDK) and take a gradient in a fresh process,
    saving the results."""
    code = f"""
import torch, unrolled3d
from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.ops import cone_project, cone_backproject
from unrolled3d.ops.projector import cone_backproject_algo
g = {_GEOMETRY}
gen = torch.Generator().manual_seed(0)
x = torch.rand(2, 1, 5, 4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
y = torch.rand(2, 1, 4, 6, 7, dtype=torch.float64, generator=gen)
p = cone_project(x, g)
(p * y).sum().backward()
from unrolled3d.physics import fdk
torch.save(dict(p=p.detach(), b=cone_backproject(y, g), gather=cone_backproject_algo(y, g, "gather"),
                column=cone_backproject_algo(y, g, "column"), fdk=fdk(y, g), grad=x.grad,
                status=unrolled3d.backends()), {str(out)!r})
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1500)


@pytest.fixture(scope="module")
def compiled_results(tmp_path_factory) -> dict:
    """The same computation with the extension this test session loaded."""
    out = tmp_path_factory.mktemp("compiled") / "r.pt"
    proc = _run_ops({}, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def _assert_same(results: dict, reference: dict) -> None:
    for key in ("p", "b", "gather", "column", "fdk", "grad"):
        torch.testing.assert_close(results[key], reference[key], rtol=1e-10, atol=1e-12, msg=key)


def test_twins_stand_in_for_the_extension(tmp_path, compiled_results):
    """UNROLLED3D_EXTENSION=twins: the same ops, autograd and algorithms, run by the PyTorch twins."""
    proc = _run_ops({"UNROLLED3D_EXTENSION": "twins"}, tmp_path / "r.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(tmp_path / "r.pt")
    assert results["status"]["extension"] == "twins" and results["status"]["cpp_cpu"] is False
    _assert_same(results, compiled_results)


@pytest.mark.skipif(_build._compiler() is None, reason="no C++ compiler on this machine: the JIT path cannot build")
def test_jit_build_matches_the_prebuilt_extension(tmp_path, compiled_results):
    """The build on first use (here forced, CPU only, into an empty cache) gives the prebuilt's results."""
    cache = tmp_path / "cache"
    env = {"UNROLLED3D_EXTENSION": "jit", "UNROLLED3D_CACHE_DIR": str(cache), "NO_CUDA": "1"}
    proc = _run_ops(env, tmp_path / "r.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building the projector extension" in proc.stderr  # the one line of progress
    results = torch.load(tmp_path / "r.pt")
    assert results["status"]["extension"] == "jit"
    assert results["status"]["extension_torch"] == torch.__version__
    (folder,) = cache.iterdir()  # keyed by torch version, CUDA and source hash
    assert folder.name.startswith(f"ext-{torch.__version__.replace('+', '_')}-cpu-")
    _assert_same(results, compiled_results)
    # a second process reuses the cache: no build, no progress line
    proc = _run_ops(env, tmp_path / "r2.pt")
    assert proc.returncode == 0 and "building the projector extension" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader that has not run yet in this process (the real one already has)."""
    monkeypatch.setattr(_build, "_status", {})
    monkeypatch.setattr(_build, "_module", None)
    monkeypatch.delenv("UNROLLED3D_EXTENSION", raising=False)
    monkeypatch.setattr(_build, "_prebuilt", lambda: (None, "no usable prebuilt extension (test)"))


def test_failed_build_falls_back_to_twins_with_a_warning(fresh_loader):
    def broken_builder():
        raise _build.ExtensionBuildError("the compiler failed (test)")

    with pytest.warns(UserWarning, match="pure-PyTorch twins.*the compiler failed"):
        assert _build.load_extension(builder=broken_builder) is None
    status = _build.extension_status()
    assert status["source"] == "twins" and status["cuda_built"] is False
    assert any("the compiler failed" in r for r in status["reasons"])


def test_forced_jit_raises_instead_of_falling_back(fresh_loader, monkeypatch):
    monkeypatch.setenv("UNROLLED3D_EXTENSION", "jit")

    def broken_builder():
        raise _build.ExtensionBuildError("the compiler failed (test)")

    with pytest.raises(ImportError, match="UNROLLED3D_EXTENSION=jit: the compiler failed"):
        _build.load_extension(builder=broken_builder)


def test_bad_extension_mode_is_a_value_error(fresh_loader, monkeypatch):
    monkeypatch.setenv("UNROLLED3D_EXTENSION", "fast")
    with pytest.raises(ValueError, match="UNROLLED3D_EXTENSION must be one of"):
        _build.load_extension()


def test_no_compiler_is_said_plainly(monkeypatch):
    monkeypatch.setattr(_build, "_compiler", lambda: None)
    with pytest.raises(_build.ExtensionBuildError, match=r"no C\+\+ compiler found"):
        _build.jit_build()


def test_prebuilt_for_another_torch_is_not_imported(monkeypatch, tmp_path):
    """A record naming another torch skips the prebuilt library before it is imported."""
    (tmp_path / "_C_build.json").write_text('{"torch": "0.0.1", "cuda": null}')
    monkeypatch.setattr(_build, "_PACKAGE", tmp_path)
    module, why = _build._prebuilt()
    assert module is None and "built for torch 0.0.1" in why and torch.__version__ in why


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNROLLED3D_CACHE_DIR", str(tmp_path / "c"))
    assert _build.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("UNROLLED3D_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _build.cache_dir() == tmp_path / "x" / "unrolled3d"


def test_sources_are_found():
    assert (_build.source_dir() / "cone_beam.h").is_file()


def _setup_module():
    import runpy

    return runpy.run_path(str(ROOT / "setup.py"), run_name="unrolled3d_setup")  # not __main__: no setup() call


def test_every_subpackage_is_built():
    """setup.py's package list holds every package of the source tree (a missing one is absent from a wheel)."""
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "unrolled3d").rglob("__init__.py")}
    on_disk |= {"unrolled3d.kernels"}
    packages = set(_setup_module()["packages"]())
    assert on_disk <= packages, sorted(on_disk - packages)
    assert {"unrolled3d.partition", "unrolled3d.csrc", "unrolled3d.bench"} <= packages


def test_the_sdist_manifest_names_every_source_the_build_needs():
    manifest = (ROOT / "MANIFEST.in").read_text()
    for needed in ("csrc", "*.h", "*.cu", "kernels", "weights", "py.typed", "bench"):
        assert needed in manifest, needed
    assert (ROOT / "unrolled3d" / "py.typed").is_file()


def test_info_says_which_backend_each_op_runs(monkeypatch, capsys):
    from unrolled3d.cli import main
    from unrolled3d.ops.dispatch import backend_table, use_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with use_backend("auto"):  # the tests may run with another default
        table = backend_table()
    assert set(table) == {"cone_project", "cone_backproject", "cone_backproject_algo", "fdk_backproject",
                          "masked_gather", "spectral_filter", "masked_scatter_add"}
    assert table["cone_project"]["cpu"].startswith("C++/OpenMP")
    # fused ops on CPU tensors: the PyTorch twins, said plainly (Triton only on CUDA or under the interpreter)
    assert table["masked_gather"]["cpu"].startswith("PyTorch twin") and "TRITON_INTERPRET" in table["masked_gather"]["cpu"]
    assert table["masked_gather"]["cuda"] == "Triton"
    with use_backend("reference"):
        assert backend_table()["spectral_filter"]["cuda"].startswith("PyTorch twin")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"running torch {torch.__version__}" in out and "cone_backproject_algo" in out


# --------------------------------------------------------------------------- the schemas, written once
def test_the_schemas_are_read_from_the_one_file_the_extension_defines_them_from():
    """csrc/schemas.h holds the ops' schemas; Python reads that file (for the twins), and the
    loaded extension's ops have exactly those schemas."""
    from unrolled3d.ops._extension import TWINS, op_schemas

    schemas = op_schemas()
    assert list(schemas) == ["cone_project", "cone_backproject", "cone_backproject_algo", "fdk_backproject"]
    assert set(schemas) == set(TWINS)
    for name, schema in schemas.items():
        assert str(getattr(torch.ops.unrolled3d, name).default._schema) == f"unrolled3d::{name}{schema}"
    # and nowhere else: no other source spells a schema out
    spelled = [p.name for p in list((ROOT / "csrc").iterdir()) + list((ROOT / "unrolled3d" / "ops").glob("*.py"))
               if p.is_file() and p.name != "schemas.h" and "Tensor views, float[] vol_geom" in p.read_text()]
    assert not spelled, spelled


def test_setup_and_the_jit_build_compile_the_same_sources():
    setup = _setup_module()
    assert tuple(setup["CPU_SOURCES"]) == _build._CPU_SOURCES
    assert tuple(setup["CUDA_SOURCES"]) == _build._CUDA_SOURCES
    compiled = set(_build._CPU_SOURCES + _build._CUDA_SOURCES)
    on_disk = {p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".cu")}
    assert compiled == on_disk, sorted(compiled ^ on_disk)
    included = {m for p in (ROOT / "csrc").iterdir() if p.is_file() for m in re.findall(r'#include "(\w+\.h)"', p.read_text())}
    assert included <= set(_build._HEADERS), sorted(included - set(_build._HEADERS))  # the JIT cache key hashes them
