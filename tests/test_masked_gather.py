"""``masked_gather`` (:mod:`unrolled3d.ops.masked_gather`, kernel :mod:`unrolled3d.kernels.masked_gather`):
the twin against a padding oracle and autograd, the Triton launcher against the twin, gradients,
``opcheck`` and bad inputs."""
import pytest
import torch

from fused_testing import (
    BACKENDS, GOFF, GPAD, GPATCH, GVOL, OFFSETS, PAD, PATCH, R32, R64, TDEV, VOL, assert_close, check_grads,
    gather_oracle, noncontig, opt, rand, requires_cuda, requires_triton, run_opcheck,
)
from func_testing import LOW, assert_rounded_float32, check_func_transforms, check_vmap
from unrolled3d import ops
from unrolled3d.kernels import _common
from unrolled3d.kernels import masked_gather as mg


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_reference_matches_padding_oracle(offset, with_mask):
    vol = rand(VOL, R64, 1)
    mask = rand(PATCH, R64, 2) if with_mask else None
    assert torch.equal(mg.masked_gather_ref(vol, offset, PATCH, PAD, mask), gather_oracle(vol, offset, PATCH, PAD, mask))


@pytest.mark.parametrize("offset", OFFSETS[1:3])
def test_backward_reference_matches_autograd(offset):
    vol = rand(VOL, R64, 1).requires_grad_()
    mask = rand(PATCH, R64, 2).requires_grad_()
    out = mg.masked_gather_ref(vol, offset, PATCH, PAD, mask)
    g = rand(out.shape, R64, 3)
    gv, gm = torch.autograd.grad(out, (vol, mask), g)
    rv, rm = mg.masked_gather_backward_ref(g, vol.detach(), offset, PATCH, mask.detach(), True, True)
    assert_close(rv, gv)
    assert_close(rm, gm, terms=6)


@requires_triton
@pytest.mark.parametrize("dtype", [R32, R64])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_triton_matches_reference(dtype, offset, layout, with_mask):
    """Triton launcher (interpreter, or compiled on CUDA) == reference twin on CPU."""
    vol = rand(VOL, dtype, 1)
    mask = rand(PATCH, dtype, 2) if with_mask else None
    g = rand(VOL[:2] + PAD, dtype, 3)
    t_vol, t_mask, t_g = vol.to(TDEV), opt(mask, TDEV), g.to(TDEV)
    if layout == "noncontiguous":
        t_vol, t_g = noncontig(t_vol), noncontig(t_g)
        t_mask = opt(t_mask, None, transpose=True)
    out = mg.masked_gather_forward(t_vol, offset, PATCH, PAD, t_mask)
    assert out.is_contiguous() and out.device == t_vol.device
    assert_close(out, mg.masked_gather_ref(vol, offset, PATCH, PAD, mask))

    for need_v, need_m in [(True, True), (True, False), (False, True)]:
        tv, tm = mg.masked_gather_backward(t_g, t_vol, offset, PATCH, t_mask, need_v, need_m)
        rv, rm = mg.masked_gather_backward_ref(g, vol, offset, PATCH, mask, need_v, need_m)
        for t, r in ((tv, rv), (tm, rm)):
            assert (t is None) == (r is None)
            if r is not None:
                assert_close(t, r, terms=VOL[0] * VOL[1])


