"""One definition per registered op: from its implementation, its fake kernel and its derivative
formulas, everything PyTorch needs to run it eagerly, under ``torch.func`` and under
``torch.compile``.

What :func:`define_op` builds for an op ``foo``, and why each piece is there:

* the custom op ``unrolled3d::foo`` (``torch.library.custom_op``, its schema read from the
  implementation's type hints) and its fake kernel;
* the op's autograd on the raw op (``register_autograd``): what ``torch.ops`` callers,
  ``torch.library.opcheck`` and ``torch.compile`` (AOTAutograd) run;
* an ``autograd.Function`` with a separate ``setup_context``, a ``jvp`` and a generated vmap
  rule: what eager callers run, because ``torch.func`` rejects the Function that
  ``register_autograd`` generates (pytorch/pytorch#170834) and needs a ``jvp`` for forward mode;
* a vmap rule on the raw op that folds the vmapped dimension into ``B``
  (:func:`~unrolled3d.ops._func.register_folding_vmap`), which ``vmap``, ``jacrev`` and
  ``jacfwd`` reach through the Function's generated rule;
* the float32 autocast rule (:func:`~unrolled3d.ops._precision.register_float32_autocast`).

Both autograd paths run the same two formulas, written once per op against its arguments by
name (``a.volume``, ``a.offset``; an :class:`Args`):

``vjp(a, need, *grads) -> {name: gradient}``
    The gradients of the inputs ``need`` asks for (``need.volume`` is a bool), given the output
    gradients (``None`` for an output whose gradient is not materialised).
``jvp(a, t) -> (tangent per output, ...)``
    The outputs' forward derivatives given the inputs' tangents ``t`` (``None``: no tangent);
    an output tangent may be ``None`` for zero.

A formula calls other ops (often the op's own backward op) through their :class:`RegisteredOp`,
which runs the Function eagerly and the raw op under ``torch.compile``/``torch.export`` (Dynamo
cannot trace a Function with a custom ``jvp``: "Unsupported custom jvp", torch 2.14). So every
order of differentiation goes through Functions and stays ``torch.func``-safe, and a backward
op that is itself differentiable is just another op defined here. The fused ops are bilinear in
two of their tensors: :func:`product_rule` is then their jvp, and
:func:`define_bilinear_backward` writes their backward ops' formulas from that bilinearity.

Non-tensor arguments reach the Function as one :class:`~unrolled3d.ops._func.Static` (see
there why).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union, cast

import torch
from torch import Tensor

from ._func import Static, register_folding_vmap
from ._precision import output_dtype, register_float32_autocast, upcast

__all__ = ["Args", "Fold", "RegisteredOp", "define_op", "define_bilinear_backward", "product_rule", "or_empty",
           "total"]

_MISSING = object()


def or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    """Custom ops cannot return ``None``: unused gradient slots are 0-element tensors."""
    return t if t is not None else like.new_empty(0)


def total(*terms: Optional[Tensor]) -> Optional[Tensor]:
    """The sum of the terms that are not ``None`` (``None`` if none is): a product rule, term by term.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.ops._define import total
    >>> total(None, torch.ones(2), torch.ones(2)), total(None, None)
    (tensor([2., 2.]), None)
    """
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


def product_rule(op: Callable, a: "Args", t: "Args", *names: str) -> Optional[Tensor]:
    """The jvp of a single-output ``op`` linear in each of ``names`` (multilinear): the sum, over
    the names with a tangent, of ``op`` with that argument replaced by its tangent."""
    return total(*(op(*a.replace(**{n: getattr(t, n)})) for n in names if getattr(t, n) is not None))


class Args:
    """An op's arguments by their schema names: ``a.volume``, ``a.offset``.

    An argument the formula cannot have (a tensor the op does not save for its derivatives)
    raises an ``AttributeError`` that says so, instead of reading as ``None``.

    Examples
    --------
    >>> from unrolled3d.ops._define import Args
    >>> a = Args(("x", "scale"), (1, 2.0))
    >>> a.scale, a.replace(x=5)
    (2.0, [5, 2.0])
    """

    def __init__(self, names: Sequence[str], values: Sequence[Any], outputs: Sequence[tuple] = ()) -> None:
        self._names = tuple(names)
        self._outputs = tuple(outputs)
        for n, v in zip(names, values):
            if v is not _MISSING:
                setattr(self, n, v)

    def __getattr__(self, name: str) -> Any:  # only reached when the attribute is missing
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"argument {name!r} is not available to this formula: it is not an argument of the "
                             f"op {self._names}, or a tensor the op does not save (define_op's saves=)")

    def output_zeros(self, k: int) -> Tensor:
        """Zeros shaped like the op's output ``k`` (in a jvp: a tangent to build on)."""
        shape, dtype, device = self._outputs[k]
        return torch.zeros(shape, dtype=dtype, device=device)

    def replace(self, **changes: Any) -> list:
        """The arguments in schema order, ``changes`` applied: ``op(*a.replace(mask=t.mask))``."""
        unknown = set(changes) - set(self._names)
        if unknown:
            raise TypeError(f"replace() got arguments the op does not have: {sorted(unknown)}")
        return [changes[n] if n in changes else getattr(self, n) for n in self._names]


