"""Tests of the fused Triton kernels (``unrolled3d.kernels``) and their registered ops
(``unrolled3d.ops.fused``).

Why TRITON_INTERPRET is set here, first: Triton decides whether a ``@triton.jit``
kernel is compiled for a GPU or run by its CPU interpreter when the kernel is
*decorated*, i.e. when ``unrolled3d.kernels`` is imported, so the variable must be
set before anything imports it (and before triton itself is configured).  It is
only defaulted to ``1`` when the machine has no NVIDIA driver: on a GPU machine the
CUDA tests must exercise the *compiled* kernels (and the interpreter tests are
then skipped).  Set ``TRITON_INTERPRET=1`` explicitly to force the interpreter.
Note: if a conftest/plugin imports ``unrolled3d.kernels`` before this file, the
interpreter tests are skipped with a reason rather than run on compiled kernels.
"""

import os

# tests/conftest.py sets TRITON_INTERPRET=1 (no NVIDIA driver) before anything imports Triton;
# a run of this file alone goes through conftest too.

import itertools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unrolled3d.ops import fused  # noqa: E402  (also makes unrolled3d.kernels importable)
from unrolled3d.kernels import masked_gather as mg  # noqa: E402
from unrolled3d.kernels import masked_scatter as ms  # noqa: E402
from unrolled3d.kernels import spectral_filter as sf  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1" and fused.kernels.INTERPRETED
CUDA = torch.cuda.is_available()
# where the Triton launchers are exercised: the CPU interpreter, else compiled on CUDA
TDEV = "cpu" if INTERP else ("cuda" if CUDA and not fused.kernels.INTERPRETED else None)
requires_triton = pytest.mark.skipif(
    TDEV is None, reason="needs the Triton CPU interpreter (TRITON_INTERPRET=1 set before unrolled3d.kernels is "
                         "imported) or a CUDA device")
requires_cuda = pytest.mark.skipif(
    not CUDA or fused.kernels.INTERPRETED, reason="needs a CUDA device with compiled (non-interpreted) Triton kernels")

R64 = torch.float64
R32 = torch.float32
C64 = torch.complex64
C128 = torch.complex128
REAL_OF = {R32: R32, R64: R64, C64: R32, C128: R64}
COMPLEX_OF = {R32: C64, R64: C128}

VOL = (2, 3, 5, 7, 6)  # odd sizes, B and C > 1
PATCH = (4, 3, 5)
PAD = (6, 4, 8)
OFFSETS = [(0, 0, 0), (1, 2, 1), (-2, 3, -1), (3, 5, 4), (-10, 0, 0)]  # inside, partly out (neg / past end), missing


def assert_close(actual, expected, *, terms: int = 1, scale: float = None):
    """rtol 1e-5 (float32) / 1e-12 (float64); an atol of a few ulps of the data scale
    times the number of summed terms (only matters where values are 0 or cancel)."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    rdt = REAL_OF[expected.dtype]
    rtol = 1e-5 if rdt == R32 else 1e-12
    eps = torch.finfo(rdt).eps
    if scale is None:
        scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=8 * eps * terms * scale)


def noncontig(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous layout (transposed storage + a strided slice)."""
    big = torch.empty(t.shape[:-3] + (t.shape[-1], t.shape[-2], 2 * t.shape[-3]), dtype=t.dtype, device=t.device)
    view = big.transpose(-1, -3)[..., ::2, :, :]
    view.copy_(t)
    assert not view.is_contiguous() and torch.equal(view, t)
    return view


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _opt(t, device=None, transpose=False):
    """Optional tensor to ``device``; ``transpose=True`` gives a non-contiguous 3-D copy."""
    if t is None:
        return None
    if device is not None:
        t = t.to(device)
    return t.transpose(0, 2).contiguous().transpose(0, 2) if transpose else t


def rand(shape, dtype, seed=0):
    return torch.randn(shape, dtype=dtype, generator=_gen(seed))


# --------------------------------------------------------------------------- #
# independent oracles (padding-based, no overlap arithmetic)
# --------------------------------------------------------------------------- #
M = 12  # margin larger than any offset/patch used with the oracles


