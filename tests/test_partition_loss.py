"""L_PART from deepinv.Trainer: PartitionedLoss and the training-mode model that does not sweep."""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from unrolled3d.data import random_ellipsoids, voxelize
from unrolled3d.metrics import VolumePSNR, VolumeSSIM
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.partition import PartitionedLoss, PartitionedReconstructor, PatchTrainingModel
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

N, P = 16, 8


class _Volumes(torch.utils.data.Dataset):
    def __init__(self, n_items: int):
        self.items = [voxelize(random_ellipsoids(4, radius=0.45 * N, seed=s), (N, N, N))[None] for s in range(n_items)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _CountingBase(UnrolledPGD):
    calls = 0

    def forward(self, y, physics, x_init=None, **kwargs):
        type(self).calls += 1
        return super().forward(y, physics, x_init=x_init, **kwargs)


def _setup():
    torch.manual_seed(0)
    physics = ConeBeamCT(standard_cone_beam(N, 12), normalize=True)
    rec = PartitionedReconstructor(_CountingBase(UNet3D(base=4, depth=1), n_iter=2), (N, N, N), (P, P, P),
                                   stride=(P, P, P))
    return physics, rec


def test_loss_is_per_sample_l_part():
    physics, rec = _setup()
    x = torch.stack(_Volumes(2).items)
    y = physics.A(x)
    loss = PartitionedLoss(torch.Generator().manual_seed(5))
    model = loss.adapt_model(rec)
    assert isinstance(model, PatchTrainingModel) and loss.adapt_model(model) is model
    per_sample = loss(x_net=None, x=x, y=y, physics=physics, model=model)
    offset = rec.random_offset(torch.Generator().manual_seed(5))  # the position the loss drew
    expected = torch.stack([rec.training_loss(y[i:i + 1], physics, x[i:i + 1], offset=offset) for i in range(2)])
    torch.testing.assert_close(per_sample, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(per_sample.mean(), rec.training_loss(y, physics, x, offset=offset),
                               rtol=1e-6, atol=1e-8)
    with pytest.raises(TypeError, match="PartitionedReconstructor"):
        loss.adapt_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="reduction"):
        rec.training_loss(y, physics, x, reduction="sum")


def test_training_mode_forward_does_not_sweep():
    physics, rec = _setup()
    model = PatchTrainingModel(rec)
    y = physics.A(torch.stack(_Volumes(1).items))
    _CountingBase.calls = 0
    placeholder = model.train()(y, physics)
    assert _CountingBase.calls == 0  # nothing reconstructed: the loss solves its own patch
    assert placeholder.shape == (1, 1, N, N, N) and bool(placeholder.isnan().all())
    assert placeholder.untyped_storage().nbytes() == placeholder.element_size()  # a broadcast scalar
    with torch.no_grad():
        out = model.eval()(y, physics)
    assert _CountingBase.calls == 2 * len(rec.patches())  # eval: the full partitioned reconstruction
    torch.testing.assert_close(out, rec(y, physics), rtol=0, atol=0)


def test_trainer_steps_reduce_l_part():
    physics, rec = _setup()
    data = _Volumes(4)
    probe = [(0, 0, 0), (4, 4, 4), (8, 8, 8), (0, 8, 4)]

    def held_out_loss() -> float:  # fixed positions: not the noisy per-step loss
        with torch.no_grad():
            return sum(float(rec.training_loss(physics.A(v[None]), physics, v[None], offset=o))
                       for v in data.items for o in probe)

    before = held_out_loss()
    trainer = dinv.Trainer(
        model=rec, physics=physics, optimizer=torch.optim.Adam(rec.parameters(), lr=2e-3),
        train_dataloader=torch.utils.data.DataLoader(data, batch_size=2), epochs=4,
        losses=PartitionedLoss(torch.Generator().manual_seed(0)), metrics=[VolumePSNR(), VolumeSSIM(radius=2)],
        online_measurements=True, compute_train_metrics=False, save_path=None, verbose=False,
        show_progress_bar=False, plot_images=False, device="cpu", non_blocking_transfers=False)
    trained = trainer.train()
    assert isinstance(trained, PatchTrainingModel) and trained.model is rec
    history = trainer.loss_history["PartitionedLoss"]
    assert len(history) == 4 and all(torch.isfinite(torch.tensor(history)))
    after = held_out_loss()
    print(f"held-out L_PART {before:.4f} -> {after:.4f}; per-epoch {history}")
    assert after < 0.9 * before