@requires_triton
def test_bc_grid_chunking(monkeypatch):
    """B*C beyond the CUDA grid-axis limit is launched in chunks (limit shrunk to 4)."""
    monkeypatch.setattr(_common, "MAX_GRID_YZ", 4)
    vol, g = rand(VOL, R64, 1), rand(VOL[:2] + PAD, R64, 2)
    mask = rand(PATCH, R64, 3)
    tv, tg, tm = vol.to(TDEV), g.to(TDEV), mask.to(TDEV)
    off = (-1, 2, 1)
    assert_close(mg.masked_gather_forward(tv, off, PATCH, PAD, tm), mg.masked_gather_ref(vol, off, PATCH, PAD, mask))
    assert_close(mg.masked_gather_backward(tg, tv, off, PATCH, tm, True, False)[0],
                 mg.masked_gather_backward_ref(g, vol, off, PATCH, mask, True, False)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    device = TDEV if backend == "compiled" else "cpu"
    vol = rand(GVOL, R64, 1).to(device).requires_grad_()
    mask = (rand(GPATCH, R64, 2) + 0.5).to(device).requires_grad_()
    check_grads(lambda v, m: ops.masked_gather(v, GOFF, GPATCH, GPAD, m), (vol, mask), backend)


def _opcheck_cases():
    vol = rand(GVOL, R64, 1).requires_grad_()
    mask = rand(GPATCH, R64, 2).requires_grad_()
    g_pad = rand(GVOL[:2] + GPAD, R64, 3).requires_grad_()
    o, p = list(GOFF), list(GPATCH)
    op = torch.ops.unrolled3d
    return {
        "masked_gather": (op.masked_gather.default, (vol, o, p, list(GPAD), mask)),
        "masked_gather_nomask": (op.masked_gather.default, (vol, o, p, list(GPAD), None)),
        "masked_gather_backward": (op.masked_gather_backward.default, (g_pad, vol, mask, o, p, True, True)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(_opcheck_cases()))
def test_opcheck(case, backend):
    run_opcheck(*_opcheck_cases()[case], backend)


# --------------------------------------------------------------------------- torch.func
def _gather(v, m):
    return ops.masked_gather(v, GOFF, GPATCH, GPAD, m)


def test_torch_func_transforms():
    """grad, jvp, jacrev, jacfwd and hessian through the op (torch.func.grad used to fail with
    "must override the setup_context staticmethod")."""
    check_func_transforms(_gather, [rand(GVOL, R64, 1), rand(GPATCH, R64, 2)])
    check_func_transforms(lambda v: _gather(v, None), [rand(GVOL, R64, 1)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dims", [(0, None), (2, None), (None, 0), (0, 0)])
def test_vmap_equals_a_loop(backend, in_dims):
    """vmap over volumes folds into B; over masks (no B of their own) it loops."""
    device = TDEV if backend == "compiled" else "cpu"
    vols = rand((3, *GVOL), R64, 3).to(device).movedim(0, in_dims[0] or 0)
    masks = rand((3, *GPATCH), R64, 4).to(device)
    with ops.use_backend(backend):
        check_vmap(_gather, [vols, masks], [vols.select(in_dims[0] or 0, 0), masks[0]], in_dims)


def test_vmap_of_the_backward_equals_a_loop():
    """jacrev vmaps the backward op: folded into B for the volume's gradient, looped where the
    mask's gradient sums over B."""
    vol, mask = rand(GVOL, R64, 5), rand(GPATCH, R64, 6)
    grads = rand((4, *GVOL[:2], *GPAD), R64, 7)
    for need in [(True, False), (False, True), (True, True)]:
        def bw(g, need=need):
            return torch.ops.unrolled3d.masked_gather_backward(g, vol, mask, list(GOFF), list(GPATCH), *need)
        check_vmap(bw, [grads], [grads[0]], (0,))


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_is_the_float32_result_rounded(dtype):
    vol = rand(VOL, R32, 8).to(dtype)
    for mask in (rand(PATCH, R32, 9), rand(PATCH, R32, 9).to(dtype), None):
        out = ops.masked_gather(vol, (1, 2, 1), PATCH, PAD, mask)
        ref = ops.masked_gather(vol.float(), (1, 2, 1), PATCH, PAD, mask.float() if mask is not None else None)
        assert_rounded_float32(out, ref, dtype)
    # the gradient comes back in the volume's dtype
    v = vol.clone().requires_grad_()
    g = rand((*VOL[:2], *PAD), R32, 10)
    (ops.masked_gather(v, (1, 2, 1), PATCH, PAD).float() * g).sum().backward()
    ref_grad = mg.masked_gather_backward_ref(g.to(dtype).float(), vol.float(), (1, 2, 1), PATCH, None, True,
                                             False)[0]
    assert_rounded_float32(v.grad, ref_grad, dtype)


def test_autocast_runs_in_float32():
    vol, mask = rand(VOL, R32, 11).to(torch.bfloat16), rand(PATCH, R32, 12)
    ref = ops.masked_gather(vol.float(), (1, 2, 1), PATCH, PAD, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.masked_gather(vol, (1, 2, 1), PATCH, PAD, mask)
        raw = torch.ops.unrolled3d.masked_gather(vol, [1, 2, 1], list(PATCH), list(PAD), mask.bfloat16())
    assert out.dtype == raw.dtype == torch.float32
    assert torch.equal(out, ref)
    assert torch.equal(raw, ops.masked_gather(vol.float(), (1, 2, 1), PATCH, PAD, mask.bfloat16().float()))


def _bad_cases():
    v = rand(VOL, R32)
    m = rand(PATCH, R32)
    meta = torch.empty(PATCH, device="meta")
    g = ops.masked_gather
    return [
        (lambda: g(v[0], (0, 0, 0), PATCH, PAD), ValueError, "volume must be 5-D"),
        (lambda: g(v.to(torch.int32), (0, 0, 0), PATCH, PAD), TypeError, "volume must have dtype"),
        (lambda: g(v.to(torch.complex64), (0, 0, 0), PATCH, PAD), TypeError, "volume must have dtype"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m.half()), TypeError, "mask must have the same dtype"),
        (lambda: g(v.double(), (0, 0, 0), PATCH, PAD, m), TypeError, "mask must have the same dtype"),
        (lambda: g(v, (0, 0), PATCH, PAD), ValueError, "offset must have 3 entries"),
        (lambda: g(v, (0, 0.5, 0), PATCH, PAD), TypeError, "offset must contain integers"),
        (lambda: g(v, (0, True, 0), PATCH, PAD), TypeError, "offset must contain integers"),
        (lambda: g(v, "000", PATCH, PAD), TypeError, "offset must be a sequence"),
        (lambda: g(v, (0, 0, 0), (4, 0, 5), PAD), ValueError, "patch_shape must be positive"),
        (lambda: g(v, (0, 0, 0), PATCH, (6, 2, 8)), ValueError, "pad_shape must be >= patch_shape"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m[:3]), ValueError, "mask must have shape"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m[None]), ValueError, "mask must be 3-D"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m.double()), TypeError, "mask must have the same dtype"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, meta), ValueError, "mask must be on the same device"),
    ]


