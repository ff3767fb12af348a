"""Independent references for the ``torch.func`` and low-precision tests of the ops
(``test_projector.py``, ``test_masked_gather.py``, ``test_spectral_filter.py``,
``test_masked_scatter_add.py``): Jacobians by explicit loops, forward derivatives by central
differences, and the "float32 result rounded once" criterion of float16/bfloat16 inputs."""
import torch

#: the dtypes computed in float32 by the ops
LOW = [torch.float16, torch.bfloat16]


def dense_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """``d f / d x`` of a map that is affine in ``x``, column by column with an explicit loop:
    ``f(x + e_k) - f(x)`` (exact for affine maps up to float64 rounding). Shape
    ``(*f(x).shape, *x.shape)``, like ``torch.func.jacrev``."""
    fx = f(x)
    cols = []
    for k in range(x.numel()):
        e = torch.zeros_like(x).reshape(-1)
        e[k] = 1
        cols.append((f(x + e.reshape(x.shape)) - fx).reshape(-1))
    return torch.stack(cols, dim=1).reshape(*fx.shape, *x.shape)


def central_difference(f, primals, tangents, h: float = 1.0):
    """``(f(x + h t) - f(x - h t)) / 2h``: the exact directional derivative of any map that is
    a polynomial of degree <= 2 along the line (our ops are linear or bilinear), whatever ``h``
    (``h = 1`` keeps the rounding error at the scale of ``f``)."""
    plus = f(*[p + h * t for p, t in zip(primals, tangents)])
    minus = f(*[p - h * t for p, t in zip(primals, tangents)])
    if isinstance(plus, tuple):
        return tuple((a - b) / (2 * h) for a, b in zip(plus, minus))
    return (plus - minus) / (2 * h)


def assert_rounded_float32(out: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype) -> None:
    """``out`` (of ``dtype``) is the float32 result ``ref32`` rounded once to ``dtype``.

    Rounding to nearest moves a value by at most half an ulp, ``eps/2`` relative for normal
    numbers (``eps`` = ``torch.finfo(dtype).eps``: 2^-10 for float16, 2^-7 for bfloat16), and by
    at most half the smallest subnormal below the normal range; the bound is checked elementwise
    and, as the exact statement, ``out == ref32.to(dtype)``.
    """
    assert out.dtype == dtype, (out.dtype, dtype)
    assert ref32.dtype in (torch.float32, torch.complex64), ref32.dtype
    fi = torch.finfo({torch.complex32: torch.float16}.get(dtype, dtype))  # a complex32 rounds each part
    err = (out.to(ref32.dtype) - ref32).abs()
    bound = fi.eps / 2 * ref32.abs() + fi.smallest_normal * fi.eps / 2
    assert bool((err <= bound).all()), f"max error {float(err.max()):.3g}, bound {float(bound.max()):.3g}"
    rounded = ref32.to(dtype)
    if out.is_complex():  # torch.equal has no complex32 kernel: compare the parts
        out, rounded = torch.view_as_real(out), torch.view_as_real(rounded)
    assert torch.equal(out, rounded)


def check_func_transforms(f, primals, tol: float = 1e-12) -> None:
    """``torch.func`` on ``f`` (real float64 tensors in, one real tensor out, affine in each
    input) against independent references:

    * ``grad`` of ``sum(w * f^2)`` = ``torch.autograd.grad`` (the op's plain autograd);
    * ``jvp`` along all inputs at once = central differences (exact: ``f`` is a polynomial of
      degree <= 2 along any line, ``f`` being affine in each input);
    * ``jacrev`` and ``jacfwd`` w.r.t. each input = the explicit loop :func:`dense_jacobian`;
    * the Hessian of ``sum(w * f^2)`` by forward-over-reverse (``torch.func.hessian``: the jvp
      of the backward ops) = reverse-over-reverse (``jacrev(jacrev)``: their backward, itself
      checked by ``gradgradcheck``).

    ``tol``: float64 rounding of sums of a few terms of size ~1.
    """
    gen = torch.Generator().manual_seed(1234)
    w = torch.rand(f(*primals).shape, generator=gen, dtype=torch.float64)
    argnums = tuple(range(len(primals)))

    def loss(*a):
        return (w * f(*a) ** 2).sum()

    grads = torch.func.grad(loss, argnums=argnums)(*primals)
    leaves = [p.detach().clone().requires_grad_() for p in primals]
    ref = torch.autograd.grad(loss(*leaves), leaves)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)

    tangents = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in primals]
    _, jvp_out = torch.func.jvp(f, tuple(primals), tuple(tangents))
    torch.testing.assert_close(jvp_out, central_difference(f, primals, tangents), rtol=tol, atol=tol)

    for i in argnums:
        def f_i(x, i=i):
            return f(*primals[:i], x, *primals[i + 1:])
        dense = dense_jacobian(f_i, primals[i])
        torch.testing.assert_close(torch.func.jacrev(f_i)(primals[i]), dense, rtol=tol, atol=tol)
        torch.testing.assert_close(torch.func.jacfwd(f_i)(primals[i]), dense, rtol=tol, atol=tol)

    fwd_rev = torch.func.hessian(loss, argnums=argnums)(*primals)
    rev_rev = torch.func.jacrev(torch.func.jacrev(loss, argnums=argnums), argnums=argnums)(*primals)
    for row_f, row_r in zip(fwd_rev, rev_rev):
        for a, b in zip(row_f, row_r):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def check_vmap(f, batched, unbatched, in_dims) -> None:
    """``torch.func.vmap(f, in_dims)`` = a Python loop over the vmapped slices, stacked, to the
    last bit (folding the vmapped dimension into B changes no arithmetic; the loop fallback is a
    loop)."""
    args = [b if d is not None else u for b, u, d in zip(batched, unbatched, in_dims)]
    out = torch.func.vmap(f, in_dims=in_dims)(*args)
    n = next(b.shape[d] for b, d in zip(batched, in_dims) if d is not None)
    loop = [f(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]) for i in range(n)]
    if isinstance(out, tuple):
        for k, o in enumerate(out):
            if o is not None:
                torch.testing.assert_close(o, torch.stack([r[k] for r in loop]), rtol=0, atol=0)
    else:
        torch.testing.assert_close(out, torch.stack(loop), rtol=0, atol=0)
