"""``masked_scatter_add`` and ``masked_scatter_add_`` (:mod:`unrolled3d.ops.masked_scatter_add`, kernel
:mod:`unrolled3d.kernels.masked_scatter_add`): the twin against a padding oracle and autograd, the
Triton launcher against the twin, the in-place fast path, gradients, ``opcheck`` and bad inputs."""
import pytest
import torch

from fused_testing import (
    BACKENDS, GOFF, GPAD, GPATCH, GVOL, OFFSETS, PAD, PATCH, R32, R64, TDEV, VOL, assert_close, check_grads,
    noncontig, opt, rand, requires_cuda, requires_triton, scatter_oracle, run_opcheck,
)
from func_testing import LOW, assert_rounded_float32, check_func_transforms, check_vmap
from unrolled3d import ops
from unrolled3d.kernels import _common
from unrolled3d.kernels import masked_scatter_add as ms


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_reference_matches_padding_oracle(offset, with_mask):
    vol = rand(VOL, R64, 1)
    mask = rand(PATCH, R64, 2) if with_mask else None
    window = rand(PATCH, R64, 3)
    weight = rand(VOL[2:], R64, 4)
    src = rand(VOL[:2] + PAD, R64, 5)
    out, out_w = ms.masked_scatter_add_ref(vol, src, offset, PATCH, mask, window, weight)
    o_out, o_w = scatter_oracle(vol, src, offset, PATCH, mask, window, weight)
    assert_close(out, o_out)
    assert_close(out_w, o_w)
    out, out_w = ms.masked_scatter_add_ref(vol, src, offset, PATCH, mask, None, None)
    assert out_w is None
    assert_close(out, scatter_oracle(vol, src, offset, PATCH, mask, None, None)[0])


@pytest.mark.parametrize("offset", OFFSETS[1:3])
def test_backward_reference_matches_autograd(offset):
    mask = rand(PATCH, R64, 2).requires_grad_()
    dest = rand(VOL, R64, 7).requires_grad_()
    src = rand(VOL[:2] + PAD, R64, 8).requires_grad_()
    window = rand(PATCH, R64, 9)
    out, _ = ms.masked_scatter_add_ref(dest, src, offset, PATCH, mask, window, None)
    g = rand(out.shape, R64, 10)
    gd, gs, gm = torch.autograd.grad(out, (dest, src, mask), g)
    rs, rm = ms.masked_scatter_add_backward_ref(g, src.detach(), offset, PATCH, mask.detach(), window, True, True)
    assert torch.equal(gd, g)
    assert_close(rs, gs)
    assert_close(rm, gm, terms=6)


SCATTER_EXTRAS = [  # (mask, window, weight)
    (False, False, False),
    (True, False, True),
    (False, True, True),
    (True, True, False),
]


@requires_triton
@pytest.mark.parametrize("dtype", [R32, R64])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("extras", SCATTER_EXTRAS)
def test_triton_matches_reference(dtype, offset, layout, extras):
    with_mask, with_window, with_weight = extras
    dest = rand(VOL, dtype, 1)
    src = rand(VOL[:2] + PAD, dtype, 2)
    mask = rand(PATCH, dtype, 3) if with_mask else None
    window = rand(PATCH, dtype, 4) if with_window else None
    weight = rand(VOL[2:], dtype, 5) if with_weight else None
    g = rand(VOL, dtype, 6)
    t_dest, t_src, t_g = dest.to(TDEV), src.to(TDEV), g.to(TDEV)
    t_mask, t_window, t_weight = opt(mask, TDEV), opt(window, TDEV), opt(weight, TDEV)
    if layout == "noncontiguous":
        t_dest, t_src, t_g = noncontig(t_dest), noncontig(t_src), noncontig(t_g)
        t_weight, t_window = opt(t_weight, None, transpose=True), opt(t_window, None, transpose=True)
    out, out_w = ms.masked_scatter_add_forward(t_dest, t_src, offset, PATCH, t_mask, t_window, t_weight)
    r_out, r_w = ms.masked_scatter_add_ref(dest, src, offset, PATCH, mask, window, weight)
    assert out.is_contiguous()
    assert_close(out, r_out)
    assert (out_w is None) == (weight is None)
    if weight is not None:
        assert_close(out_w, r_w)

    d2 = noncontig(dest.to(TDEV)) if layout == "noncontiguous" else dest.to(TDEV).clone()  # strided in-place
    w2 = opt(opt(weight, TDEV).clone(), None, transpose=layout == "noncontiguous") if weight is not None else None
    res = ms.masked_scatter_add_forward(d2, t_src, offset, PATCH, t_mask, t_window, w2, inplace=True)
    assert res[0] is d2 and res[1] is w2
    assert_close(d2, r_out)
    if weight is not None:
        assert_close(w2, r_w)

    for need_s, need_m in [(True, True), (True, False), (False, True)]:
        ts, tm = ms.masked_scatter_add_backward(t_g, t_src, offset, PATCH, t_mask, t_window, need_s, need_m)
        rs, rm = ms.masked_scatter_add_backward_ref(g, src, offset, PATCH, mask, window, need_s, need_m)
        for t, r in ((ts, rs), (tm, rm)):
            assert (t is None) == (r is None)
            if r is not None:
                assert_close(t, r, terms=VOL[0] * VOL[1])


