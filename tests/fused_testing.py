"""Shared by the tests of the fused ops (``test_masked_gather.py``, ``test_spectral_filter.py``,
``test_masked_scatter_add.py``, ``test_fused_chain.py``) and by ``bench/test_bench_fused.py``:
tolerances, inputs, and independent oracles written with padding (no overlap arithmetic).

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` (no NVIDIA driver) before anything imports
Triton: Triton decides when a kernel is *decorated* (when ``unrolled3d.kernels`` is imported)
whether it is compiled for a GPU or run by its CPU interpreter. On a GPU machine the CUDA tests
exercise the compiled kernels and the interpreter tests are skipped.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from unrolled3d import kernels, ops

INTERP = os.environ.get("TRITON_INTERPRET") == "1" and kernels.INTERPRETED
CUDA = torch.cuda.is_available()
# where the Triton launchers are exercised: the CPU interpreter, else compiled on CUDA
TDEV = "cpu" if INTERP else ("cuda" if CUDA and not kernels.INTERPRETED else None)
requires_triton = pytest.mark.skipif(
    TDEV is None, reason="needs the Triton CPU interpreter (TRITON_INTERPRET=1 set before unrolled3d.kernels is "
                         "imported) or a CUDA device")
requires_cuda = pytest.mark.skipif(
    not CUDA or kernels.INTERPRETED, reason="needs a CUDA device with compiled (non-interpreted) Triton kernels")
#: backends a registered op is checked on: the PyTorch twins, and Triton where it runs
BACKENDS = ["reference"] + (["compiled"] if TDEV is not None else [])

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


def opt(t, device=None, transpose=False):
    """Optional tensor to ``device``; ``transpose=True`` gives a non-contiguous 3-D copy."""
    if t is None:
        return None
    if device is not None:
        t = t.to(device)
    return t.transpose(0, 2).contiguous().transpose(0, 2) if transpose else t


def rand(shape, dtype, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


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



# small float64 cases for gradcheck / opcheck: the patch sticks out of the (3, 4, 3) volume
GOFF = (-1, 2, 1)
GPATCH, GPAD, GVOL = (2, 3, 2), (3, 4, 3), (1, 2, 3, 4, 3)


def to_backend(args, backend):
    """Inputs of an op check, moved to the Triton device (keeping requires_grad) for ``"compiled"``."""
    if backend == "compiled" and TDEV != "cpu":
        return tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                     for a in args)
    return args


def run_opcheck(op, args, backend):
    """``torch.library.opcheck`` of a registered op with the implementation of ``backend``."""
    with ops.use_backend(backend):
        torch.library.opcheck(op, to_backend(args, backend))


def check_grads(fn, inputs, backend):
    """gradcheck and gradgradcheck of ``fn`` through the registered ops on ``backend``."""
    fast = backend == "compiled"
    with ops.use_backend(backend):  # "compiled" raises if Triton cannot run, so the path is really exercised
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast)


# --------------------------------------------------------------------------- #
# composite: gather -> rfftn -> filter -> irfftn -> scatter, fused and plain torch
# --------------------------------------------------------------------------- #
def fused_chain(volume, mask, lam, dest, window, weight, offset, patch, pad, scale):
    x = ops.masked_gather(volume, offset, patch, pad, mask)
    X = torch.fft.rfftn(x, dim=(-3, -2, -1))
    Y = ops.spectral_filter(X, lam, scale)
    y = torch.fft.irfftn(Y, s=pad, dim=(-3, -2, -1))
    return ops.masked_scatter_add(dest, y, offset, patch, mask, window, weight)


def torch_chain(volume, mask, lam, dest, window, weight, offset, patch, pad, scale):
    x = gather_oracle(volume, offset, patch, pad, mask)
    y = torch.fft.irfftn(torch.fft.rfftn(x, dim=(-3, -2, -1)) * lam * scale, s=pad, dim=(-3, -2, -1))
    return scatter_oracle(dest, y, offset, patch, mask, window, weight)


def chain_inputs(dtype, lam_complex, seed=0):
    vol = rand(VOL, dtype, seed + 1).requires_grad_()
    mask = (rand(PATCH, dtype, seed + 2).abs() + 0.1).requires_grad_()
    lam_shape = (PAD[0], PAD[1], PAD[2] // 2 + 1)
    lam = rand(lam_shape, COMPLEX_OF[dtype] if lam_complex else dtype, seed + 3).requires_grad_()
    dest = rand(VOL, dtype, seed + 4).requires_grad_()
    window = rand(PATCH, dtype, seed + 5).abs()
    weight = rand(VOL[2:], dtype, seed + 6).abs()
    return vol, mask, lam, dest, window, weight


