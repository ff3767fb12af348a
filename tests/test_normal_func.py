"""torch.func through the approximation H (issue 30): grad, jvp, jacrev/jacfwd, the Hessian and vmap
through the functional form, through DiagCirculantNormal.apply (also with its parameters swapped in
by torch.func.functional_call) and through the patch operator, for real and complex images, against
plain autograd, central differences and Python loops (tests/func_testing.py). H's passes are the
public fused ops, whose torch.func rules these transforms need (the raw registered ops raised
"must override the setup_context staticmethod")."""
from __future__ import annotations

import pytest
import torch

from func_testing import central_difference, check_func_transforms
from unrolled3d.normal import VARIANTS, DiagCirculantNormal, apply_diag_circulant

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost here

F64 = torch.float64
SHAPE = (3, 2, 3)  # tiny (the references loop over every input entry), odd (the rFFT half-spectrum)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def check_vmap(f, batched, unbatched, in_dims) -> None:
    """``torch.func.vmap(f, in_dims)`` = a Python loop over the vmapped slices, stacked, to float64
    rounding: unlike the ops alone (``func_testing.check_vmap``, bit for bit), ``H`` takes FFTs,
    and the FFT of a batch may vectorise across transforms (pocketfft on one thread), which changes
    the order of the roundings: 1e-13 relative is a few ulps of sums of ~100 terms."""
    args = [b if d is not None else u for b, u, d in zip(batched, unbatched, in_dims)]
    out = torch.func.vmap(f, in_dims=in_dims)(*args)
    n = next(b.shape[d] for b, d in zip(batched, in_dims) if d is not None)
    loop = torch.stack([f(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]) for i in range(n)])
    torch.testing.assert_close(out, loop, rtol=1e-13, atol=1e-13)
    assert float(loop.abs().max()) > 0.1


def _case(complex_images: bool, seed: int = 0, batch: tuple[int, ...] = ()):
    """``x`` ``(*batch, B=1, C, *SHAPE)``, ``m`` ``SHAPE`` and a complex ``lam`` on the doubled grid
    (full FFT for complex images, rFFT otherwise), every kernel lag non-zero."""
    g = _gen(seed)
    grid = tuple(2 * s for s in SHAPE)
    x = torch.randn((*batch, 1, 2 if complex_images else 1, *SHAPE), generator=g, dtype=F64)
    m = 0.5 + torch.rand(SHAPE, generator=g, dtype=F64)
    if complex_images:
        k = torch.complex(torch.randn(grid, generator=g, dtype=F64), torch.randn(grid, generator=g, dtype=F64))
        lam = torch.fft.fftn(k)
    else:
        lam = torch.fft.rfftn(torch.randn(grid, generator=g, dtype=F64))
    return x, m, lam


@pytest.mark.parametrize("complex_images", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_func_transforms_through_H_equal_autograd_differences_and_loops(variant, complex_images):
    x, m, lam = _case(complex_images)
    lam_re, lam_im = lam.real.contiguous(), lam.imag.contiguous()

    def f(x, m, lam_re, lam_im):  # lam as two real inputs: func_testing's references are real
        return apply_diag_circulant(x, m, torch.complex(lam_re, lam_im), variant, 1.3, complex_images)

    # with m fixed, H x is affine in x and in lam (degree 2 along any line of (x, lam)): every check
    check_func_transforms(lambda x, lr, li: f(x, m, lr, li), (x, lam_re, lam_im))
    f_m = lambda m: f(x, m, lam_re, lam_im)  # noqa: E731
    if variant != "sandwich":  # m F^-1 lam F (and its symmetrisation) is affine in m too
        check_func_transforms(f_m, (m,))
        return
    # the sandwich m F^-1 lam F m is quadratic in m: grad = autograd, jvp = central differences
    # (exact for degree 2)
    w = torch.rand(x.shape, generator=_gen(1), dtype=F64)

    def loss(m):
        return (w * f_m(m) ** 2).sum()

    leaf = m.clone().requires_grad_()
    torch.testing.assert_close(torch.func.grad(loss)(m), torch.autograd.grad(loss(leaf), leaf)[0],
                               rtol=1e-12, atol=1e-12)
    t = torch.randn(m.shape, generator=_gen(2), dtype=F64)
    torch.testing.assert_close(torch.func.jvp(f_m, (m,), (t,))[1], central_difference(f_m, (m,), (t,)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("complex_images", [False, True], ids=["real", "complex"])
def test_vmap_through_H_equals_a_loop(complex_images):
    xb, mb, lamb = _case(complex_images, seed=3, batch=(4,))
    mb = mb.expand(4, *SHAPE) + torch.rand((4, *SHAPE), generator=_gen(4), dtype=F64)
    lamb = torch.stack([lamb * (1 + k) for k in range(4)])
    x, m, lam = xb[0], mb[0], lamb[0]

    def f(x, m, lam):
        return apply_diag_circulant(x, m, lam, "sandwich", 0.7, complex_images)

    check_vmap(f, (xb, mb, lamb), (x, m, lam), (0, None, None))   # over images: folded into B
    check_vmap(f, (xb, mb, lamb), (x, m, lam), (None, 0, None))   # over masks
    check_vmap(f, (xb, mb, lamb), (x, m, lam), (None, None, 0))   # over filters
    check_vmap(f, (xb, mb, lamb), (x, m, lam), (0, 0, 0))         # over all three


def _operator(complex_images: bool, variant: str = "symmetric") -> DiagCirculantNormal:
    _, m, lam = _case(complex_images, seed=5)
    return DiagCirculantNormal((2 if complex_images else 1, *SHAPE), scaling=1.7, variant=variant, dtype=F64,
                               spatial_mask=m, fourier_filter=lam)


@pytest.mark.parametrize("complex_images", [False, True], ids=["real", "complex"])
def test_func_transforms_through_the_operator_and_its_patch_operator(complex_images):
    H = _operator(complex_images)
    x, _, _ = _case(complex_images, seed=6)
    check_func_transforms(H.apply, (x,))
    patch = H.restrict((1, 0, 1), (2, 2, 2))
    check_func_transforms(patch.A_adjoint_A, (x[..., 1:3, 0:2, 1:3].contiguous(),))
    xb, _, _ = _case(complex_images, seed=7, batch=(3,))
    check_vmap(H.apply, (xb,), (xb[0],), (0,))
    check_vmap(patch.A_adjoint_A, (xb[..., 1:3, 0:2, 1:3],), (xb[0, ..., 1:3, 0:2, 1:3],), (0,))


@pytest.mark.parametrize("complex_images", [False, True], ids=["real", "complex"])
def test_grad_in_the_parameters_by_functional_call_equals_autograd(complex_images):
    """Training H end to end the torch.func way: its parameters swapped in by functional_call."""
    H = _operator(complex_images, variant="sandwich")
    x, _, _ = _case(complex_images, seed=8)
    target = torch.randn(x.shape, generator=_gen(9), dtype=F64)
    params = {"spatial_mask": H.spatial_mask.detach().clone(), "fourier_filter": H.fourier_filter.detach().clone()}

    def loss(p):
        return (torch.func.functional_call(H, p, (x,)) - target).square().sum()

    grads = torch.func.grad(loss)(params)
    H.requires_grad_(True)
    (H.apply(x) - target).square().sum().backward()
    for name, p in H.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-12, atol=1e-12)
        assert float(p.grad.abs().max()) > 0
