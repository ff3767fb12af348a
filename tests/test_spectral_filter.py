"""``spectral_filter`` (:mod:`unrolled3d.ops.spectral_filter`, kernel :mod:`unrolled3d.kernels.spectral_filter`):
the twin against autograd, the Triton launcher against the twin, gradients, ``opcheck`` and bad
inputs."""
import itertools

import pytest
import torch

from fused_testing import (
    BACKENDS, C64, C128, R32, R64, REAL_OF, TDEV, assert_close, check_grads, noncontig, opt, rand, requires_cuda,
    requires_triton, run_opcheck,
)
from unrolled3d import ops
from unrolled3d.kernels import _common
from unrolled3d.kernels import spectral_filter as sf


@pytest.mark.parametrize("lam_dtype", [R64, C128])
def test_backward_reference_matches_autograd(lam_dtype):
    """The hand-written backward twin follows PyTorch's complex autograd convention."""
    spec = rand((2, 3, 5, 4, 3), C128, 4).requires_grad_()
    lam = rand((5, 4, 3), lam_dtype, 5).requires_grad_()
    out = sf.spectral_filter_ref(spec, lam, 0.37)
    g = rand(out.shape, C128, 6)
    gs, gl = torch.autograd.grad(out, (spec, lam), g)
    rs, rl = sf.spectral_filter_backward_ref(g, spec.detach(), lam.detach(), 0.37)
    assert rl.dtype == lam_dtype
    assert_close(rs, gs)
    assert_close(rl, gl, terms=6)


@requires_triton
@pytest.mark.parametrize("dtype", [C64, C128])
@pytest.mark.parametrize("lam_kind", ["real", "complex"])
@pytest.mark.parametrize("layout", ["contiguous", "bc_transposed", "inner_noncontig", "conj_view"])
def test_triton_matches_reference(dtype, lam_kind, layout):
    shape = (2, 3, 5, 7, 4)  # Q = 4 <-> Pw = 6 or 7
    spec = rand(shape, dtype, 1)
    lam = rand(shape[2:], dtype if lam_kind == "complex" else REAL_OF[dtype], 2)
    g = rand(shape, dtype, 3)
    t_spec, t_lam, t_g = spec.to(TDEV), lam.to(TDEV), g.to(TDEV)
    if layout == "bc_transposed":
        spec = rand((3, 2) + shape[2:], dtype, 1).transpose(0, 1)
        g = rand((3, 2) + shape[2:], dtype, 3).transpose(0, 1)
        t_spec, t_g = spec.transpose(0, 1).to(TDEV).transpose(0, 1), g.transpose(0, 1).to(TDEV).transpose(0, 1)
    elif layout == "inner_noncontig":
        t_spec, t_g, t_lam = noncontig(t_spec), noncontig(t_g), opt(t_lam, None, transpose=True)
    elif layout == "conj_view":
        spec, t_spec = spec.conj(), t_spec.conj()
        if lam_kind == "complex":
            lam, t_lam = lam.conj(), t_lam.conj()
    for scale in (1.0, 0.37):
        out = sf.spectral_filter_forward(t_spec, t_lam, scale)
        assert out.is_contiguous()
        assert_close(out, sf.spectral_filter_ref(spec, lam, scale))
        for need_s, need_l in [(True, True), (True, False), (False, True)]:
            ts, tl_ = sf.spectral_filter_backward(t_g, t_spec, t_lam, scale, need_s, need_l)
            rs, rl = sf.spectral_filter_backward_ref(g, spec, lam, scale, need_s, need_l)
            for t, r in ((ts, rs), (tl_, rl)):
                assert (t is None) == (r is None)
                if r is not None:
                    assert_close(t, r, terms=2 * shape[0] * shape[1])