def gather_oracle(volume, offset, patch, pad, mask):
    big = F.pad(volume, (M, M) * 3)
    sl = tuple(slice(o + M, o + M + p) for o, p in zip(offset, patch))
    x = big[(..., *sl)]
    if mask is not None:
        x = x * mask
    return F.pad(x, (0, pad[2] - patch[2], 0, pad[1] - patch[1], 0, pad[0] - patch[0]))


def scatter_oracle(dest, src, offset, patch, mask, window, weight):
    x = src[..., :patch[0], :patch[1], :patch[2]]
    if mask is not None:
        x = x * mask
    if window is not None:
        x = x * window
    sl = tuple(slice(o + M, o + M + p) for o, p in zip(offset, patch))
    big = F.pad(dest, (M, M) * 3).clone()
    big[(..., *sl)] = big[(..., *sl)] + x
    out = big[..., M:-M, M:-M, M:-M]
    out_w = None
    if weight is not None:
        bw = F.pad(weight, (M, M) * 3).clone()
        bw[sl] = bw[sl] + (window if window is not None else torch.ones(patch, dtype=weight.dtype))
        out_w = bw[M:-M, M:-M, M:-M]
    return out, out_w


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_references_match_padding_oracle(offset, with_mask):
    vol = rand(VOL, R64, 1)
    mask = rand(PATCH, R64, 2) if with_mask else None
    window = rand(PATCH, R64, 3)
    weight = rand(VOL[2:], R64, 4)
    src = rand(VOL[:2] + PAD, R64, 5)
    assert torch.equal(mg.masked_gather_ref(vol, offset, PATCH, PAD, mask), gather_oracle(vol, offset, PATCH, PAD, mask))
    out, out_w = ms.masked_scatter_add_ref(vol, src, offset, PATCH, mask, window, weight)
    o_out, o_w = scatter_oracle(vol, src, offset, PATCH, mask, window, weight)
    assert_close(out, o_out)
    assert_close(out_w, o_w)
    out, out_w = ms.masked_scatter_add_ref(vol, src, offset, PATCH, mask, None, None)
    assert out_w is None
    assert_close(out, scatter_oracle(vol, src, offset, PATCH, mask, None, None)[0])


@pytest.mark.parametrize("offset", OFFSETS[1:3])
def test_backward_references_match_autograd(offset):
    """The hand-written backward twins follow PyTorch's (complex) autograd conventions."""
    vol = rand(VOL, R64, 1).requires_grad_()
    mask = rand(PATCH, R64, 2).requires_grad_()
    out = mg.masked_gather_ref(vol, offset, PATCH, PAD, mask)
    g = rand(out.shape, R64, 3)
    gv, gm = torch.autograd.grad(out, (vol, mask), g)
    rv, rm = mg.masked_gather_backward_ref(g, vol.detach(), offset, PATCH, mask.detach(), True, True)
    assert_close(rv, gv)
    assert_close(rm, gm, terms=6)

    for lam_dtype in (R64, C128):
        spec = rand((2, 3, 5, 4, 3), C128, 4).requires_grad_()
        lam = rand((5, 4, 3), lam_dtype, 5).requires_grad_()
        out = sf.spectral_filter_ref(spec, lam, 0.37)
        g = rand(out.shape, C128, 6)
        gs, gl = torch.autograd.grad(out, (spec, lam), g)
        rs, rl = sf.spectral_filter_backward_ref(g, spec.detach(), lam.detach(), 0.37)
        assert rl.dtype == lam_dtype
        assert_close(rs, gs)
        assert_close(rl, gl, terms=6)

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


