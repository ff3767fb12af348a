"""UNet3D and UnrolledPGD: shapes, gradients, the unrolled iteration against explicit gradient
steps, the data_gradient path, activation checkpointing, mixed precision, input validation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unrolled3d.models import SigmaAdapter, UNet3D, UnrolledPGD, deepinv_denoiser
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def physics() -> ConeBeamCT:
    g = ConeBeamGeometry.circular(12, 64.0, 32.0, (16, 20), 1.5, (16, 16, 16))
    return ConeBeamCT(g, normalize=True)


def _rand(shape, seed=0, dtype=torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class CountingPhysics:
    """A physics with ``data_gradient`` only: ``A`` / ``A_adjoint`` must not be used."""

    def __init__(self):
        self.calls = 0

    def A_dagger(self, y):
        return torch.zeros_like(y)

    def data_gradient(self, x, y):
        self.calls += 1
        return x - y

    def A_adjoint_A(self, x):  # the rest of unrolled3d.protocols.NormalEquationPhysics
        return x

    def A(self, x):
        raise AssertionError("A must not be called when data_gradient exists")

    def A_adjoint(self, y):
        raise AssertionError("A_adjoint must not be called when data_gradient exists")


# ----------------------------------------------------------------------------------- UNet3D
@pytest.mark.parametrize("shape", [(7, 10, 9), (5, 5, 5), (8, 12, 16), (3, 1, 2)])
@pytest.mark.parametrize("up,norm", [("transpose", None), ("trilinear", "group")])
def test_unet3d_preserves_any_shape(shape, up, norm):
    net = UNet3D(base=4, depth=2, up=up, norm=norm)
    x = _rand((2, 1, *shape))
    out = net(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet3d_channels_and_residual():
    torch.manual_seed(0)
    x = _rand((1, 2, 6, 7, 5))
    plain = UNet3D(in_channels=2, out_channels=3, base=4, depth=1, residual=False)
    assert plain(x).shape == (1, 3, 6, 7, 5)
    res = UNet3D(in_channels=2, out_channels=2, base=4, depth=1, residual=True)
    with torch.no_grad():  # a zero head makes the residual net the identity
        res.head.weight.zero_()
        res.head.bias.zero_()
    torch.testing.assert_close(res(x), x, rtol=0, atol=0)


def test_unet3d_gradients_flow_to_every_parameter_and_the_input():
    torch.manual_seed(0)
    net = UNet3D(base=4, depth=2, norm="group")
    x = _rand((1, 1, 7, 9, 10)).requires_grad_()
    net(x).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    assert float(x.grad.abs().sum()) > 0


def test_unet3d_bad_arguments():
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        UNet3D(in_channels=1, out_channels=2, residual=True)
    with pytest.raises(ValueError, match="base"):
        UNet3D(base=0)
    with pytest.raises(TypeError, match="depth"):
        UNet3D(depth=1.5)
    with pytest.raises(ValueError, match="norm"):
        UNet3D(norm="batch")
    with pytest.raises(ValueError, match="up"):
        UNet3D(up="nearest")
    with pytest.raises(ValueError, match="5-D"):
        UNet3D(base=2)(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="input channels"):
        UNet3D(base=2)(torch.zeros(1, 2, 8, 8, 8))


# ------------------------------------------------------------------------------ UnrolledPGD
@pytest.mark.parametrize("start", ["dagger", "x_init"])
def test_identity_denoiser_equals_explicit_gradient_steps(physics, start):
    K, eta = 3, 0.7
    model = UnrolledPGD(nn.Identity(), n_iter=K, step_size=eta)
    torch.testing.assert_close(model.step_sizes, torch.full((K,), eta))
    x_true = _rand((1, *physics.img_size), 1)
    y = physics.A(x_true)
    x_init = _rand((1, *physics.img_size), 2) if start == "x_init" else None
    with torch.no_grad():
        out = model(y, physics, x_init=x_init)
    x0 = physics.A_dagger(y) if x_init is None else x_init
    x = x0
    for _ in range(K):
        x = x - eta * physics.A_adjoint(physics.A(x) - y)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)
    # and the iteration descends the data misfit (||A^T A|| = 1, eta < 2)
    assert float((physics.A(out) - y).norm()) < float((physics.A(x0) - y).norm())


def test_data_gradient_is_used_when_present():
    K, eta = 4, 0.3
    phys = CountingPhysics()
    model = UnrolledPGD(nn.Identity(), n_iter=K, step_size=eta)
    y = _rand((2, 1, 4, 5, 6), 3)
    out = model(y, phys)
    assert phys.calls == K
    # x_{k+1} - y = (1 - eta) (x_k - y) from x_0 = 0
    torch.testing.assert_close(out, y - (1 - eta) ** K * y)


def test_checkpoint_gives_same_output_and_gradients_with_less_saved_memory():
    torch.manual_seed(0)
    plain = UnrolledPGD(UNet3D(base=4, depth=2), n_iter=3, step_size=0.5, shared=False)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint = True
    y = _rand((1, 1, 10, 12, 12), 4)

    def run(model):
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(y, CountingPhysics())
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, saved[0]

    out_a, grads_a, mem_a = run(plain)
    out_b, grads_b, mem_b = run(ckpt)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-9, msg=name)
    assert mem_b < 0.25 * mem_a, (mem_a, mem_b)
    # no checkpointing (hence no recomputation) without autograd
    with torch.no_grad():
        torch.testing.assert_close(ckpt(y, CountingPhysics()), out_a)


def test_checkpoint_with_cone_beam_physics(physics):
    torch.manual_seed(1)
    plain = UnrolledPGD(UNet3D(base=2, depth=1), n_iter=2)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint = True
    y = physics.A(_rand((1, *physics.img_size), 5))
    outs, grads = [], []
    for model in (plain, ckpt):
        out = model(y, physics)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(model.step_param.grad.clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-8)


def test_amp_runs_denoiser_in_bfloat16_and_returns_input_dtype():
    torch.manual_seed(0)
    fp32 = UnrolledPGD(UNet3D(base=4), n_iter=2, step_size=0.5)
    amp = copy.deepcopy(fp32)
    amp.amp = True
    seen = []
    amp.denoiser(0).head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    y = _rand((1, 1, 8, 9, 10), 6)
    out = amp(y, CountingPhysics())
    assert out.dtype == torch.float32
    assert seen and all(d == torch.bfloat16 for d in seen)
    ref = fp32(y, CountingPhysics())
    assert float((out - ref).detach().norm() / ref.detach().norm()) < 5e-2
    # Gradients through the autocast region, with oneDNN off: its bfloat16 conv3d weight gradient
    # on the CPU (torch 2.14.1) now and then returns non-finite entries for the 2x2x2 feature maps
    # of the deepest level while the bias gradient (same grad_output) and every other layer are
    # finite -- seen in CI and in about 1 of 4 local runs after the fused-op tests, never with
    # oneDNN off. It is upstream, CPU-only (GPU autocast does not use oneDNN).
    with torch.backends.mkldnn.flags(enabled=False):
        out = amp(y, CountingPhysics())
        out.square().mean().backward()
    bad = [n for n, p in amp.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, bad
    explicit = UnrolledPGD(nn.Identity(), n_iter=1, amp=torch.bfloat16)
    assert explicit(y, CountingPhysics()).dtype == torch.float32


def test_shared_and_unshared_denoisers():
    base = UNet3D(base=2, depth=1)
    n_params = sum(p.numel() for p in base.parameters())
    shared = UnrolledPGD(base, n_iter=3, shared=True)
    assert len(shared.denoisers) == 1 and shared.denoiser(2) is base
    assert sum(p.numel() for p in shared.parameters()) == n_params + 3  # + the 3 step sizes
    unshared = UnrolledPGD(base, n_iter=3, shared=False)
    assert len(unshared.denoisers) == 3
    assert sum(p.numel() for p in unshared.parameters()) == 3 * n_params + 3
    w = [unshared.denoiser(k).head.weight for k in range(3)]
    torch.testing.assert_close(w[1], w[0])
    assert w[1].data_ptr() != w[0].data_ptr()
    listed = UnrolledPGD([nn.Identity(), UNet3D(base=2, depth=1)], n_iter=2, shared=False)
    assert isinstance(listed.denoiser(0), nn.Identity) and isinstance(listed.denoiser(1), UNet3D)
    assert isinstance(UnrolledPGD(n_iter=2).denoiser(0), UNet3D)  # the default denoiser


def test_learn_step_flag():
    learned = UnrolledPGD(nn.Identity(), n_iter=2, step_size=0.4)
    y = _rand((1, 1, 4, 4, 4), 7)
    learned(y, CountingPhysics()).sum().backward()
    assert learned.step_param.grad is not None and float(learned.step_param.grad.abs().sum()) > 0
    fixed = UnrolledPGD(nn.Identity(), n_iter=2, step_size=0.4, learn_step=False)
    assert not any(p is fixed.step_param for p in fixed.parameters())
    assert "step_param" in fixed.state_dict()
    torch.testing.assert_close(fixed.step_sizes, torch.full((2,), 0.4))
    big = UnrolledPGD(nn.Identity(), n_iter=1, step_size=50.0)  # no overflow in the inverse softplus
    torch.testing.assert_close(big.step_sizes, torch.tensor([50.0]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="n_iter"):
        UnrolledPGD(nn.Identity(), n_iter=0)
    with pytest.raises(TypeError, match="n_iter"):
        UnrolledPGD(nn.Identity(), n_iter=2.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step_size"):
            UnrolledPGD(nn.Identity(), step_size=bad)
    with pytest.raises(TypeError, match="step_size"):
        UnrolledPGD(nn.Identity(), step_size="1")
    with pytest.raises(ValueError, match="one denoiser per iteration"):
        UnrolledPGD([nn.Identity()] * 2, n_iter=3, shared=False)
    with pytest.raises(ValueError, match="shared=False"):
        UnrolledPGD([nn.Identity()] * 3, n_iter=3, shared=True)
    with pytest.raises(TypeError, match="denoiser"):
        UnrolledPGD("unet")
    with pytest.raises(TypeError, match=r"denoiser\[1\]"):
        UnrolledPGD([nn.Identity(), lambda x: x], n_iter=2, shared=False)
    with pytest.raises(TypeError, match="amp"):
        UnrolledPGD(nn.Identity(), amp="yes")
    with pytest.raises(ValueError, match="amp"):
        UnrolledPGD(nn.Identity(), amp=torch.float64)


def test_deepinv_3d_denoisers():
    import deepinv

    torch.manual_seed(0)
    y = _rand((1, 1, 9, 10, 11), 8)
    drunet = deepinv.models.DRUNet(1, 1, nc=(4, 8, 16, 32), nb=1, pretrained=None, dim=3)
    model = UnrolledPGD(drunet, n_iter=2, step_size=0.5)
    assert isinstance(model.denoiser(0), SigmaAdapter)  # DRUNet.forward needs sigma: wrapped
    assert model(y, CountingPhysics()).shape == y.shape
    unet = deepinv.models.UNet(1, 1, dim=3, scales=2, channels_per_scale=[4, 8], batch_norm=False)
    model = UnrolledPGD(unet, n_iter=2, step_size=0.5, checkpoint=True)
    assert model.denoiser(0) is unet  # sigma is optional: used as is
    out = model(y, CountingPhysics())
    assert out.shape == y.shape
    out.sum().backward()
    assert model.step_param.grad is not None
    assert isinstance(deepinv_denoiser("drunet", nc=(4, 8, 16, 32), nb=1), SigmaAdapter)
    with pytest.raises(ValueError, match="unknown"):
        deepinv_denoiser("dncnn")


def test_inside_partitioned_reconstructor_takes_context_and_trains(physics):
    torch.manual_seed(0)
    pgd = UnrolledPGD(UNet3D(base=2, depth=1), n_iter=2)
    rec = PartitionedReconstructor(pgd, (16, 16, 16), (8, 8, 8))
    assert rec.base is pgd  # follows the protocol as is: the context patch goes to x_init
    x = _rand((1, *physics.img_size), 9)
    y = physics.A(x)
    loss = rec.training_loss(y, physics, x, offset=(4, 0, 8))
    loss.backward()
    assert float(loss.detach()) > 0
    assert all(p.grad is not None for p in rec.parameters())
    with torch.no_grad():
        assert rec(y, physics).shape == x.shape
