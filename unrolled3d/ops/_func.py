"""``torch.func`` support of the registered ops: vmap rules (the vmapped dimension folded into
the batch) and the holder of a Function's non-tensor arguments.

Every op of this package already treats the leading ``B`` of its ``(B, C, ...)`` data
independently, so ``vmap`` over data tensors is one call with ``B' = N * B``: the vmapped
dimension is moved in front, merged with ``B`` and split off again afterwards. That is the fast
path. It is wrong where an op sums over the batch (the gradient of a mask or a filter, which is
shared by all of ``B``) or where the vmapped argument has no batch dimension of its own (a
mask, a filter, a weight volume): there the rule falls back to one call per vmapped slice,
stacked (correct, as fast as a Python loop).

The rules are registered with :func:`torch.library.register_vmap` on the raw ops, so they serve
``torch.func.vmap``, ``jacrev``/``jacfwd`` (which vmap the backward and forward-mode ops) and
direct ``torch.ops.unrolled3d`` callers alike.

How the pieces fit: :mod:`unrolled3d.ops._define` builds, for each fused op, an
``autograd.Function`` with a separate ``setup_context``, a generated vmap rule and a ``jvp``
(what ``torch.func`` needs) over the raw op, whose vmap rule is registered here; the projector
(:mod:`unrolled3d.ops.projector`) writes the same pieces by hand.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

__all__ = ["Static", "register_folding_vmap", "vmap_by_loop"]


class Static:
    """The non-tensor arguments of an ``autograd.Function`` (offsets, shapes, geometry), as one
    opaque value.

    ``torch.func``'s generated vmap rule flattens list arguments one way for the forward and
    another for the jvp (torch 2.14), so ``jacfwd(jacrev(f))`` (``torch.func.hessian``) failed
    with a pytree length mismatch when offsets were passed as lists; an object pytree does not
    look into avoids it.

    Examples
    --------
    >>> from unrolled3d.ops._func import Static
    >>> offset, shape = Static([0, 1, 2], (3, 3, 3)).args
    >>> offset
    [0, 1, 2]
    """

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args


def _dims(in_dims: Sequence[Any]) -> list[Optional[int]]:
    """The vmapped dimension per argument; non-tensor arguments (lists of ints or floats get a
    list of ``None``) have none."""
    return [d if isinstance(d, int) else None for d in in_dims]


def _fold(t: torch.Tensor, bdim: Optional[int], n: int) -> torch.Tensor:
    """``(.., N at bdim, .., B, ...)`` -> ``(N * B, ...)``; an unbatched ``t`` is repeated."""
    t = t.movedim(bdim, 0) if bdim is not None else t.expand(n, *t.shape)
    return t.reshape(n * t.shape[1], *t.shape[2:])


def _unfold(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(n, t.shape[0] // n, *t.shape[1:])


def vmap_by_loop(op: Callable, info: Any, in_dims: Sequence[Optional[int]], *args: Any) -> tuple[Any, Any]:
    """The generic rule: ``op`` on each vmapped slice, results stacked along dimension 0."""
    n = info.batch_size
    in_dims = _dims(in_dims)
    results = []
    for i in range(n):
        sliced = [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]
        results.append(op(*sliced))
    if isinstance(results[0], torch.Tensor):
        return torch.stack(results), 0
    outs = tuple(torch.stack([r[k] for r in results]) for k in range(len(results[0])))
    return outs, (0,) * len(outs)


def register_folding_vmap(qualname: str, batch_args: Sequence[int], batch_outputs: Sequence[bool] | bool,
                          can_fold: Callable[..., bool] | None = None) -> None:
    """Register a vmap rule for ``qualname`` that folds the vmapped dimension into ``B``.

    Parameters
    ----------
    qualname : str
        ``"unrolled3d::op"``.
    batch_args : sequence of int
        Positions of the arguments with a leading ``(B, ...)`` handled independently per ``B``.
    batch_outputs : bool or sequence of bool
        Per output (one bool for a single-tensor op): whether it has the leading ``B``. An output
        without it (e.g. a weight volume) must not depend on the batch arguments; it is returned
        unbatched.
    can_fold : callable, optional
        ``can_fold(*args) -> bool``: extra condition on the (non-tensor) arguments, e.g. that no
        output sums over ``B``; otherwise the rule loops over the vmapped slices.
    """
    op = getattr(getattr(torch.ops, qualname.split("::")[0]), qualname.split("::")[1]).default
    single = isinstance(batch_outputs, bool)
    flags = (batch_outputs,) if isinstance(batch_outputs, bool) else tuple(batch_outputs)

    def rule(info, in_dims, *args):
        in_dims = _dims(in_dims)
        others = [d for i, d in enumerate(in_dims) if i not in batch_args]
        foldable = all(d is None for d in others) and (can_fold is None or can_fold(*args))
        if not foldable:
            return vmap_by_loop(op, info, in_dims, *args)
        n = info.batch_size
        folded = list(args)
        for i in batch_args:
            folded[i] = _fold(args[i], in_dims[i], n)
        out = op(*folded)
        outs = (out,) if single else tuple(out)
        res = tuple(_unfold(o, n) if f else o for o, f in zip(outs, flags))
        dims = tuple(0 if f else None for f in flags)
        return (res[0], dims[0]) if single else (res, dims)

    torch.library.register_vmap(qualname, rule)
