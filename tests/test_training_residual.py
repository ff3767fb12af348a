"""The training step hands the loss its residual ``y - A x*`` (the noise it drew) instead of a
second full-volume projection; the step is the same as computing it (to float32 rounding)."""
from __future__ import annotations

import torch

from unrolled3d.data import PhantomDataset
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, standard_cone_beam
from unrolled3d.training import TrainConfig, Trainer


def _rec() -> PartitionedReconstructor:
    torch.manual_seed(0)
    return PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), (16, 16, 16), (8, 8, 8))


def test_loss_with_the_residual_equals_the_loss_that_projects_again():
    physics = ConeBeamCT(standard_cone_beam(16, 10), normalize=True)
    x = PhantomDataset(2, 16)[1][None]
    noise = 0.02 * torch.randn((1, 1, *physics.geometry.sino_shape), generator=torch.Generator().manual_seed(3))
    y = physics.A(x) + noise
    grads = []
    for residual in (None, noise):
        rec = _rec()
        loss = rec.training_loss(y, physics, x, offset=(3, 5, 7), residual=residual)
        loss.backward()
        grads.append((float(loss.detach()), torch.cat([p.grad.reshape(-1) for p in rec.parameters() if p.grad is not None])))
    (l0, g0), (l1, g1) = grads
    assert abs(l0 - l1) <= 1e-5 * abs(l0)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6 * float(g0.abs().max()))
    # a residual of the wrong shape is refused, not broadcast
    try:
        _rec().training_loss(y, physics, x, offset=(3, 5, 7), residual=noise[..., :-1])
    except ValueError as exc:
        assert "residual" in str(exc)
    else:
        raise AssertionError("a residual of another shape was accepted")


def test_a_training_step_projects_the_whole_volume_once():
    """Once to simulate ``y``; the loss works on the patch and its detector windows."""
    physics = ConeBeamCT(standard_cone_beam(16, 10), normalize=True)
    full_shape = (1, 1, 16, 16, 16)
    calls = []
    original = type(physics).A

    def counting(self, x, **kwargs):
        if tuple(x.shape) == full_shape:
            calls.append(1)
        return original(self, x, **kwargs)

    physics.A = counting.__get__(physics)
    trainer = Trainer(_rec(), physics, PhantomDataset(2, 16), TrainConfig(steps=2, lr=1e-3, progress=False))
    trainer.step()
    assert len(calls) == 1