# --------------------------------------------------------------------------- #
# Triton launcher == reference twin (CPU interpreter)
# --------------------------------------------------------------------------- #
@requires_triton
@pytest.mark.parametrize("dtype", [R32, R64])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_masked_gather_triton_matches_ref(dtype, offset, layout, with_mask):
    """Triton launcher (interpreter, or compiled on CUDA) == reference twin on CPU."""
    vol = rand(VOL, dtype, 1)
    mask = rand(PATCH, dtype, 2) if with_mask else None
    g = rand(VOL[:2] + PAD, dtype, 3)
    t_vol, t_mask, t_g = vol.to(TDEV), _opt(mask, TDEV), g.to(TDEV)
    if layout == "noncontiguous":
        t_vol, t_g = noncontig(t_vol), noncontig(t_g)
        t_mask = _opt(t_mask, None, transpose=True)
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
@pytest.mark.parametrize("dtype", [C64, C128])
@pytest.mark.parametrize("lam_kind", ["real", "complex"])
@pytest.mark.parametrize("layout", ["contiguous", "bc_transposed", "inner_noncontig", "conj_view"])
def test_spectral_filter_triton_matches_ref(dtype, lam_kind, layout):
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
        t_spec, t_g, t_lam = noncontig(t_spec), noncontig(t_g), _opt(t_lam, None, transpose=True)
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
def test_masked_scatter_triton_matches_ref(dtype, offset, layout, extras):
    with_mask, with_window, with_weight = extras
    dest = rand(VOL, dtype, 1)
    src = rand(VOL[:2] + PAD, dtype, 2)
    mask = rand(PATCH, dtype, 3) if with_mask else None
    window = rand(PATCH, dtype, 4) if with_window else None
    weight = rand(VOL[2:], dtype, 5) if with_weight else None
    g = rand(VOL, dtype, 6)
    t_dest, t_src, t_g = dest.to(TDEV), src.to(TDEV), g.to(TDEV)
    t_mask, t_window, t_weight = _opt(mask, TDEV), _opt(window, TDEV), _opt(weight, TDEV)
    if layout == "noncontiguous":
        t_dest, t_src, t_g = noncontig(t_dest), noncontig(t_src), noncontig(t_g)
        t_weight, t_window = _opt(t_weight, None, transpose=True), _opt(t_window, None, transpose=True)
    out, out_w = ms.masked_scatter_add_forward(t_dest, t_src, offset, PATCH, t_mask, t_window, t_weight)
    r_out, r_w = ms.masked_scatter_add_ref(dest, src, offset, PATCH, mask, window, weight)
    assert out.is_contiguous()
    assert_close(out, r_out)
    assert (out_w is None) == (weight is None)
    if weight is not None:
        assert_close(out_w, r_w)

    d2 = noncontig(dest.to(TDEV)) if layout == "noncontiguous" else dest.to(TDEV).clone()  # strided in-place
    w2 = _opt(_opt(weight, TDEV).clone(), None, transpose=layout == "noncontiguous") if weight is not None else None
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
    monkeypatch.setattr(mg, "_MAX_GRID_YZ", 4)
    dt = R64
    vol, src = rand(VOL, dt, 1), rand(VOL[:2] + PAD, dt, 2)
    mask, weight = rand(PATCH, dt, 3), rand(VOL[2:], dt, 4)
    tv, ts, tm, tw = vol.to(TDEV), src.to(TDEV), mask.to(TDEV), weight.to(TDEV)
    off = (-1, 2, 1)
    assert_close(mg.masked_gather_forward(tv, off, PATCH, PAD, tm), mg.masked_gather_ref(vol, off, PATCH, PAD, mask))
    assert_close(mg.masked_gather_backward(ts, tv, off, PATCH, tm, True, False)[0],
                 mg.masked_gather_backward_ref(src, vol, off, PATCH, mask, True, False)[0])
    for a, b in zip(ms.masked_scatter_add_forward(tv, ts, off, PATCH, tm, tm, tw),
                    ms.masked_scatter_add_ref(vol, src, off, PATCH, mask, mask, weight)):
        assert_close(a, b)
    assert_close(ms.masked_scatter_add_backward(tv, ts, off, PATCH, tm, None, True, False)[0],
                 ms.masked_scatter_add_backward_ref(vol, src, off, PATCH, mask, None, True, False)[0])
    spec, lam = rand((2, 3, 5, 4, 3), C128, 5), rand((5, 4, 3), C128, 6)
    t_spec, t_lam = spec.to(TDEV), lam.to(TDEV)
    assert_close(sf.spectral_filter_forward(t_spec, t_lam, 0.5), sf.spectral_filter_ref(spec, lam, 0.5))
    assert_close(sf.spectral_filter_backward(t_spec, t_spec, t_lam, 0.5, True, False)[0],
                 sf.spectral_filter_backward_ref(spec, spec, lam, 0.5, True, False)[0])


