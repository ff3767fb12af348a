"""Training loop (loss decrease, validation, exact resumption from atomic checkpoints) and the
volume datasets (determinism, file round trips, clear errors on bad files)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from unrolled3d.data.datasets import PhantomDataset, VolumeFileDataset
from unrolled3d.errors import FileFormatError
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry
from unrolled3d.train import TrainConfig, evaluate, latest_checkpoint, load_checkpoint, train

N, P = 24, 12  # volume and patch edge


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def physics() -> ConeBeamCT:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # power iteration tolerance
        g = ConeBeamGeometry.circular(12, 64.0, 32.0, (24, 28), 1.5, (N, N, N))
        return ConeBeamCT(g, normalize=True)


@pytest.fixture(scope="module")
def dataset() -> PhantomDataset:
    return PhantomDataset(16, (N, N, N), n_ellipsoids=(3, 8), seed=1)


def make_rec(seed: int = 0) -> PartitionedReconstructor:
    torch.manual_seed(seed)
    return PartitionedReconstructor(UnrolledPGD(UNet3D(base=4), n_iter=2), (N, N, N), (P, P, P))


def fixed_patch_loss(rec, physics, x) -> float:
    with torch.no_grad():
        return float(rec.training_loss(physics.A(x), physics, x, offset=(6, 3, 9)))


class Killed(Exception):
    pass


# ------------------------------------------------------------------------------------ train
def test_loss_decreases(physics, dataset):
    rec = make_rec()
    x_val = PhantomDataset(1, (N, N, N), n_ellipsoids=6, seed=99)[0][None]
    before = fixed_patch_loss(rec, physics, x_val)
    cfg = TrainConfig(steps=8, lr=3e-3, seed=0, progress=False)
    hist = train(rec, physics, dataset, cfg)
    after = fixed_patch_loss(rec, physics, x_val)
    assert len(hist["losses"]) == 8 and all(math.isfinite(v) and v > 0 for v in hist["losses"])
    assert hist["step"] == 8 and hist["checkpoint"] is None and hist["resumed_from"] is None
    assert after < 0.6 * before, (before, after)
    assert np.mean(hist["losses"][-3:]) < np.mean(hist["losses"][:3])


def test_resume_continues_identically(physics, dataset, tmp_path):
    cfg = dict(steps=6, lr=2e-3, seed=3, noise_std=0.02, batch_size=2, checkpoint_every=1, keep_checkpoints=2,
               progress=False)
    full = train(make_rec(), physics, dataset, TrainConfig(out_dir=tmp_path / "full", **cfg))
    assert len(full["losses"]) == 6

    def kill_after_3(step, loss):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(make_rec(), physics, dataset, TrainConfig(out_dir=tmp_path / "split", **cfg), callback=kill_after_3)
    ckpt = latest_checkpoint(tmp_path / "split")
    assert ckpt is not None and ckpt.name == "checkpoint_00000003.pt"
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [
        "checkpoint_00000002.pt", "checkpoint_00000003.pt"]  # pruned, no temporary files left
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["step"] == 3 and len(state["losses"]) == 3
    assert {"model", "optimizer", "scheduler", "rng"} <= state.keys()

    # new objects, another initialisation: everything must come from the checkpoint
    rec = make_rec(seed=123)
    torch.manual_seed(777)
    resumed = train(rec, physics, dataset, TrainConfig(out_dir=tmp_path / "split", **cfg), resume=True)
    assert resumed["resumed_from"] == 3
    a, b = torch.tensor(full["losses"]), torch.tensor(resumed["losses"])
    torch.testing.assert_close(b[:3], a[:3], rtol=0, atol=0)  # same seed, same run
    torch.testing.assert_close(b[3:], a[3:], rtol=0, atol=0)  # identical continuation
    final_full = load_checkpoint(latest_checkpoint(tmp_path / "full"))["model"]
    for name, value in rec.state_dict().items():
        torch.testing.assert_close(value, final_full[name], rtol=0, atol=0, msg=name)

    # resuming with other settings is another run: refused, naming what changed (the run
    # fingerprint in every checkpoint); the same settings find a finished run: nothing to do
    with pytest.raises(ValueError, match=r"another run.*train\.lr"):
        train(make_rec(), physics, dataset, TrainConfig(out_dir=tmp_path / "split", **{**cfg, "lr": 1e-2}),
              resume=True)
    again = train(make_rec(), physics, dataset, TrainConfig(out_dir=tmp_path / "split", **cfg), resume=True)
    assert again["resumed_from"] == 6 and again["losses"] == resumed["losses"]


def test_a_cosine_run_resumed_with_more_steps_anneals_over_the_new_length(physics, dataset):
    """The scheduler's state carries its length: resumed with ``steps`` 8 after 2 of 4, it kept
    ``T_max`` 4 and its rate climbed back to the peak over steps 5-8. It goes on along the cosine
    over 8 steps instead, ending at ``min_lr``."""
    from unrolled3d.training import Trainer

    cfg = dict(lr=1e-2, min_lr=1e-4, seed=0, progress=False)
    short = Trainer(make_rec(), physics, dataset, TrainConfig(steps=4, **cfg))
    short.start()
    for _ in range(2):
        short.step()
    longer = Trainer(make_rec(), physics, dataset, TrainConfig(steps=8, **cfg))
    longer.start(short.state_dict())
    rates = [longer.optimizer.param_groups[0]["lr"]]
    for _ in range(6):
        longer.step()
        rates.append(longer.optimizer.param_groups[0]["lr"])
    expected = [1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(2, 9)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert longer.scheduler.get_last_lr() == pytest.approx([expected[-1]], rel=1e-12)


def test_other_seed_gives_another_run(physics, dataset):
    cfg = dict(steps=2, lr=1e-3, progress=False)
    a = train(make_rec(), physics, dataset, TrainConfig(seed=0, **cfg))["losses"]
    b = train(make_rec(), physics, dataset, TrainConfig(seed=1, **cfg))["losses"]
    assert a != b


def test_validation_progress_and_final_checkpoint(physics, dataset, tmp_path, capsys):
    rec = make_rec()
    x = dataset[5][None]
    val = [(x, physics.A(x))]
    before = evaluate(rec, physics, val)
    hist = train(rec, physics, dataset, TrainConfig(steps=3, lr=3e-3, val_every=3, out_dir=tmp_path, progress=True),
                 val_data=val)
    assert [v["step"] for v in hist["val"]] == [3]
    assert math.isfinite(hist["val"][0]["psnr"]) and hist["val"][0]["psnr"] > before["psnr"]
    captured = capsys.readouterr()
    assert "val PSNR" in captured.out + captured.err and "loss=" in captured.err
    assert hist["checkpoint"].endswith("checkpoint_00000003.pt")  # written at the end
    assert load_checkpoint(hist["checkpoint"])["val"] == hist["val"]


def test_resume_without_checkpoint_starts_fresh(physics, dataset, tmp_path):
    hist = train(make_rec(), physics, dataset, TrainConfig(steps=1, out_dir=tmp_path / "new", progress=False),
                 resume=True)
    assert hist["resumed_from"] is None and len(hist["losses"]) == 1


def test_bad_training_arguments(physics, dataset):
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="out_dir"):
        train(make_rec(), physics, dataset, TrainConfig(steps=1, progress=False), resume=True)
    with pytest.raises(ValueError, match="val_data"):
        train(make_rec(), physics, dataset, TrainConfig(steps=1, val_every=1, progress=False))
    with pytest.raises(TypeError, match="training_loss"):
        train(UNet3D(), physics, dataset, TrainConfig(steps=1, progress=False))


# --------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("kind", ["ellipsoids", "shepp_logan"])
def test_phantom_dataset_is_deterministic_per_index(kind):
    ds = PhantomDataset(5, (10, 12, 11), kind=kind, seed=4)
    v3 = ds[3]
    assert v3.shape == (1, 10, 12, 11) and v3.dtype == torch.float32 and float(v3.max()) > 0
    other = PhantomDataset(5, (10, 12, 11), kind=kind, seed=4)
    _ = [other[i] for i in (4, 0, 1)]  # another access order
    torch.testing.assert_close(other[3], v3, rtol=0, atol=0)
    torch.testing.assert_close(ds[-2], v3, rtol=0, atol=0)
    assert not torch.equal(ds[2], v3)
    assert not torch.equal(PhantomDataset(5, (10, 12, 11), kind=kind, seed=5)[3], v3)
    with pytest.raises(IndexError):
        ds[5]


def test_phantom_dataset_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        PhantomDataset(2, 8, kind="foam")
    with pytest.raises(ValueError, match="length"):
        PhantomDataset(0, 8)
    with pytest.raises(ValueError, match="n_ellipsoids"):
        PhantomDataset(2, 8, n_ellipsoids=(5, 2))


def test_volume_file_dataset_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 8))  # float64, (D, H, W)
    b = rng.integers(0, 1000, (1, 6, 7, 8)).astype(np.int16)  # (1, D, H, W)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    ds = VolumeFileDataset([tmp_path / "a.npy", tmp_path / "b.npy"], vol_shape=(6, 7, 8))
    assert len(ds) == 2
    for item, ref in zip((ds[0], ds[1]), (a[None], b)):
        assert item.shape == (1, 6, 7, 8) and item.dtype == torch.float32
        torch.testing.assert_close(item, torch.from_numpy(ref.astype(np.float32)), rtol=0, atol=0)
    assert isinstance(ds.load(0), np.memmap)
    assert [p.name for p in VolumeFileDataset(tmp_path).paths] == ["a.npy", "b.npy"]  # a directory


def test_volume_file_dataset_clear_errors(tmp_path):
    np.save(tmp_path / "good.npy", np.zeros((4, 5, 6), np.float32))
    raw = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        VolumeFileDataset([tmp_path / "good.npy", tmp_path / "cut.npy"])
    lazy = VolumeFileDataset([tmp_path / "cut.npy"], validate=False)  # caught at load time too
    with pytest.raises(ValueError, match="cut.npy.*truncated"):
        lazy[0]
    (tmp_path / "junk.npy").write_bytes(b"\x00garbage" * 8)
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy"):
        VolumeFileDataset([tmp_path / "junk.npy"])
    with pytest.raises(ValueError, match="expected \\(4, 4, 4\\)"):
        VolumeFileDataset([tmp_path / "good.npy"], vol_shape=4)
    np.save(tmp_path / "flat.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        VolumeFileDataset([tmp_path / "flat.npy"])
    np.save(tmp_path / "cplx.npy", np.zeros((4, 5, 6), np.complex64))
    with pytest.raises(FileFormatError, match="dtype"):
        VolumeFileDataset([tmp_path / "cplx.npy"])
    np.save(tmp_path / "nan.npy", np.full((4, 5, 6), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        VolumeFileDataset([tmp_path / "nan.npy"])[0]
    with pytest.raises(FileNotFoundError):
        VolumeFileDataset([tmp_path / "missing.npy"])
    with pytest.raises(ValueError, match="unsupported"):
        VolumeFileDataset([tmp_path / "vol.tif"])


def test_volume_file_dataset_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["volume"] = vol
        f["other"] = vol[:2]
    with pytest.raises(FileFormatError, match="key="):
        VolumeFileDataset([tmp_path / "v.h5"])
    ds = VolumeFileDataset([tmp_path / "v.h5"], key="volume")
    torch.testing.assert_close(ds[0], torch.from_numpy(vol)[None])
    (tmp_path / "bad.h5").write_bytes(b"not hdf5" * 16)
    with pytest.raises(ValueError, match="HDF5"):
        VolumeFileDataset([tmp_path / "bad.h5"], key="volume")


# ------------------------------------------------------------------------------------ data parallel
def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        g = ConeBeamGeometry.circular(12, 64.0, 32.0, (24, 28), 1.5, (N, N, N))
        physics = ConeBeamCT(g, normalize=True)
    data = PhantomDataset(16, (N, N, N), n_ellipsoids=(3, 8), seed=1)
    rec = make_rec(seed=rank)  # different initial weights per rank: train() must broadcast rank 0's
    cfg = TrainConfig(steps=1, lr=1e-3, seed=5, noise_std=0.01, progress=False,
                      out_dir=str(out_dir / "ckpt"), checkpoint_every=1)
    # this rank's gradient of the first step, from the same draws train() makes (seed + rank)
    ref = make_rec(seed=0)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)
    i = int(torch.randint(len(data), (1,), generator=gen))
    x = data[i][None]
    y = physics.A(x)
    y = y + cfg.noise_std * torch.randn(y.shape, generator=gen)
    ref.train()
    ref.training_loss(y, physics, x, generator=gen).backward()
    local = {n: p.grad.clone() for n, p in ref.named_parameters()}
    train(rec, physics, data, cfg)
    torch.save({"local": local, "before": dict(make_rec(seed=0).named_parameters()),
                "after": {n: p.detach().clone() for n, p in rec.named_parameters()}},
               out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_rank_training_averages_gradients(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    lr, eps = 1e-3, 1e-8
    n_differ = 0
    for name, p0 in r0["before"].items():
        # Adam's first step is lr * g / (|g| + eps) with g the mean of the two ranks' gradients
        g = 0.5 * (r0["local"][name] + r1["local"][name])
        expected = p0 - lr * g / (g.abs() + eps)
        torch.testing.assert_close(r0["after"][name], expected, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(r1["after"][name], r0["after"][name], rtol=0, atol=0, msg=name)
        n_differ += int((torch.sign(r0["local"][name]) != torch.sign(g)).sum())
    assert n_differ > 0  # a rank's own gradient would have given another step: the test can fail
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2  # one RNG state per rank


def test_a_model_wrapped_in_ddp_is_refused_with_the_reason(physics, dataset, tmp_path):
    """train() averages the gradients over ranks itself: a DDP wrapper would average them twice."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(make_rec())
        with pytest.raises(TypeError, match="DistributedDataParallel: pass the model itself"):
            train(wrapped, physics, dataset, TrainConfig(steps=1, progress=False, out_dir=tmp_path / "run"))
    finally:
        dist.destroy_process_group()
    assert not (tmp_path / "run").exists()
