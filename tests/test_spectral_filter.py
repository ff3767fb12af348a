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
from func_testing import assert_rounded_float32, check_func_transforms, check_vmap
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
    device = TDEV if backend == "compiled" else "cpu"
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


# --------------------------------------------------------------------------- torch.func
SPEC = (2, 1, 3, 2, 2)


def _real_filter(lam_complex):
    """The op on real parametrisations (torch.func's jacobians take real tensors)."""
    def f(spec_r, lam):
        lam = torch.view_as_complex(lam) if lam_complex else lam
        return torch.view_as_real(ops.spectral_filter(torch.view_as_complex(spec_r), lam, 0.37))
    return f


@pytest.mark.parametrize("lam_complex", [False, True])
def test_torch_func_transforms(lam_complex):
    """grad, jvp, jacrev, jacfwd and hessian through the op (torch.func.grad used to fail)."""
    spec = torch.view_as_real(rand(SPEC, C128, 1))
    lam = torch.view_as_real(rand(SPEC[2:], C128, 2)) if lam_complex else rand(SPEC[2:], R64, 2)
    check_func_transforms(_real_filter(lam_complex), [spec, lam])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dims", [(0, None), (3, None), (None, 0), (0, 0)])
def test_vmap_equals_a_loop(backend, in_dims):
    """vmap over spectra folds into B; over filters (no B of their own) it loops."""
    device = TDEV if backend == "compiled" else "cpu"
    specs = rand((3, *SPEC), C128, 3).to(device).movedim(0, in_dims[0] or 0)
    lams = rand((3, *SPEC[2:]), C128, 4).to(device)
    with ops.use_backend(backend):
        check_vmap(lambda s, l: ops.spectral_filter(s, l, 0.5), [specs, lams],
                   [specs.select(in_dims[0] or 0, 0), lams[0]], in_dims)


def test_vmap_of_the_backward_equals_a_loop():
    spec, lam = rand(SPEC, C128, 5), rand(SPEC[2:], R64, 6)
    grads = rand((4, *SPEC), C128, 7)
    for need in [(True, False), (False, True), (True, True)]:
        def bw(g, need=need):
            return torch.ops.unrolled3d.spectral_filter_backward(g, spec, lam, 0.5, *need)
        check_vmap(bw, [grads], [grads[0]], (0,))


def test_low_precision_is_the_float32_result_rounded():
    """complex32 spectra run in complex64 and are rounded once; float16/bfloat16/complex32
    filters are taken with complex64 and complex32 spectra."""
    spec, lam = rand(SPEC, C64, 8), rand(SPEC[2:], R32, 9)
    for lam_low in (lam, lam.half(), lam.bfloat16(), lam.to(C64).to(torch.complex32)):
        lam_c = lam_low.to(C64 if lam_low.is_complex() else R32)
        out = ops.spectral_filter(spec.to(torch.complex32), lam_low, 0.5)
        assert_rounded_float32(out, ops.spectral_filter(spec.to(torch.complex32).to(C64), lam_c, 0.5),
                               torch.complex32)
        assert torch.equal(ops.spectral_filter(spec, lam_low, 0.5), ops.spectral_filter(spec, lam_c, 0.5))


def test_autocast_runs_in_float32():
    spec, lam = rand(SPEC, C64, 10), rand(SPEC[2:], R32, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.spectral_filter(spec.to(torch.complex32), lam, 0.5)
        raw = torch.ops.unrolled3d.spectral_filter(spec, lam.bfloat16(), 0.5)
    assert out.dtype == raw.dtype == C64
    assert torch.equal(out, ops.spectral_filter(spec.to(torch.complex32).to(C64), lam, 0.5))
    assert torch.equal(raw, ops.spectral_filter(spec, lam.bfloat16().float(), 0.5))


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
        (lambda: f(spec.to(C128), lam.bfloat16()), TypeError, "lam must have dtype"),
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
