"""The helper that defines every fused op (:mod:`unrolled3d.ops._define`), on a toy op of its own:
``toy_scale(x, w, scale) = x * w * scale`` (``x``: ``(B, N)``, ``w``: ``(N,)`` shared by the batch, or
``None``), with a differentiable backward op, defined the way the fused ops are. Checked against
independent truth: ``opcheck``, ``gradcheck``/``gradgradcheck`` in float64, ``torch.func`` against
loops, central differences and dense Jacobians (``func_testing``), vmap against a loop,
``torch.compile`` against eager, autocast, and the helper's own errors."""
from typing import Optional, Tuple

import pytest
import torch
from torch import Tensor

from func_testing import assert_rounded_float32, check_func_transforms, check_vmap
from unrolled3d.ops._define import Args, Fold, define_bilinear_backward, define_op, or_empty, product_rule

F64 = torch.float64
NS = "u3d_define_test"  # the toy ops' own library, apart from the package's


def _toy(x: Tensor, w: Optional[Tensor], scale: float) -> Tensor:
    return x * (w if w is not None else 1) * scale


def _toy_fake(x, w, scale):
    torch._check(w is None or tuple(w.shape) == tuple(x.shape[1:]), lambda: "w must have x's shape after B")
    return x.new_empty(x.shape)


def _toy_backward(grad_out: Tensor, x: Tensor, w: Optional[Tensor], scale: float, need_x_grad: bool,
                  need_w_grad: bool) -> Tuple[Tensor, Tensor]:
    gx = grad_out * (w if w is not None else 1) * scale if need_x_grad else None
    gw = (grad_out * x).sum(0) * scale if need_w_grad else None
    return or_empty(gx, x), or_empty(gw, x)


def _toy_backward_fake(grad_out, x, w, scale, need_x_grad, need_w_grad):
    return (x.new_empty(x.shape) if need_x_grad else x.new_empty(0),
            x.new_empty(x.shape[1:]) if need_w_grad else x.new_empty(0))


# out = s x w, bilinear in (x, w); its backward gx = s G w, gw = s sum_B G x
def _toy_vjp(a, need, grad):
    need_w = need.w and a.w is not None
    gx, gw = TOY_BACKWARD(grad, a.x, a.w, a.scale, need.x, need_w)
    return {"x": gx if need.x else None, "w": gw if need_w else None}


TOY = define_op("toy_scale", _toy, fake=_toy_fake, saves=("x", "w"), vjp=_toy_vjp,
                jvp=lambda a, t: (product_rule(TOY, a, t, "x", "w"),), vmap=Fold(("x",)), outputs_like=("x",),
                namespace=NS)
TOY_BACKWARD = define_bilinear_backward(
    "toy_scale_backward", _toy_backward, fake=_toy_backward_fake, pair=("x", "w"),
    forward=lambda a, x, w: TOY(x, w, a.scale), saves=("grad_out", "x", "w"), namespace=NS,
    vmap=Fold(("grad_out", "x"), (True, False), can_fold=lambda a: not a.need_w_grad))


def _rand(*shape, seed=0, dtype=F64):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


X, W = (3, 4), (4,)


def test_registered_under_its_name_with_the_inferred_schema():
    assert TOY.raw is torch.ops.u3d_define_test.toy_scale.default
    assert str(TOY.raw._schema) == f"{NS}::toy_scale(Tensor x, Tensor? w, float scale) -> Tensor"
    assert str(TOY_BACKWARD.raw._schema).endswith("bool need_x_grad, bool need_w_grad) -> (Tensor, Tensor)")


def test_opcheck():
    x, w, g = _rand(*X, seed=1).requires_grad_(), _rand(*W, seed=2).requires_grad_(), _rand(*X, seed=3)
    torch.library.opcheck(TOY.raw, (x, w, 0.7))
    torch.library.opcheck(TOY.raw, (x, None, 0.7))
    torch.library.opcheck(TOY_BACKWARD.raw, (g.requires_grad_(), x, w, 0.7, True, True))


def test_forward_is_the_implementation():
    x, w = _rand(*X, seed=1), _rand(*W, seed=2)
    assert torch.equal(TOY(x, w, 0.7), x * w * 0.7)
    assert torch.equal(TOY.raw(x, None, 0.7), x * 0.7)


@pytest.mark.parametrize("path", ["function", "raw"])
def test_gradients_to_second_order(path):
    """Both autograd paths (the eager Function, the raw op's register_autograd) run the formulas."""
    call = TOY if path == "function" else TOY.raw
    x, w = _rand(*X, seed=1).requires_grad_(), _rand(*W, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: call(a, b, 0.7), (x, w))
    assert torch.autograd.gradgradcheck(lambda a, b: call(a, b, 0.7), (x, w))
    expected = "ToyScaleFunctionBackward" if path == "function" else "GeneratedBackwardFor_u3d_define_test_toy_scale"
    assert expected in call(x, w, 0.7).grad_fn.name()


def test_backward_of_the_backward_op():
    g, x, w = (_rand(*X, seed=3).requires_grad_(), _rand(*X, seed=1).requires_grad_(),
               _rand(*W, seed=2).requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: TOY_BACKWARD(*a, 0.7, True, True), (g, x, w))