# --------------------------------------------------------------------------- #
# registered ops: gradcheck (both dispatch paths), opcheck
# --------------------------------------------------------------------------- #
GOFF = (-1, 2, 1)  # partly outside the (3, 4, 3) volume
GPATCH, GPAD, GVOL = (2, 3, 2), (3, 4, 3), (1, 2, 3, 4, 3)


def _grad_cases(device="cpu"):
    """name -> (function of differentiable tensors, inputs) on tiny float64 sizes."""
    dt = R64

    def leaf(t):
        return t.to(device).requires_grad_()

    vol = leaf(rand(GVOL, dt, 1))
    mask = leaf(rand(GPATCH, dt, 2) + 0.5)
    spec = leaf(rand((2, 1, 3, 2, 2), C128, 3))
    lam_r = leaf(rand((3, 2, 2), dt, 4))
    lam_c = leaf(rand((3, 2, 2), C128, 5))
    dest = leaf(rand(GVOL, dt, 6))
    src = leaf(rand(GVOL[:2] + GPAD, dt, 7))
    window = rand(GPATCH, dt, 8).to(device)
    weight = leaf(rand(GVOL[2:], dt, 9))
    return {
        "masked_gather": (lambda v, m: fused.masked_gather(v, GOFF, GPATCH, GPAD, m), (vol, mask)),
        "spectral_filter_real_lam": (lambda s, l: fused.spectral_filter(s, l, 0.7), (spec, lam_r)),
        "spectral_filter_complex_lam": (lambda s, l: fused.spectral_filter(s, l, 0.7), (spec, lam_c)),
        "masked_scatter_add": (lambda d, s, m, w: fused.masked_scatter_add(d, s, GOFF, GPATCH, m, window, w),
                               (dest, src, mask, weight)),
    }


GRAD_CASES = sorted(_grad_cases())


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradcheck_reference_path(case):
    fn, inputs = _grad_cases()[case]
    with fused.use_backend("reference"):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@requires_triton
@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradcheck_triton_path(case):
    """Through the registered ops with the Triton launchers (CPU interpreter or CUDA)."""
    fn, inputs = _grad_cases(TDEV)[case]
    with fused.use_backend("triton"):  # raises if Triton cannot run, so this path is really exercised
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def _opcheck_cases():
    dt = R64
    vol = rand(GVOL, dt, 1).requires_grad_()
    mask = rand(GPATCH, dt, 2).requires_grad_()
    g_pad = rand(GVOL[:2] + GPAD, dt, 3)
    spec = rand((2, 1, 3, 2, 2), C128, 4).requires_grad_()
    lam = rand((3, 2, 2), dt, 5).requires_grad_()
    dest = rand(GVOL, dt, 6).requires_grad_()
    src = rand(GVOL[:2] + GPAD, dt, 7).requires_grad_()
    window = rand(GPATCH, dt, 8)
    weight = rand(GVOL[2:], dt, 9)
    o, p = list(GOFF), list(GPATCH)
    ops = torch.ops.unrolled3d
    return {
        "masked_gather": (ops.masked_gather.default, (vol, o, p, list(GPAD), mask)),
        "masked_gather_nomask": (ops.masked_gather.default, (vol, o, p, list(GPAD), None)),
        "masked_gather_backward": (ops.masked_gather_backward.default,
                                   (g_pad.requires_grad_(), vol, mask, o, p, True, True)),
        "spectral_filter": (ops.spectral_filter.default, (spec, lam, 0.7)),
        "spectral_filter_backward": (ops.spectral_filter_backward.default,
                                     (rand(spec.shape, C128, 10).requires_grad_(), spec, lam, 0.7, True, True)),
        "masked_scatter_add": (ops.masked_scatter_add.default, (dest, src, o, p, mask, window, weight)),
        "masked_scatter_add_noweight": (ops.masked_scatter_add.default, (dest, src, o, p, None, None, None)),
        "masked_scatter_add_backward": (ops.masked_scatter_add_backward.default,
                                        (rand(GVOL, dt, 11).requires_grad_(), src, mask, window, o, p, True, True)),
        "masked_scatter_add_": (ops.masked_scatter_add_.default,
                                (dest.detach().clone(), src.detach(), o, p, mask.detach(), window, weight.clone())),
    }


