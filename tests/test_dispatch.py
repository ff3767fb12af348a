"""Which implementation the fused ops run (:mod:`unrolled3d.ops.dispatch`), and the one vocabulary
of the backend switches (:mod:`unrolled3d._build`): ``auto | compiled | reference``."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from fused_testing import INTERP, PAD, PATCH, R32, VOL, rand
from unrolled3d import _build, ops
from unrolled3d.ops import dispatch


def test_dispatch_rules():
    default = os.environ.get("UNROLLED3D_FUSED_BACKEND", "auto")
    assert ops.get_backend() == default
    assert ops.triton_enabled_for(torch.device("cpu")) == INTERP
    assert ops.triton_enabled_for(torch.device("cuda")) is True
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'compiled', 'reference'\), got 'cuda'"):
        ops.set_backend("cuda")
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == default
    if not INTERP:
        with ops.use_backend("compiled"), pytest.raises(RuntimeError, match="cannot run on cpu"):
            ops.masked_gather(rand(VOL, R32), (0, 0, 0), PATCH, PAD)


@pytest.mark.parametrize("backend,launcher", [
    ("reference", "masked_gather_ref"),
    pytest.param("compiled", "masked_gather_forward",
                 marks=pytest.mark.skipif(not INTERP, reason="needs the Triton CPU interpreter to run on the CPU")),
])
def test_the_chosen_backend_is_what_runs(monkeypatch, backend, launcher):
    """The choice is read when the op runs: its launcher is called, the other is not."""
    from unrolled3d.kernels import masked_gather as mg

    calls = []
    for name in ("masked_gather_ref", "masked_gather_forward"):
        real = getattr(mg, name)
        monkeypatch.setattr(mg, name, lambda *a, name=name, real=real: calls.append(name) or real(*a))
    with ops.use_backend(backend):
        ops.masked_gather(rand(VOL, R32), (0, 0, 0), PATCH, PAD)
    assert calls == [launcher]


def test_the_previous_words_still_work_with_a_deprecation_warning():
    before = ops.get_backend()
    with pytest.warns(DeprecationWarning, match="'triton' is deprecated .* use 'compiled'"):
        ops.set_backend("triton")
    try:
        assert ops.get_backend() == "compiled"
    finally:
        ops.set_backend(before)
    with pytest.warns(DeprecationWarning, match="UNROLLED3D_EXTENSION='twins' is deprecated .* use 'reference'"):
        assert _build.backend_word("twins", "UNROLLED3D_EXTENSION", _build.EXTENSION_MODES) == "reference"
    # each switch keeps only its own old word
    with pytest.raises(ValueError, match="UNROLLED3D_EXTENSION must be one of"):
        _build.backend_word("triton", "UNROLLED3D_EXTENSION", _build.EXTENSION_MODES)
    with pytest.raises(ValueError, match="UNROLLED3D_FUSED_BACKEND must be one of"):
        _build.backend_word("twins", "UNROLLED3D_FUSED_BACKEND")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this release's words warn about nothing
        for word in _build.BACKENDS:
            assert _build.backend_word(word, "UNROLLED3D_FUSED_BACKEND") == word


def test_both_switches_take_the_same_words():
    assert _build.BACKENDS == ("auto", "compiled", "reference") == dispatch.BACKENDS
    assert set(_build.BACKENDS) <= set(_build.EXTENSION_MODES)
    switches = dispatch.backend_switches()
    assert switches["fused"] == {"variable": "UNROLLED3D_FUSED_BACKEND", "value": ops.get_backend(),
                                 "read": switches["fused"]["read"]}
    assert switches["projector"]["value"] in _build.EXTENSION_MODES


def _import_in_a_fresh_process(env: dict) -> subprocess.CompletedProcess:
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import unrolled3d, unrolled3d.ops as o\n"
            "print(o.get_backend(), unrolled3d.backends()['extension_mode'], unrolled3d.backends()['extension'])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_environment_variables_at_import():
    """Both variables read at import, in the same words; the old ones with a DeprecationWarning."""
    proc = _import_in_a_fresh_process({"UNROLLED3D_FUSED_BACKEND": "triton", "UNROLLED3D_EXTENSION": "reference"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["compiled", "reference", "twins"]
    assert "UNROLLED3D_FUSED_BACKEND='triton' is deprecated" in proc.stderr
    assert "pure-PyTorch twins" not in proc.stderr  # asked for: no fallback warning
    proc = _import_in_a_fresh_process({"UNROLLED3D_FUSED_BACKEND": "gpu"})
    assert proc.returncode != 0
    assert "UNROLLED3D_FUSED_BACKEND must be one of ('auto', 'compiled', 'reference'), got 'gpu'" in proc.stderr


@pytest.fixture
def fresh_loader(monkeypatch):
    """A projector loader that has not run yet in this process, with no prebuilt extension."""
    monkeypatch.setattr(_build, "_status", {})
    monkeypatch.setattr(_build, "_module", None)
    monkeypatch.setattr(_build, "_prebuilt", lambda: (None, "no usable prebuilt extension (test)"))


def _broken_builder():
    raise _build.ExtensionBuildError("the compiler failed (test)")


def test_compiled_projector_raises_instead_of_falling_back(fresh_loader, monkeypatch):
    monkeypatch.setenv("UNROLLED3D_EXTENSION", "compiled")
    with pytest.raises(ImportError, match="UNROLLED3D_EXTENSION=compiled: no usable prebuilt .*the compiler failed"):
        _build.load_extension(builder=_broken_builder)


def test_reference_projector_builds_nothing_and_warns_nothing(fresh_loader, monkeypatch):
    monkeypatch.setenv("UNROLLED3D_EXTENSION", "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.load_extension(builder=lambda: pytest.fail("reference must not build")) is None
    status = _build.extension_status()
    assert status["mode"] == "reference" and status["source"] == "twins"