def test_torch_func_transforms():
    """grad, jvp, jacrev, jacfwd and hessian against references (func_testing)."""
    check_func_transforms(lambda x, w: TOY(x, w, 0.7), [_rand(*X, seed=1), _rand(*W, seed=2)])
    check_func_transforms(lambda x: TOY(x, None, 0.7), [_rand(*X, seed=1)])


def test_jvp_fills_zeros_of_each_outputs_dtype_and_shape():
    """A tangent that reaches no output gives zeros of that output's shape and dtype."""
    g, x = _rand(*X, seed=3), _rand(*X, seed=1)
    w32, tw = _rand(*W, seed=2).float(), _rand(*W, seed=4).float()
    # gw = s sum_B G x does not depend on w: its tangent along w is zero (float64, like x)
    _, (t_gx, t_gw) = torch.func.jvp(lambda w: TOY_BACKWARD(g, x, w.double(), 0.7, False, True), (w32,), (tw,))
    assert t_gx.shape == (0,) and t_gw.dtype == F64 and torch.equal(t_gw, torch.zeros(W, dtype=F64))


@pytest.mark.parametrize("in_dims", [(0, None), (1, None), (None, 0), (0, 0)])
def test_vmap_equals_a_loop(in_dims):
    """Over x it folds into B; over w (no B of its own) it loops."""
    xs = _rand(5, *X, seed=5).movedim(0, in_dims[0] or 0)
    ws = _rand(5, *W, seed=6)
    check_vmap(lambda x, w: TOY(x, w, 0.7), [xs, ws], [xs.select(in_dims[0] or 0, 0), ws[0]], in_dims)


def test_vmap_of_the_backward_op_equals_a_loop():
    x, w, grads = _rand(*X, seed=1), _rand(*W, seed=2), _rand(4, *X, seed=7)
    for need in [(True, False), (False, True), (True, True)]:
        check_vmap(lambda g, need=need: TOY_BACKWARD(g, x, w, 0.7, *need), [grads], [grads[0]], (0,))


def test_compile_traces_the_raw_op():
    torch._dynamo.reset()
    x, w = _rand(*X, seed=1).requires_grad_(), _rand(*W, seed=2).requires_grad_()

    def f(x, w):
        return (TOY(x, w, 0.7) ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w), (x, w))
    want = torch.autograd.grad(f(x, w), (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(got[1], 2 * 0.7 ** 2 * (x * x * w).sum(0).detach(), rtol=1e-14, atol=1e-14)


def test_autocast_and_low_precision_run_in_float32():
    x, w = _rand(*X, seed=1, dtype=torch.float32), _rand(*W, seed=2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = TOY.raw(x.bfloat16(), w.bfloat16(), 0.7)
        inside = TOY.compute(x.bfloat16(), w, 0.7)
    assert raw.dtype == inside.dtype == torch.float32
    assert torch.equal(raw, x.bfloat16().float() * w.bfloat16().float() * 0.7)
    out = TOY.compute(x.bfloat16(), w, 0.7)  # outside autocast: back in the input's dtype, rounded once
    assert_rounded_float32(out, x.bfloat16().float() * w * 0.7, torch.bfloat16)


def test_a_formula_sees_only_what_the_op_saves():
    """An argument not in saves= is not kept alive by the graph, and a formula that reads it says so."""
    def vjp_reading_w(a, need, grad):
        return {"x": grad * a.w}

    op = define_op("toy_saves_x", _toy, fake=_toy_fake, saves=("x",), vjp=vjp_reading_w,
                   jvp=lambda a, t: (None,), namespace=NS)
    out = op(_rand(*X, seed=1).requires_grad_(), _rand(*W, seed=2), 0.7)
    with pytest.raises(AttributeError, match="'w' is not available to this formula"):
        out.sum().backward()
    with pytest.raises(TypeError, match=r"does not have: \['y'\]"):
        Args(("x", "scale"), (1, 0.5)).replace(y=1)


def test_bad_definitions_are_refused():
    def noop(x: Tensor) -> Tensor:
        return x.clone()

    with pytest.raises(ValueError, match="give both vjp and jvp"):
        define_op("toy_bad_1", noop, fake=lambda x: x.new_empty(x.shape), vjp=_toy_vjp, namespace=NS)
    with pytest.raises(ValueError, match=r"saves must name tensor arguments .* got \['scale'\]"):
        define_op("toy_bad_2", _toy, fake=_toy_fake, saves=("scale",), vjp=_toy_vjp, jvp=lambda a, t: (None,),
                  namespace=NS)

    def inplace(x: Tensor) -> None:
        x.add_(1)

    with pytest.raises(ValueError, match="takes neither autocast"):
        define_op("toy_bad_3", inplace, fake=lambda x: None, mutates_args=("x",), namespace=NS)
    with pytest.raises(ValueError, match=r"has no argument \['need_weights_grad', 'weights'\]"):
        define_bilinear_backward("toy_bad_4", _toy_backward, fake=_toy_backward_fake, pair=("x", "weights"),
                                 forward=lambda a, x, w: TOY(x, w, a.scale), saves=(), namespace=NS)
    # refused before anything was registered
    assert not any(hasattr(getattr(torch.ops, NS), f"toy_bad_{i}") for i in (1, 2, 3, 4))
    op = define_op("toy_inplace", inplace, fake=lambda x: None, mutates_args=("x",), autocast=False, namespace=NS)
    x = torch.zeros(2)
    op(x)
    assert torch.equal(x, torch.ones(2))