OPCHECK_BACKENDS = ["reference"] + (["triton"] if TDEV is not None else [])


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("case", sorted(_opcheck_cases()))
def test_opcheck(case, backend):
    op, args = _opcheck_cases()[case]
    if backend == "triton" and TDEV != "cpu":
        args = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                     for a in args)
    with fused.use_backend(backend):
        torch.library.opcheck(op, args)


# --------------------------------------------------------------------------- #
# composite: gather -> rfftn -> filter -> irfftn -> scatter == plain torch chain
# --------------------------------------------------------------------------- #
def fused_chain(volume, mask, lam, dest, window, weight, offset, patch, pad, scale):
    x = fused.masked_gather(volume, offset, patch, pad, mask)
    X = torch.fft.rfftn(x, dim=(-3, -2, -1))
    Y = fused.spectral_filter(X, lam, scale)
    y = torch.fft.irfftn(Y, s=pad, dim=(-3, -2, -1))
    return fused.masked_scatter_add(dest, y, offset, patch, mask, window, weight)


def torch_chain(volume, mask, lam, dest, window, weight, offset, patch, pad, scale):
    x = gather_oracle(volume, offset, patch, pad, mask)
    y = torch.fft.irfftn(torch.fft.rfftn(x, dim=(-3, -2, -1)) * lam * scale, s=pad, dim=(-3, -2, -1))
    return scatter_oracle(dest, y, offset, patch, mask, window, weight)