@dataclass(frozen=True)
class Fold:
    """The vmap rule of an op that treats the leading ``B`` of some arguments independently: the
    vmapped dimension is folded into ``B`` (one call), else the op runs once per vmapped slice.

    Attributes
    ----------
    batch_args : tuple of str
        The arguments with a leading ``(B, ...)``.
    batch_outputs : bool or tuple of bool
        Per output (one bool for a single-tensor op): whether it has the leading ``B``.
    can_fold : callable, optional
        ``can_fold(a) -> bool`` on the op's :class:`Args`: e.g. that no output sums over ``B``.

    Examples
    --------
    >>> from unrolled3d.ops._define import Fold
    >>> rule = Fold(("grad_out", "volume"), (True, False), can_fold=lambda a: not a.need_mask_grad)
    >>> rule.batch_args
    ('grad_out', 'volume')
    """

    batch_args: tuple
    batch_outputs: Union[bool, tuple] = True
    can_fold: Optional[Callable[[Args], bool]] = None


def _is_tensor(arg: Any) -> bool:
    """Whether a schema argument is a ``Tensor`` or ``Tensor?``."""
    kind = arg.type.kind()
    return kind == "TensorType" or (kind == "OptionalType" and arg.type.getElementType().kind() == "TensorType")


class _Signature:
    """Where an op's arguments sit: their names, the tensors' and the others' positions."""

    def __init__(self, schema) -> None:
        self.schema = schema
        self.names = tuple(a.name for a in schema.arguments)
        self.tensor_pos = tuple(i for i, a in enumerate(schema.arguments) if _is_tensor(a))
        self.static_pos = tuple(i for i in range(len(self.names)) if i not in self.tensor_pos)
        self.tensor_names = tuple(self.names[i] for i in self.tensor_pos)
        self.n_outputs = len(schema.returns)

    def positions(self, what: str, names: Sequence[str]) -> tuple:
        """The positions of the tensor arguments ``names`` (a ValueError names ``what`` otherwise)."""
        unknown = [n for n in names if n not in self.tensor_names]
        if unknown:
            raise ValueError(f"{what} must name tensor arguments of {self.schema.name} {self.tensor_names}, "
                             f"got {unknown}")
        return tuple(self.names.index(n) for n in names)


def _signature(qualname: str, impl: Callable, mutates_args: Sequence[str] = ()) -> _Signature:
    """The signature ``custom_op`` will infer for ``impl``, read before anything is registered."""
    return _Signature(torch._C.parse_schema(qualname + torch.library.infer_schema(impl, mutates_args=mutates_args)))