@pytest.mark.parametrize("idx", range(len(_bad_cases())))
def test_bad_inputs_raise(idx):
    fn, exc, msg = _bad_cases()[idx]
    with pytest.raises(exc, match=msg):
        fn()


def test_offsets_as_integer_tensor_are_accepted():
    v = rand(VOL, R64, 1)
    out = ops.masked_gather(v, torch.tensor([1, 2, 1]), PATCH, PAD)
    assert torch.equal(out, ops.masked_gather(v, (1, 2, 1), PATCH, PAD))


BIG_VOL = (2, 3, 37, 41, 29)
BIG_PATCH = (20, 33, 17)
BIG_PAD = (32, 40, 34)
BIG_OFFSETS = [(5, 4, 6), (-7, 20, -3), (30, -10, 25)]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [R32, R64])
@pytest.mark.parametrize("offset", BIG_OFFSETS)
def test_cuda_matches_cpu_reference(dtype, offset):
    vol, mask = rand(BIG_VOL, dtype, 1), rand(BIG_PATCH, dtype, 2)
    g_pad = rand(BIG_VOL[:2] + BIG_PAD, dtype, 6)
    vc, mc = vol.cuda(), mask.cuda()
    nc = vc.transpose(-1, -3).contiguous().transpose(-1, -3)  # non-contiguous on the GPU
    assert_close(ops.masked_gather(nc, offset, BIG_PATCH, BIG_PAD, mc).cpu(),
                 mg.masked_gather_ref(vol, offset, BIG_PATCH, BIG_PAD, mask))
    for a, b in zip(mg.masked_gather_backward(g_pad.cuda(), vc, offset, BIG_PATCH, mc, True, True),
                    mg.masked_gather_backward_ref(g_pad, vol, offset, BIG_PATCH, mask, True, True)):
        assert_close(a.cpu(), b, terms=6)


@requires_cuda
@pytest.mark.cuda
def test_cuda_int64_indexing_beyond_2_31_elements():
    """A patch at the far end of a > 2^31-element volume (needs ~9 GB of GPU memory)."""
    shape = (1, 1, 1292, 1292, 1292)  # 2.157e9 elements > 2^31
    need = 2 * 4 * 1292 ** 3 + 2 ** 30
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free GPU memory")
    vol = torch.zeros(shape, device="cuda")
    off, patch = (1280, 1281, 1284), (16, 16, 16)
    region = (..., slice(1280, 1292), slice(1281, 1292), slice(1284, 1292))
    vol[region] = torch.arange(12 * 11 * 8, device="cuda", dtype=torch.float32).reshape(12, 11, 8)
    out = ops.masked_gather(vol, off, patch, (16, 16, 16))
    assert torch.equal(out[0, 0, :12, :11, :8], vol[region][0, 0])
    assert out[..., 12:, :, :].abs().sum() == 0
    with torch.no_grad():
        ops.masked_scatter_add_(vol, out, off, patch)
    assert torch.equal(vol[region][0, 0], 2 * out[0, 0, :12, :11, :8])
    del vol
    torch.cuda.empty_cache()