def _chain_inputs(dtype, lam_complex, seed=0):
    vol = rand(VOL, dtype, seed + 1).requires_grad_()
    mask = (rand(PATCH, dtype, seed + 2).abs() + 0.1).requires_grad_()
    lam_shape = (PAD[0], PAD[1], PAD[2] // 2 + 1)
    lam = rand(lam_shape, COMPLEX_OF[dtype] if lam_complex else dtype, seed + 3).requires_grad_()
    dest = rand(VOL, dtype, seed + 4).requires_grad_()
    window = rand(PATCH, dtype, seed + 5).abs()
    weight = rand(VOL[2:], dtype, seed + 6).abs()
    return vol, mask, lam, dest, window, weight


CHAIN_BACKENDS = ["reference"] + (["triton"] if TDEV is not None else [])


@pytest.mark.parametrize("backend", CHAIN_BACKENDS)
@pytest.mark.parametrize("dtype,lam_complex", [(R32, False), (R64, True)])
def test_composite_chain_matches_plain_torch(backend, dtype, lam_complex):
    inputs = _chain_inputs(dtype, lam_complex)
    geo = ((-2, 3, 1), PATCH, PAD, 0.6)
    dev_inputs = inputs
    if backend == "triton" and TDEV != "cpu":
        dev_inputs = [t.detach().to(TDEV).requires_grad_(t.requires_grad) for t in inputs]
    with fused.use_backend(backend):
        out, out_w = fused_chain(*dev_inputs, *geo)
    r_out, r_w = torch_chain(*inputs, *geo)
    assert_close(out, r_out, terms=64)
    assert_close(out_w, r_w)
    g = rand(out.shape, dtype, 42)
    diff = [t for t in inputs if t.requires_grad]
    with fused.use_backend(backend):
        grads = torch.autograd.grad(out, [t for t in dev_inputs if t.requires_grad], g.to(out.device))
    r_grads = torch.autograd.grad(r_out, diff, g)
    for a, b in zip(grads, r_grads):
        assert_close(a, b, terms=512)


# --------------------------------------------------------------------------- #
# torch.compile
# --------------------------------------------------------------------------- #
def test_compile_aot_eager_reference_cpu():
    torch._dynamo.reset()
    inputs = _chain_inputs(R64, True)
    geo = ((1, -1, 2), PATCH, PAD, 0.6)

    def f(*ts):
        return fused_chain(*ts, *geo)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with fused.use_backend("reference"):
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
        return fused.masked_scatter_add_(dest, src, (1, -1, 2), PATCH, mask, None, weight)

    dest, src = rand(VOL, R64, 1), rand(VOL[:2] + PAD, R64, 2)
    mask, weight = rand(PATCH, R64, 3), rand(VOL[2:], R64, 4)
    exp = ms.masked_scatter_add_ref(dest, src, (1, -1, 2), PATCH, mask, None, weight)
    d2, w2 = dest.clone(), weight.clone()
    with torch.no_grad(), fused.use_backend("reference"):
        torch.compile(g_inplace, fullgraph=True, backend="aot_eager")(d2, src, mask, w2)
    assert_close(d2, exp[0])
    assert_close(w2, exp[1])


@requires_cuda
@pytest.mark.cuda
def test_compile_inductor_cuda_triton():
    torch._dynamo.reset()
    inputs = [t.detach().cuda().requires_grad_(t.requires_grad) for t in _chain_inputs(R32, False)]
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
    with fused.use_backend("reference"):
        ge = torch.autograd.grad(f(*inputs)[0], diff, g.cuda())
    for a, b in zip(gc, ge):
        assert_close(a.cpu(), b.cpu(), terms=512)


# --------------------------------------------------------------------------- #
# in-place fast path, dispatch, errors
# --------------------------------------------------------------------------- #
def test_inplace_scatter_fast_path():
    dest, src = rand(VOL, R64, 1), rand(VOL[:2] + PAD, R64, 2)
    mask, window, weight = rand(PATCH, R64, 3), rand(PATCH, R64, 4), rand(VOL[2:], R64, 5)
    exp_out, exp_w = fused.masked_scatter_add(dest, src, (2, -1, 3), PATCH, mask, window, weight)
    d2, w2 = dest.clone(), weight.clone()
    with torch.no_grad():
        r_d, r_w = fused.masked_scatter_add_(d2, src, (2, -1, 3), PATCH, mask, window, w2)
    assert r_d is d2 and r_w is w2
    assert_close(d2, exp_out)
    assert_close(w2, exp_w)
    d3 = dest.clone()
    with torch.no_grad():
        assert fused.masked_scatter_add_(d3, src, (2, -1, 3), PATCH)[1] is None
    assert_close(d3, fused.masked_scatter_add(dest, src, (2, -1, 3), PATCH)[0])
    # functional variant does not touch its inputs
    assert torch.equal(weight, rand(VOL[2:], R64, 5)) and torch.equal(dest, rand(VOL, R64, 1))
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.masked_scatter_add_(dest.clone(), src.requires_grad_(), (0, 0, 0), PATCH)


def test_dispatch_rules():
    default = os.environ.get("UNROLLED3D_FUSED_BACKEND", "auto")
    assert fused.get_backend() == default
    assert fused.triton_enabled_for(torch.device("cpu")) == INTERP
    assert fused.triton_enabled_for(torch.device("cuda")) is True
    with pytest.raises(ValueError, match="backend must be one of"):
        fused.set_backend("cuda")
    with fused.use_backend("reference"):
        assert fused.get_backend() == "reference"
    assert fused.get_backend() == default
    if not INTERP:
        with fused.use_backend("triton"), pytest.raises(RuntimeError, match="cannot run on cpu"):
            fused.masked_gather(rand(VOL, R32), (0, 0, 0), PATCH, PAD)


def _bad_cases():
    v = rand(VOL, R32)
    m = rand(PATCH, R32)
    spec = rand((2, 3, 6, 4, 5), C64)
    lam = rand((6, 4, 5), R32)
    src = rand(VOL[:2] + PAD, R32)
    meta = torch.empty(PATCH, device="meta")
    g = fused.masked_gather
    s = fused.masked_scatter_add
    return [
        (lambda: g(v[0], (0, 0, 0), PATCH, PAD), ValueError, "volume must be 5-D"),
        (lambda: g(v.to(torch.int32), (0, 0, 0), PATCH, PAD), TypeError, "volume must have dtype"),
        (lambda: g(v.half(), (0, 0, 0), PATCH, PAD), TypeError, "volume must have dtype"),
        (lambda: g(v, (0, 0), PATCH, PAD), ValueError, "offset must have exactly 3"),
        (lambda: g(v, (0, 0.5, 0), PATCH, PAD), TypeError, "offset entries must be ints"),
        (lambda: g(v, torch.zeros(3, dtype=torch.long), PATCH, PAD), TypeError, "offset must be a tuple"),
        (lambda: g(v, (0, 0, 0), (4, 0, 5), PAD), ValueError, "patch_shape entries must be positive"),
        (lambda: g(v, (0, 0, 0), PATCH, (6, 2, 8)), ValueError, "pad_shape must be >= patch_shape"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m[:3]), ValueError, "mask must have shape"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m[None]), ValueError, "mask must be 3-D"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, m.double()), TypeError, "mask must have the same dtype"),
        (lambda: g(v, (0, 0, 0), PATCH, PAD, meta), ValueError, "mask must be on the same device"),
        (lambda: fused.spectral_filter(spec.real, lam), TypeError, "spec must have dtype"),
        (lambda: fused.spectral_filter(spec[0], lam), ValueError, "spec must be 5-D"),
        (lambda: fused.spectral_filter(spec, lam[:1]), ValueError, r"lam must have shape \(Pd, Ph, Q\)"),
        (lambda: fused.spectral_filter(spec, lam[None]), ValueError, "lam must have shape"),
        (lambda: fused.spectral_filter(spec, lam.double()), TypeError, "lam must have dtype"),
        (lambda: fused.spectral_filter(spec, lam.to(C128)), TypeError, "lam must have dtype"),
        (lambda: fused.spectral_filter(spec, lam.to("meta")), ValueError, "lam must be on the same device"),
        (lambda: fused.spectral_filter(spec, lam.tolist()), TypeError, "lam must be a torch.Tensor"),
        (lambda: fused.spectral_filter(spec, lam, torch.tensor(2.0)), TypeError, "scale must be a real"),
        (lambda: fused.spectral_filter(spec, lam, 1j), TypeError, "scale must be a real"),
        (lambda: s(v, src.double(), (0, 0, 0), PATCH), TypeError, "src must have the same dtype"),
        (lambda: s(v, src[:1], (0, 0, 0), PATCH), ValueError, r"src must have the same \(B, C\)"),
        (lambda: s(v, src[..., :2, :], (0, 0, 0), PATCH), ValueError, "src spatial shape must be >= patch_shape"),
        (lambda: s(v, src.to("meta"), (0, 0, 0), PATCH), ValueError, "src must be on the same device"),
        (lambda: s(v, src, (0, 0, 0), PATCH, window=m[..., :2]), ValueError, "window must have shape"),
        (lambda: s(v, src, (0, 0, 0), PATCH, weight=v[0, 0, :2]), ValueError, "weight must have shape"),
        (lambda: s(v, src, (0, 0, 0), PATCH, weight=v[0]), ValueError, "weight must be 3-D"),
        (lambda: s(v, src, (0, 0, 0), PATCH, window=m.clone().requires_grad_()), ValueError, "window is not differentiable"),
        (lambda: s(v, src, (0, 0, 0), (0, 1, 1)), ValueError, "patch_shape entries must be positive"),
        (lambda: s(v, src, [0, 0, 0, 0], PATCH), ValueError, "offset must have exactly 3"),
    ]