@requires_triton
def test_bc_grid_chunking(monkeypatch):
    """B*C beyond the CUDA grid-axis limit is launched in chunks (limit shrunk to 4)."""
    monkeypatch.setattr(_common, "MAX_GRID_YZ", 4)
    spec, lam = rand((2, 3, 5, 4, 3), C128, 5), rand((5, 4, 3), C128, 6)
    t_spec, t_lam = spec.to(TDEV), lam.to(TDEV)
    assert_close(sf.spectral_filter_forward(t_spec, t_lam, 0.5), sf.spectral_filter_ref(spec, lam, 0.5))
    assert_close(sf.spectral_filter_backward(t_spec, t_spec, t_lam, 0.5, True, False)[0],
                 sf.spectral_filter_backward_ref(spec, spec, lam, 0.5, True, False)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lam_dtype", [R64, C128])
def test_gradients(backend, lam_dtype):
    device = TDEV if backend == "triton" else "cpu"
    spec = rand((2, 1, 3, 2, 2), C128, 3).to(device).requires_grad_()
    lam = rand((3, 2, 2), lam_dtype, 4).to(device).requires_grad_()
    check_grads(lambda s, l: ops.spectral_filter(s, l, 0.7), (spec, lam), backend)


def _opcheck_cases():
    spec = rand((2, 1, 3, 2, 2), C128, 4).requires_grad_()
    lam = rand((3, 2, 2), R64, 5).requires_grad_()
    op = torch.ops.unrolled3d
    return {
        "spectral_filter": (op.spectral_filter.default, (spec, lam, 0.7)),
        "spectral_filter_backward": (op.spectral_filter_backward.default,
                                     (rand(spec.shape, C128, 10).requires_grad_(), spec, lam, 0.7, True, True)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(_opcheck_cases()))
def test_opcheck(case, backend):
    run_opcheck(*_opcheck_cases()[case], backend)


def _bad_cases():
    spec = rand((2, 3, 6, 4, 5), C64)
    lam = rand((6, 4, 5), R32)
    f = ops.spectral_filter
    return [
        (lambda: f(spec.real, lam), TypeError, "spec must have dtype"),
        (lambda: f(spec[0], lam), ValueError, "spec must be 5-D"),
        (lambda: f(spec, lam[:1]), ValueError, r"lam must have shape \(Pd, Ph, Q\)"),
        (lambda: f(spec, lam[None]), ValueError, "lam must have shape"),
        (lambda: f(spec, lam.double()), TypeError, "lam must have dtype"),
        (lambda: f(spec, lam.to(C128)), TypeError, "lam must have dtype"),
        (lambda: f(spec, lam.to("meta")), ValueError, "lam must be on the same device"),
        (lambda: f(spec, lam.tolist()), TypeError, "lam must be a torch.Tensor"),
        (lambda: f(spec, lam, torch.tensor(2.0)), TypeError, "scale must be a real"),
        (lambda: f(spec, lam, 1j), TypeError, "scale must be a real"),
    ]


@pytest.mark.parametrize("idx", range(len(_bad_cases())))
def test_bad_inputs_raise(idx):
    fn, exc, msg = _bad_cases()[idx]
    with pytest.raises(exc, match=msg):
        fn()


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,lam_complex", list(itertools.product([C64, C128], [False, True])))
def test_cuda_matches_cpu_reference(dtype, lam_complex):
    shape = (2, 3, 32, 40, 18)
    spec, g = rand(shape, dtype, 1), rand(shape, dtype, 2)
    lam = rand(shape[2:], dtype if lam_complex else REAL_OF[dtype], 3)
    assert_close(ops.spectral_filter(spec.cuda(), lam.cuda(), 0.3).cpu(), sf.spectral_filter_ref(spec, lam, 0.3))
    for a, b in zip(sf.spectral_filter_backward(g.cuda(), spec.cuda(), lam.cuda(), 0.3),
                    sf.spectral_filter_backward_ref(g, spec, lam, 0.3)):
        assert_close(a.cpu(), b, terms=12)