class _Plan(_Signature):
    """The bookkeeping shared by both autograd paths of the op ``raw``: what is saved, and the
    formulas' calls."""

    def __init__(self, raw, vjp, jvp, saved_pos: Sequence[int], materialize: bool) -> None:
        super().__init__(raw._schema)
        self.raw, self.vjp, self.jvp, self.materialize = raw, vjp, jvp, materialize
        self.saved_pos = tuple(saved_pos)

    def merge(self, inputs: Sequence[Any]) -> list:
        """The Function's inputs (tensors, then one Static) in schema order."""
        args: list = [None] * len(self.names)
        for i, t in zip(self.tensor_pos, inputs[:-1]):
            args[i] = t
        for i, v in zip(self.static_pos, inputs[-1].args):
            args[i] = v
        return args

    def save(self, ctx, args: Sequence[Any], output) -> None:
        outs = output if isinstance(output, tuple) else (output,)
        ctx.u3d_static = [args[i] for i in self.static_pos]
        ctx.u3d_outputs = [(o.shape, o.dtype, o.device) for o in outs]
        saved = [args[i] for i in self.saved_pos]
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.set_materialize_grads(self.materialize)

    def restore(self, ctx) -> Args:
        values: list = [_MISSING] * len(self.names)
        for i, v in zip(self.static_pos, ctx.u3d_static):
            values[i] = v
        for i, t in zip(self.saved_pos, ctx.saved_tensors):
            values[i] = t
        return Args(self.names, values, ctx.u3d_outputs)

    def grads(self, ctx, grads: Sequence[Optional[Tensor]], needs: Sequence[bool]) -> dict:
        """``vjp`` on the saved arguments; ``needs`` per tensor argument."""
        if not any(needs):
            return {}
        flags = dict(zip(self.tensor_names, needs))
        need = Args(self.names, [bool(flags.get(n, False)) for n in self.names])
        out = dict(self.vjp(self.restore(ctx), need, *grads))
        self.positions("the vjp's result", list(out))
        return out

    def tangents(self, ctx, tangents: Mapping[str, Optional[Tensor]]) -> tuple:
        """``jvp`` on the saved arguments; zeros for the outputs it leaves ``None``."""
        t = Args(self.names, [tangents.get(n) for n in self.names])
        outs = tuple(self.jvp(self.restore(ctx), t))
        if len(outs) != self.n_outputs:
            raise RuntimeError(f"the jvp of {self.schema.name} returned {len(outs)} tangents for {self.n_outputs} "
                               "outputs")
        return tuple(o if o is not None else torch.zeros(shape, dtype=dtype, device=device)
                     for o, (shape, dtype, device) in zip(outs, ctx.u3d_outputs))