@pytest.mark.parametrize("idx", range(len(_bad_cases())))
def test_bad_inputs_raise(idx):
    fn, exc, msg = _bad_cases()[idx]
    with pytest.raises(exc, match=msg):
        fn()


def test_inplace_rejects_expanded_dest():
    dest = rand((1, 1) + VOL[2:], R32).expand(VOL)
    with torch.no_grad(), pytest.raises((ValueError, RuntimeError)):
        fused.masked_scatter_add_(dest, rand(VOL[:2] + PAD, R32), (0, 0, 0), PATCH)


# --------------------------------------------------------------------------- #
# CUDA: compiled Triton vs CPU reference on larger shapes
# --------------------------------------------------------------------------- #
BIG_VOL = (2, 3, 37, 41, 29)
BIG_PATCH = (20, 33, 17)
BIG_PAD = (32, 40, 34)
BIG_OFFSETS = [(5, 4, 6), (-7, 20, -3), (30, -10, 25)]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [R32, R64])
@pytest.mark.parametrize("offset", BIG_OFFSETS)
def test_cuda_gather_scatter_match_cpu_reference(dtype, offset):
    vol = rand(BIG_VOL, dtype, 1)
    mask, window = rand(BIG_PATCH, dtype, 2), rand(BIG_PATCH, dtype, 3)
    weight = rand(BIG_VOL[2:], dtype, 4)
    src = rand(BIG_VOL[:2] + BIG_PAD, dtype, 5)
    g_pad = rand(BIG_VOL[:2] + BIG_PAD, dtype, 6)
    g_vol = rand(BIG_VOL, dtype, 7)
    nc = lambda t: t.transpose(-1, -3).contiguous().transpose(-1, -3)  # noqa: E731  (non-contiguous on GPU)
    vc, mc, wc, wtc, sc = vol.cuda(), mask.cuda(), window.cuda(), weight.cuda(), nc(src.cuda())
    assert_close(fused.masked_gather(nc(vc), offset, BIG_PATCH, BIG_PAD, mc).cpu(),
                 mg.masked_gather_ref(vol, offset, BIG_PATCH, BIG_PAD, mask))
    for a, b in zip(mg.masked_gather_backward(g_pad.cuda(), vc, offset, BIG_PATCH, mc, True, True),
                    mg.masked_gather_backward_ref(g_pad, vol, offset, BIG_PATCH, mask, True, True)):
        assert_close(a.cpu(), b, terms=6)
    for a, b in zip(fused.masked_scatter_add(vc, sc, offset, BIG_PATCH, mc, wc, wtc),
                    ms.masked_scatter_add_ref(vol, src, offset, BIG_PATCH, mask, window, weight)):
        assert_close(a.cpu(), b)
    for a, b in zip(ms.masked_scatter_add_backward(g_vol.cuda(), sc, offset, BIG_PATCH, mc, wc, True, True),
                    ms.masked_scatter_add_backward_ref(g_vol, src, offset, BIG_PATCH, mask, window, True, True)):
        assert_close(a.cpu(), b, terms=6)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,lam_complex", list(itertools.product([C64, C128], [False, True])))
def test_cuda_spectral_filter_matches_cpu_reference(dtype, lam_complex):
    shape = (2, 3, 32, 40, 18)
    spec, g = rand(shape, dtype, 1), rand(shape, dtype, 2)
    lam = rand(shape[2:], dtype if lam_complex else REAL_OF[dtype], 3)
    assert_close(fused.spectral_filter(spec.cuda(), lam.cuda(), 0.3).cpu(), sf.spectral_filter_ref(spec, lam, 0.3))
    for a, b in zip(sf.spectral_filter_backward(g.cuda(), spec.cuda(), lam.cuda(), 0.3),
                    sf.spectral_filter_backward_ref(g, spec, lam, 0.3)):
        assert_close(a.cpu(), b, terms=12)


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
    out = fused.masked_gather(vol, off, patch, (16, 16, 16))
    assert torch.equal(out[0, 0, :12, :11, :8], vol[region][0, 0])
    assert out[..., 12:, :, :].abs().sum() == 0
    with torch.no_grad():
        fused.masked_scatter_add_(vol, out, off, patch)
    assert torch.equal(vol[region][0, 0], 2 * out[0, 0, :12, :11, :8])
    del vol
    torch.cuda.empty_cache()
