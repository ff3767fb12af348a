"""The fused ops chained as ``H`` uses them -- gather, rFFT, filter, inverse rFFT, scatter --
against the same chain in plain PyTorch with padding oracles, on every backend, and under
``torch.compile``."""
import pytest
import torch

from fused_testing import (
    BACKENDS, PAD, PATCH, R32, R64, TDEV, VOL, assert_close, chain_inputs, fused_chain, rand, requires_cuda,
    torch_chain,
)
from unrolled3d import ops
from unrolled3d.kernels import masked_scatter_add as ms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,lam_complex", [(R32, False), (R64, True)])
def test_composite_chain_matches_plain_torch(backend, dtype, lam_complex):
    inputs = chain_inputs(dtype, lam_complex)
    geo = ((-2, 3, 1), PATCH, PAD, 0.6)
    dev_inputs = inputs
    if backend == "compiled" and TDEV != "cpu":
        dev_inputs = [t.detach().to(TDEV).requires_grad_(t.requires_grad) for t in inputs]
    with ops.use_backend(backend):
        out, out_w = fused_chain(*dev_inputs, *geo)
    r_out, r_w = torch_chain(*inputs, *geo)
    assert_close(out, r_out, terms=64)
    assert_close(out_w, r_w)
    g = rand(out.shape, dtype, 42)
    diff = [t for t in inputs if t.requires_grad]
    with ops.use_backend(backend):
        grads = torch.autograd.grad(out, [t for t in dev_inputs if t.requires_grad], g.to(out.device))
    r_grads = torch.autograd.grad(r_out, diff, g)
    for a, b in zip(grads, r_grads):
        assert_close(a, b, terms=512)


def test_compile_aot_eager_reference_cpu():
    torch._dynamo.reset()
    inputs = chain_inputs(R64, True)
    geo = ((1, -1, 2), PATCH, PAD, 0.6)

    def f(*ts):
        return fused_chain(*ts, *geo)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with ops.use_backend("reference"):
        out_c, w_c = compiled(*inputs)
        out_e, w_e = f(*inputs)
        g = rand(out_e.shape, R64, 7)
        diff = [t for t in inputs if t.requires_grad]
        gc = torch.autograd.grad(out_c, diff, g)
        ge = torch.autograd.grad(out_e, diff, g)
    assert_close(out_c, out_e)
    assert_close(w_c, w_e)
    for a, b in zip(gc, ge):
        assert_close(a, b, terms=64)

    # the in-place fast path also compiles (functionalised custom op)
    def g_inplace(dest, src, mask, weight):
        return ops.masked_scatter_add_(dest, src, (1, -1, 2), PATCH, mask, None, weight)

    dest, src = rand(VOL, R64, 1), rand(VOL[:2] + PAD, R64, 2)
    mask, weight = rand(PATCH, R64, 3), rand(VOL[2:], R64, 4)
    exp = ms.masked_scatter_add_ref(dest, src, (1, -1, 2), PATCH, mask, None, weight)
    d2, w2 = dest.clone(), weight.clone()
    with torch.no_grad(), ops.use_backend("reference"):
        torch.compile(g_inplace, fullgraph=True, backend="aot_eager")(d2, src, mask, w2)
    assert_close(d2, exp[0])
    assert_close(w2, exp[1])


@requires_cuda
@pytest.mark.cuda
def test_compile_inductor_cuda_triton():
    torch._dynamo.reset()
    inputs = [t.detach().cuda().requires_grad_(t.requires_grad) for t in chain_inputs(R32, False)]
    geo = ((-2, 3, 1), PATCH, PAD, 0.6)

    def f(*ts):
        return fused_chain(*ts, *geo)

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    out_c, w_c = compiled(*inputs)
    out_r, w_r = torch_chain(*[t.detach().cpu().requires_grad_(t.requires_grad) for t in inputs], *geo)
    assert_close(out_c.cpu(), out_r.detach(), terms=64)
    assert_close(w_c.cpu(), w_r)
    g = rand(out_c.shape, R32, 7)
    diff = [t for t in inputs if t.requires_grad]
    gc = torch.autograd.grad(out_c, diff, g.cuda())
    with ops.use_backend("reference"):
        ge = torch.autograd.grad(f(*inputs)[0], diff, g.cuda())
    for a, b in zip(gc, ge):
        assert_close(a.cpu(), b.cpu(), terms=512)
