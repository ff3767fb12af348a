"""The post-processing baseline (``PostProcessing``): what it computes, how ``train`` trains it, and
its errors. It is the paper's comparison for the unrolled networks, so it must be trained by the
same loop (same draws, schedule, checkpoints and exact resumption) and nothing else."""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from unrolled3d.data import PhantomDataset
from unrolled3d.models import PostProcessing, UNet3D
from unrolled3d.physics import ConeBeamCT, standard_cone_beam
from unrolled3d.protocols import PatchTrainable
from unrolled3d.train import TrainConfig, latest_checkpoint, load_checkpoint, train

N = 8


@pytest.fixture(scope="module")
def physics():
    return ConeBeamCT(standard_cone_beam(N, 6), normalize=True)


def make(window="hann") -> PostProcessing:
    torch.manual_seed(0)
    return PostProcessing(UNet3D(base=2, depth=1), window=window)


def test_is_a_deepinv_reconstructor_and_trainable_by_train():
    rec = make()
    assert isinstance(rec, dinv.models.Reconstructor) and isinstance(rec, PatchTrainable)


@pytest.mark.parametrize("window", ["hann", "ram-lak"])
def test_forward_is_the_network_on_the_windowed_fdk(physics, window):
    rec = make(window)
    x = torch.rand(1, 1, N, N, N, generator=torch.Generator().manual_seed(1))
    y = physics.A(x)
    with torch.no_grad():
        expected = rec.net(physics.A_dagger(y, window=window))
        assert torch.equal(rec(y, physics), expected)


def test_window_none_uses_the_physics_own_pseudo_inverse():
    # deepinv's Denoising physics: A = I, A_dagger(y) = y, and it takes no window argument
    rec = make(window=None)
    y = torch.rand(1, 1, N, N, N, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(rec(y, dinv.physics.Denoising()), rec.net(y))


def test_training_loss_is_the_whole_volume_mse_and_reaches_every_weight(physics):
    rec = make()
    x = torch.rand(1, 1, N, N, N, generator=torch.Generator().manual_seed(3))
    y = physics.A(x)
    loss = rec.training_loss(y, physics, x, generator=torch.Generator())
    with torch.no_grad():
        assert torch.allclose(loss, ((rec(y, physics) - x) ** 2).mean(), rtol=1e-6, atol=0)
    loss.backward()
    # every weight is in the graph (a dead ReLU channel of a tiny net may still get a zero gradient)
    assert all(p.grad is not None for p in rec.parameters())
    assert sum(float(p.grad.abs().sum()) for p in rec.parameters()) > 0


def test_training_loss_refuses_a_truth_of_another_shape(physics):
    rec = make()
    x = torch.rand(1, 1, N, N, N)
    with pytest.raises(ValueError, match="x_true"):
        rec.training_loss(physics.A(x), physics, x[..., :-1])


def test_train_lowers_the_loss_and_resumes_bitwise(physics, tmp_path):
    data = PhantomDataset(50, (N,) * 3, seed=0)
    cfg = dict(steps=6, lr=5e-3, seed=1, noise_std=0.01, checkpoint_every=1, progress=False)
    full = train(make(), physics, data, TrainConfig(out_dir=tmp_path / "full", **cfg))

    def kill(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make(), physics, data, TrainConfig(out_dir=tmp_path / "split", **cfg), callback=kill)
    rec = make()
    resumed = train(rec, physics, data, TrainConfig(out_dir=tmp_path / "split", **cfg), resume=True)
    assert resumed["resumed_from"] == 3 and resumed["losses"] == full["losses"]
    final = load_checkpoint(latest_checkpoint(tmp_path / "full"))["model"]
    for name, value in rec.state_dict().items():
        assert torch.equal(value, final[name]), name


def test_a_longer_training_fits_better(physics):
    """The loss is minimised, not just computed: 40 steps on one volume end below the first loss."""
    data = PhantomDataset(1, (N,) * 3, seed=4)
    log = train(make(), physics, data, TrainConfig(steps=40, lr=1e-2, seed=0, noise_std=0.0, progress=False))
    assert log["losses"][-1] < 0.5 * log["losses"][0]


@pytest.mark.parametrize("net, window, match", [("unet", "hann", "net must be a torch.nn.Module"),
                                                (UNet3D(base=2, depth=1), 3, "window must be a string")])
def test_bad_arguments_are_named(net, window, match):
    with pytest.raises(TypeError, match=match):
        PostProcessing(net, window=window)


def test_patch_training_loss_is_the_block_mse_at_the_drawn_position(physics):
    """With ``patch``, the loss is the network on one block of the whole volume's FDK, scored on the
    same block of the truth; the block's corner is the generator's next three draws."""
    torch.manual_seed(0)
    rec = PostProcessing(UNet3D(base=2, depth=1), patch=4)
    x = torch.rand(1, 1, N, N, N, generator=torch.Generator().manual_seed(5))
    y = physics.A(x)
    loss = rec.training_loss(y, physics, x, generator=torch.Generator().manual_seed(6))
    draws = torch.Generator().manual_seed(6)
    z, r, c = (int(torch.randint(0, N - 4 + 1, (1,), generator=draws)) for _ in range(3))
    with torch.no_grad():
        fdk = physics.A_dagger(y, window="hann")
        block = (..., slice(z, z + 4), slice(r, r + 4), slice(c, c + 4))
        assert torch.equal(loss, ((rec.net(fdk[block]) - x[block]) ** 2).mean())
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in rec.parameters()) > 0


def test_patch_training_covers_every_position():
    rec = PostProcessing(UNet3D(base=2, depth=1), patch=3)
    gen = torch.Generator().manual_seed(0)
    corners = {rec.random_offset((5, 4, 3), gen) for _ in range(400)}
    assert corners == {(z, r, 0) for z in range(3) for r in range(2)}


def test_patch_larger_than_the_volume_is_refused(physics):
    rec = PostProcessing(UNet3D(base=2, depth=1), patch=N + 1)
    x = torch.rand(1, 1, N, N, N)
    with pytest.raises(ValueError, match=f"patch {N + 1} does not fit"):
        rec.training_loss(physics.A(x), physics, x)


@pytest.mark.parametrize("patch, error, match", [(2.0, TypeError, "patch must be an int"),
                                                 (True, TypeError, "patch must be an int"),
                                                 (0, ValueError, "patch must be at least 1")])
def test_bad_patch_is_named(patch, error, match):
    with pytest.raises(error, match=match):
        PostProcessing(UNet3D(base=2, depth=1), patch=patch)