def _function(plan: _Plan, class_name: str) -> type[torch.autograd.Function]:
    """The ``autograd.Function`` over the raw op (tensors in schema order, then one Static)."""
    single = plan.n_outputs == 1

    def forward(*inputs):
        return plan.raw(*plan.merge(inputs))

    def setup_context(ctx, inputs, output):
        plan.save(ctx, plan.merge(inputs), output)

    def backward(ctx, *grads):
        got = plan.grads(ctx, grads, ctx.needs_input_grad[:-1])
        return tuple(got.get(n) for n in plan.tensor_names) + (None,)

    def jvp(ctx, *tangents):
        out = plan.tangents(ctx, dict(zip(plan.tensor_names, tangents)))
        return out[0] if single else out

    body = {"generate_vmap_rule": True, "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward), "jvp": staticmethod(jvp), "__module__": __name__}
    # type() with Function as the only base builds a Function subclass (mypy sees a plain type)
    return cast("type[torch.autograd.Function]", type(class_name, (torch.autograd.Function,), body))


def _register_autograd(op, plan: _Plan) -> None:
    """The same formulas on the raw op (argument order of its schema)."""
    def setup_context(ctx, inputs, output):
        plan.save(ctx, inputs, output)

    def backward(ctx, *grads):
        needs = [ctx.needs_input_grad[i] for i in plan.tensor_pos]
        got = plan.grads(ctx, grads, needs)
        return tuple(got.get(n) for n in plan.names)

    op.register_autograd(backward, setup_context=setup_context)


class RegisteredOp:
    """An op made by :func:`define_op`. Call it with the schema's arguments: eagerly it runs the
    ``autograd.Function`` (``torch.func``-safe), under ``torch.compile`` the raw op.

    Attributes
    ----------
    raw : torch._ops.OpOverload
        ``torch.ops.<namespace>.<name>.default``.

    Examples
    --------
    The op behind :func:`unrolled3d.ops.spectral_filter` (schema order, no validation):

    >>> import torch
    >>> from unrolled3d.ops.spectral_filter import _FILTER
    >>> _FILTER.raw
    <OpOverload(op='unrolled3d.spectral_filter', overload='default')>
    >>> spec = torch.ones(1, 1, 1, 1, 2, dtype=torch.complex64, requires_grad=True)
    >>> out = _FILTER(spec, torch.tensor([[[1.0, 2.0]]]), 0.5)
    >>> out.grad_fn.name()
    'SpectralFilterFunctionBackward'
    """

    def __init__(self, opdef, raw, function: Optional[type[torch.autograd.Function]],
                 like_pos: Sequence[Optional[int]]) -> None:
        self._opdef = opdef  # torch.library's CustomOpDef, kept with the op
        self.raw = raw
        self._function = function
        self._sig = _Signature(raw._schema)
        self._like_pos = tuple(like_pos)

    def __repr__(self) -> str:
        return f"RegisteredOp({self.raw})"

    def __call__(self, *args: Any):
        if self._function is None or torch.compiler.is_compiling():
            return self.raw(*args)
        tensors = [args[i] for i in self._sig.tensor_pos]
        return self._function.apply(*tensors, Static(*[args[i] for i in self._sig.static_pos]))

    def compute(self, *args: Any):
        """The op on validated arguments, float16/bfloat16 computed in float32 (ops/_precision.py):
        tensor arguments upcast, each output cast back to the dtype that
        :func:`~unrolled3d.ops._precision.output_dtype` gives for its ``outputs_like`` argument
        (left alone where that argument is ``None`` or not named)."""
        up = list(args)
        for i in self._sig.tensor_pos:
            up[i] = upcast(args[i])
        out = self(*up)
        single = self._sig.n_outputs == 1
        outs = (out,) if single else tuple(out)
        like = self._like_pos + (None,) * (len(outs) - len(self._like_pos))
        cast = tuple(o.to(output_dtype(args[i])) if i is not None and args[i] is not None else o
                     for o, i in zip(outs, like))
        return cast[0] if single else cast


def define_op(name: str, impl: Callable, *, fake: Callable, saves: Sequence[str] = (),
              vjp: Optional[Callable[..., Mapping[str, Optional[Tensor]]]] = None,
              jvp: Optional[Callable[[Args, Args], Sequence[Optional[Tensor]]]] = None,
              vmap: Optional[Fold] = None, outputs_like: Sequence[Optional[str]] = (),
              materialize_grads: bool = True, mutates_args: Sequence[str] = (), autocast: bool = True,
              namespace: str = "unrolled3d") -> RegisteredOp:
    """Register the op ``namespace::name`` and everything that makes it differentiable, vmappable,
    autocast-aware and traceable (see the module docstring).

    Parameters
    ----------
    name : str
        The op's name (also that of its tests and benchmarks).
    impl : callable
        The implementation, type-annotated (the schema is inferred from it; ``List[int]``,
        ``Optional[Tensor]``, ``float``, ``bool``, ``Tuple[Tensor, Tensor]``). It must not
        return ``None`` in a tensor slot (see :func:`or_empty`).
    fake : callable
        The shape-only kernel (``register_fake``), restating the shape rules with
        ``torch._check`` for tracing.
    saves : sequence of str
        The tensor arguments the formulas read (saved for backward and forward mode); the
        others are not kept alive by the graph.
    vjp, jvp : callable, optional
        The formulas (module docstring); both or neither. Without them the op has no autograd.
    vmap : Fold, optional
        Its vmap rule; ``None``: PyTorch's default (none for a custom op).
    outputs_like : sequence of str or None
        Per output, the argument whose dtype it takes back in :meth:`RegisteredOp.compute`.
    materialize_grads : bool
        ``False``: the ``vjp`` gets ``None`` for outputs without a gradient (for ops with
        optional outputs, such as backward ops).
    mutates_args : sequence of str
        The arguments written in place (no autograd, no autocast: a cast would write a copy).
    autocast : bool
        Register the float32 autocast rule.
    namespace : str
        The op library (tests define toy ops in their own).

    Returns
    -------
    RegisteredOp

    Raises
    ------
    ValueError
        A formula without its partner, or ``saves``/``vmap``/``outputs_like`` naming no tensor
        argument, or an in-place op asking for autocast or autograd.
    """
    if (vjp is None) != (jvp is None):
        raise ValueError(f"define_op({name!r}): give both vjp and jvp, or neither")
    if mutates_args and (autocast or vjp is not None):
        raise ValueError(f"define_op({name!r}): an op that mutates {tuple(mutates_args)} takes neither autocast "
                         "(the cast would be written instead of its input) nor autograd")
    qualname = f"{namespace}::{name}"
    # the schema custom_op will infer, read first so that a bad definition registers nothing
    sig = _signature(qualname, impl, mutates_args)
    saved_pos = sig.positions("saves", saves)
    like_pos = [sig.positions("outputs_like", [n])[0] if n is not None else None for n in outputs_like]
    batch_pos = sig.positions("vmap's batch_args", vmap.batch_args) if vmap is not None else ()

    op = torch.library.custom_op(qualname, impl, mutates_args=tuple(mutates_args))
    op.register_fake(fake)
    raw = getattr(getattr(torch.ops, namespace), name).default
    function = None
    if vjp is not None:
        plan = _Plan(raw, vjp, jvp, saved_pos, materialize_grads)
        _register_autograd(op, plan)
        function = _function(plan, "".join(p.title() for p in name.split("_")) + "Function")
    if vmap is not None:
        can_fold = vmap.can_fold
        register_folding_vmap(qualname, batch_pos, vmap.batch_outputs,
                              (lambda *args: can_fold(Args(sig.names, args))) if can_fold is not None else None)
    if autocast:
        register_float32_autocast(qualname)
    return RegisteredOp(op, raw, function, like_pos)


def define_bilinear_backward(name: str, impl: Callable, *, fake: Callable, pair: tuple,
                             forward: Callable[[Args, Tensor, Tensor], Tensor], saves: Sequence[str],
                             vmap: Optional[Fold] = None, namespace: str = "unrolled3d") -> RegisteredOp:
    """:func:`define_op` for the backward op of an op ``F`` bilinear in ``pair = (u, v)``, whose
    own derivative formulas follow from that bilinearity.

    The backward op takes ``grad_out`` (``G``), ``u``, ``v``, other arguments and the flags
    ``need_<u>_grad``, ``need_<v>_grad``, and returns ``(g_u, g_v) = (J_u(v)^T G, J_v(u)^T G)``
    (0-element tensors where not asked for). So ``g_u`` is bilinear in ``(G, v)`` and ``g_v`` in
    ``(G, u)``, and

    * its jvp is the product rule: ``G`` carries both outputs, ``v`` carries ``g_u`` and ``u``
      carries ``g_v``, each through the backward op itself;
    * its vjp, given ``(h_u, h_v)``: ``dG = F(h_u, v) + F(u, h_v)``, ``du = g_u`` with ``v``
      replaced by ``h_v``, ``dv = g_v`` with ``u`` replaced by ``h_u`` (the adjoints of the
      terms above, w.r.t. the real inner product ``Re<a, b>``: PyTorch's complex convention).

    Parameters
    ----------
    pair : (str, str)
        ``(u, v)``, in the order of the op's outputs.
    forward : callable
        ``forward(a, u, v) -> F(u, v)`` on the backward op's arguments ``a``, shaped like
        ``grad_out`` (for ``dG``).
    name, impl, fake, saves, vmap, namespace
        As for :func:`define_op` (gradients not materialised: ``h_u``/``h_v`` may be ``None``).

    Returns
    -------
    RegisteredOp
    """
    u, v = pair
    need_u, need_v = f"need_{u}_grad", f"need_{v}_grad"
    missing = {"grad_out", u, v, need_u, need_v} - set(_signature(f"{namespace}::{name}", impl).names)
    if missing:
        raise ValueError(f"define_bilinear_backward({name!r}): the op has no argument {sorted(missing)}")
    ops: list = []  # the op being defined, for its own formulas

    def vjp(a, need, h_u, h_v):
        h_u = h_u if getattr(a, need_u) else None
        h_v = h_v if getattr(a, need_v) else None
        grads = {}
        if need.grad_out:
            grads["grad_out"] = total(forward(a, h_u, getattr(a, v)) if h_u is not None else None,
                                      forward(a, getattr(a, u), h_v) if h_v is not None else None)
        if getattr(need, u) and h_v is not None:
            grads[u] = ops[0](*a.replace(**{v: h_v, need_u: True, need_v: False}))[0]
        if getattr(need, v) and h_u is not None:
            grads[v] = ops[0](*a.replace(**{u: h_u, need_u: False, need_v: True}))[1]
        return grads

    def jvp(a, t):
        g_u = g_v = None
        if t.grad_out is not None:
            g_u, g_v = ops[0](*a.replace(grad_out=t.grad_out))
        if getattr(t, v) is not None and getattr(a, need_u):
            g_u = total(g_u, ops[0](*a.replace(**{v: getattr(t, v), need_v: False}))[0])
        if getattr(t, u) is not None and getattr(a, need_v):
            g_v = total(g_v, ops[0](*a.replace(**{u: getattr(t, u), need_u: False}))[1])
        return g_u, g_v

    ops.append(define_op(name, impl, fake=fake, saves=saves, vjp=vjp, jvp=jvp, vmap=vmap, materialize_grads=False,
                         namespace=namespace))
    return ops[0]