@requires_triton
def test_bc_grid_chunking(monkeypatch):
    """B*C beyond the CUDA grid-axis limit is launched in chunks (limit shrunk to 4)."""
    monkeypatch.setattr(_common, "MAX_GRID_YZ", 4)
    vol, src = rand(VOL, R64, 1), rand(VOL[:2] + PAD, R64, 2)
    mask, weight = rand(PATCH, R64, 3), rand(VOL[2:], R64, 4)
    tv, ts, tm, tw = vol.to(TDEV), src.to(TDEV), mask.to(TDEV), weight.to(TDEV)
    off = (-1, 2, 1)
    for a, b in zip(ms.masked_scatter_add_forward(tv, ts, off, PATCH, tm, tm, tw),
                    ms.masked_scatter_add_ref(vol, src, off, PATCH, mask, mask, weight)):
        assert_close(a, b)
    assert_close(ms.masked_scatter_add_backward(tv, ts, off, PATCH, tm, None, True, False)[0],
                 ms.masked_scatter_add_backward_ref(vol, src, off, PATCH, mask, None, True, False)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    device = TDEV if backend == "compiled" else "cpu"

    def leaf(t):
        return t.to(device).requires_grad_()

    dest, src = leaf(rand(GVOL, R64, 6)), leaf(rand(GVOL[:2] + GPAD, R64, 7))
    mask, weight = leaf(rand(GPATCH, R64, 2) + 0.5), leaf(rand(GVOL[2:], R64, 9))
    window = rand(GPATCH, R64, 8).to(device)
    check_grads(lambda d, s, m, w: ops.masked_scatter_add(d, s, GOFF, GPATCH, m, window, w),
                (dest, src, mask, weight), backend)


def _opcheck_cases():
    mask = rand(GPATCH, R64, 2).requires_grad_()
    dest = rand(GVOL, R64, 6).requires_grad_()
    src = rand(GVOL[:2] + GPAD, R64, 7).requires_grad_()
    window = rand(GPATCH, R64, 8)
    weight = rand(GVOL[2:], R64, 9)
    o, p = list(GOFF), list(GPATCH)
    op = torch.ops.unrolled3d
    return {
        "masked_scatter_add": (op.masked_scatter_add.default, (dest, src, o, p, mask, window, weight)),
        "masked_scatter_add_noweight": (op.masked_scatter_add.default, (dest, src, o, p, None, None, None)),
        "masked_scatter_add_backward": (op.masked_scatter_add_backward.default,
                                        (rand(GVOL, R64, 11).requires_grad_(), src, mask, window, o, p, True, True)),
        "masked_scatter_add_": (op.masked_scatter_add_.default,
                                (dest.detach().clone(), src.detach(), o, p, mask.detach(), window, weight.clone())),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(_opcheck_cases()))
def test_opcheck(case, backend):
    run_opcheck(*_opcheck_cases()[case], backend)


def test_inplace_fast_path():
    dest, src = rand(VOL, R64, 1), rand(VOL[:2] + PAD, R64, 2)
    mask, window, weight = rand(PATCH, R64, 3), rand(PATCH, R64, 4), rand(VOL[2:], R64, 5)
    exp_out, exp_w = ops.masked_scatter_add(dest, src, (2, -1, 3), PATCH, mask, window, weight)
    d2, w2 = dest.clone(), weight.clone()
    with torch.no_grad():
        r_d, r_w = ops.masked_scatter_add_(d2, src, (2, -1, 3), PATCH, mask, window, w2)
    assert r_d is d2 and r_w is w2
    assert_close(d2, exp_out)
    assert_close(w2, exp_w)
    d3 = dest.clone()
    with torch.no_grad():
        assert ops.masked_scatter_add_(d3, src, (2, -1, 3), PATCH)[1] is None
    assert_close(d3, ops.masked_scatter_add(dest, src, (2, -1, 3), PATCH)[0])
    # the functional variant does not touch its inputs
    assert torch.equal(weight, rand(VOL[2:], R64, 5)) and torch.equal(dest, rand(VOL, R64, 1))
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.masked_scatter_add_(dest.clone(), src.requires_grad_(), (0, 0, 0), PATCH)


def test_inplace_rejects_expanded_dest():
    dest = rand((1, 1) + VOL[2:], R32).expand(VOL)
    with torch.no_grad(), pytest.raises(ValueError, match="expanded"):
        ops.masked_scatter_add_(dest, rand(VOL[:2] + PAD, R32), (0, 0, 0), PATCH)


# --------------------------------------------------------------------------- torch.func
WINDOW = rand(GPATCH, R64, 8).abs()


def _scatter(d, s, m, w):
    return ops.masked_scatter_add(d, s, GOFF, GPATCH, m, WINDOW, w)


def test_torch_func_transforms():
    """grad, jvp, jacrev, jacfwd and hessian through the op, both outputs (torch.func.grad used
    to fail with "must override the setup_context staticmethod")."""
    def flat(*args):
        out, out_w = _scatter(*args)
        return torch.cat([out.reshape(-1), out_w.reshape(-1)])

    check_func_transforms(flat, [rand(GVOL, R64, 6), rand(GVOL[:2] + GPAD, R64, 7), rand(GPATCH, R64, 2),
                                 rand(GVOL[2:], R64, 9)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dims", [(0, 0, None, None), (None, 0, None, None), (0, None, None, None),
                                     (None, None, 0, None), (None, 0, None, 0)])
def test_vmap_equals_a_loop(backend, in_dims):
    """vmap over dest/src folds into B (an unbatched one repeated); over masks or weights (no B
    of their own) it loops."""
    device = TDEV if backend == "compiled" else "cpu"
    batched = [rand((3, *GVOL), R64, 1), rand((3, *GVOL[:2], *GPAD), R64, 2), rand((3, *GPATCH), R64, 3),
               rand((3, *GVOL[2:]), R64, 4)]
    batched = [b.to(device) for b in batched]
    window = WINDOW.to(device)
    with ops.use_backend(backend):
        check_vmap(lambda d, s, m, w: ops.masked_scatter_add(d, s, GOFF, GPATCH, m, window, w), batched,
                   [b[0] for b in batched], in_dims)


def test_vmap_of_the_backward_equals_a_loop():
    src, mask = rand(GVOL[:2] + GPAD, R64, 5), rand(GPATCH, R64, 6)
    grads = rand((4, *GVOL), R64, 7)
    for need in [(True, False), (False, True), (True, True)]:
        def bw(g, need=need):
            return torch.ops.unrolled3d.masked_scatter_add_backward(g, src, mask, WINDOW, list(GOFF), list(GPATCH),
                                                                    *need)
        check_vmap(bw, [grads], [grads[0]], (0,))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("offset", OFFSETS)
def test_low_precision_is_the_float32_result_rounded(dtype, offset):
    """float16/bfloat16 run in float32 and are rounded once, functional and in place (there,
    outside the patch, the volume is untouched: rounding its float32 copy gives it back)."""
    dest, src = rand(VOL, R32, 1).to(dtype), rand(VOL[:2] + PAD, R32, 2)
    mask, window, weight = rand(PATCH, R32, 3).to(dtype), rand(PATCH, R32, 4).abs(), rand(VOL[2:], R32, 5).to(dtype)
    ref, ref_w = ops.masked_scatter_add(dest.float(), src, offset, PATCH, mask.float(), window, weight.float())
    out, out_w = ops.masked_scatter_add(dest, src, offset, PATCH, mask, window, weight)
    assert_rounded_float32(out, ref, dtype)
    assert_rounded_float32(out_w, ref_w, dtype)
    d2, w2 = dest.clone(), weight.clone()
    with torch.no_grad():
        ops.masked_scatter_add_(d2, src.to(dtype), offset, PATCH, mask, window, w2)
    ref2, ref2_w = ops.masked_scatter_add(dest.float(), src.to(dtype).float(), offset, PATCH, mask.float(), window,
                                          weight.float())
    assert_rounded_float32(d2, ref2, dtype)
    assert_rounded_float32(w2, ref2_w, dtype)


def test_autocast_runs_in_float32_and_the_inplace_op_still_writes_in_place():
    dest, src = rand(VOL, R32, 1).to(torch.bfloat16), rand(VOL[:2] + PAD, R32, 2)
    off = (1, 2, 1)
    ref = ops.masked_scatter_add(dest.float(), src, off, PATCH)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.masked_scatter_add(dest, src, off, PATCH)[0]
        raw = torch.ops.unrolled3d.masked_scatter_add(dest, src.bfloat16(), list(off), list(PATCH), None, None,
                                                      None)[0]
        d2 = dest.clone()
        with torch.no_grad():
            ops.masked_scatter_add_(d2, src, off, PATCH)
    assert out.dtype == raw.dtype == torch.float32 and d2.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    assert torch.equal(raw, ops.masked_scatter_add(dest.float(), src.bfloat16().float(), off, PATCH)[0])
    assert_rounded_float32(d2, ref, torch.bfloat16)


def _bad_cases():
    v = rand(VOL, R32)
    m = rand(PATCH, R32)
    src = rand(VOL[:2] + PAD, R32)
    s = ops.masked_scatter_add
    return [
        (lambda: s(v, src.double(), (0, 0, 0), PATCH), TypeError, "src must have the same dtype"),
        (lambda: s(v.bfloat16(), src.double(), (0, 0, 0), PATCH), TypeError, "src must have the same dtype"),
        (lambda: s(v, src.half(), (0, 0, 0), PATCH), TypeError, "src must have the same dtype"),
        (lambda: s(v, src, (0, 0, 0), PATCH, mask=m.bfloat16()), TypeError, "mask must have the same dtype"),
        (lambda: s(v.int(), src, (0, 0, 0), PATCH), TypeError, "dest must have dtype"),
        (lambda: s(v, src[:1], (0, 0, 0), PATCH), ValueError, r"src must have the same \(B, C\)"),
        (lambda: s(v, src[..., :2, :], (0, 0, 0), PATCH), ValueError, "src spatial shape must be >= patch_shape"),
        (lambda: s(v, src.to("meta"), (0, 0, 0), PATCH), ValueError, "src must be on the same device"),
        (lambda: s(v, src, (0, 0, 0), PATCH, window=m[..., :2]), ValueError, "window must have shape"),
        (lambda: s(v, src, (0, 0, 0), PATCH, weight=v[0, 0, :2]), ValueError, "weight must have shape"),
        (lambda: s(v, src, (0, 0, 0), PATCH, weight=v[0]), ValueError, "weight must be 3-D"),
        (lambda: s(v, src, (0, 0, 0), PATCH, window=m.clone().requires_grad_()), ValueError,
         "window is not differentiable"),
        (lambda: s(v, src, (0, 0, 0), (0, 1, 1)), ValueError, "patch_shape must be positive"),
        (lambda: s(v, src, [0, 0, 0, 0], PATCH), ValueError, "offset must have 3 entries"),
        (lambda: s(v, src, (0, 0, 0), (4.0, 3, 5)), TypeError, "patch_shape must contain integers"),
    ]


@pytest.mark.parametrize("idx", range(len(_bad_cases())))
def test_bad_inputs_raise(idx):
    fn, exc, msg = _bad_cases()[idx]
    with pytest.raises(exc, match=msg):
        fn()


BIG_VOL = (2, 3, 37, 41, 29)
BIG_PATCH = (20, 33, 17)
BIG_PAD = (32, 40, 34)
BIG_OFFSETS = [(5, 4, 6), (-7, 20, -3), (30, -10, 25)]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [R32, R64])
@pytest.mark.parametrize("offset", BIG_OFFSETS)
def test_cuda_matches_cpu_reference(dtype, offset):
    vol = rand(BIG_VOL, dtype, 1)
    mask, window = rand(BIG_PATCH, dtype, 2), rand(BIG_PATCH, dtype, 3)
    weight = rand(BIG_VOL[2:], dtype, 4)
    src = rand(BIG_VOL[:2] + BIG_PAD, dtype, 5)
    g_vol = rand(BIG_VOL, dtype, 7)
    vc, mc, wc, wtc = vol.cuda(), mask.cuda(), window.cuda(), weight.cuda()
    sc = src.cuda().transpose(-1, -3).contiguous().transpose(-1, -3)  # non-contiguous on the GPU
    for a, b in zip(ops.masked_scatter_add(vc, sc, offset, BIG_PATCH, mc, wc, wtc),
                    ms.masked_scatter_add_ref(vol, src, offset, BIG_PATCH, mask, window, weight)):
        assert_close(a.cpu(), b)
    for a, b in zip(ms.masked_scatter_add_backward(g_vol.cuda(), sc, offset, BIG_PATCH, mc, wc, True, True),
                    ms.masked_scatter_add_backward_ref(g_vol, src, offset, BIG_PATCH, mask, window, True, True)):
        assert_close(a.cpu(), b, terms=6)
