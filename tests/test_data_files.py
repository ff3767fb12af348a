"""Training from volume files (issue 17): lazy block reads in every format, the [data] section of
the command line, intensity normalisation stored in and applied from the model file, the
held-out split by file, reproducible augmentation and exact resumption."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from unrolled3d.cli import main
from unrolled3d.data import (Augmentation, IntensityNormalization, RandomCropDataset, expand_volume_paths,
                             split_by_file)
from unrolled3d.errors import FileFormatError
from unrolled3d.io import LazyVolume, load_measurements, load_model, read_volume, write_volume
from unrolled3d.io import volumes as volumes_module
from unrolled3d.models import UNet3D, UnrolledPGD, build_model
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, fdk, standard_cone_beam
from unrolled3d.train import TrainConfig, latest_checkpoint, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

ENDINGS = (".npy", ".nii", ".nii.gz", ".h5", ".tif", ".pt")
S = 16  # training block edge (the scan's volume)


def cli(*argv) -> tuple[int, str, str]:
    """The command line in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def blobs(shape, seed: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A volume of a few random balls on ``low``, float32."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    v = np.full(shape, low, np.float32)
    for _ in range(6):
        c, r = rng.uniform(0, shape), rng.uniform(2, 5)
        v[((grid - c) ** 2).sum(-1) < r * r] += rng.uniform(0.3, 1.0) * (high - low)
    return v


def toml(data: str, steps: int = 2, extra_train: str = "") -> str:
    return (f"[geometry]\nsize = {S}\nviews = 8\n[data]\n{data}\n[model]\nn_iter = 1\nbase = 2\ndepth = 1\n"
            f"[partition]\npatch = 8\n[train]\nsteps = {steps}\ncheckpoint_every = 1\nlr = 1e-3\n"
            f"noise_std = 0.01\n{extra_train}")


@pytest.fixture(scope="module")
def physics() -> ConeBeamCT:
    return ConeBeamCT(standard_cone_beam(S, 6), normalize=True)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[Path]:
    """One small volume per format: other sizes, voxel sizes; the HDF5 one under its own key."""
    d = tmp_path_factory.mktemp("mixed")
    paths = []
    for i, ext in enumerate(ENDINGS):
        shape = (S + i, S + 2 * i, S + 1)
        path = d / f"v{i}{ext}"
        write_volume(path, blobs(shape, i), voxel_size=(0.5 + 0.1 * i, 0.8, 1.2))
        paths.append(path)
    import h5py  # the same volume under another dataset name: [data] h5_key

    with h5py.File(paths[3], "a") as f:
        f["scan/ct"] = f["volume"][()]
    return paths


# ------------------------------------------------------------------------------ lazy reads
@pytest.mark.parametrize("ending", ENDINGS)
def test_a_block_equals_the_same_crop_of_the_whole_volume(tmp_path, ending):
    x = torch.rand(9, 10, 11, dtype=torch.float64)
    path = tmp_path / f"v{ending}"
    write_volume(path, x, voxel_size=(0.5, 0.7, 0.9))
    whole, vs = read_volume(path)
    vol = LazyVolume(path)
    assert vol.shape == (9, 10, 11) and vol.voxel_size == vs == (0.5, 0.7, 0.9)
    block = vol.read((2, 3, 4), (5, 6, 7))
    assert block.dtype == np.float32 and block.shape == (5, 6, 7)
    np.testing.assert_array_equal(block, whole[2:7, 3:9, 4:11].to(torch.float32).numpy())
    np.testing.assert_array_equal(vol.sample(5 * 5 * 6), whole[::2, ::2, ::2].to(torch.float32).numpy())
    with pytest.raises(ValueError, match="leaves the volume"):
        vol.read((5, 0, 0), (5, 2, 2))


@pytest.mark.parametrize("ending", (".npy", ".nii", ".nii.gz", ".h5", ".tif"))
def test_a_block_of_a_large_file_is_read_lazily(tmp_path, ending, monkeypatch):
    """A 96^3 file (3.5 MB), an 8^3 block: the block's read allocates a small fraction of the file,
    and no whole-volume reader runs."""
    path = tmp_path / f"big{ending}"
    volume = blobs((96, 96, 96), 1, low=0.1)
    write_volume(path, volume)
    for fmt in volumes_module._READERS:
        monkeypatch.setitem(volumes_module._READERS, fmt, lambda p: pytest.fail(f"{p} was read whole"))
    ds = RandomCropDataset([path], 8, normalization=IntensityNormalization("percentile"), length=4)
    tracemalloc.start()
    try:
        item = ds[1]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert item.shape == (1, 8, 8, 8)
    assert peak < volume.nbytes // 8, f"reading an 8^3 block of a 96^3 {ending} file allocated {peak} bytes"
    crop = ds.crop(1)
    expected = volume[tuple(slice(s, s + 8) for s in crop.start)]
    np.testing.assert_allclose(item[0].numpy(), expected * ds.affines[0][0], rtol=1e-6)


def test_a_pt_block_is_read_through_a_memory_map(tmp_path, monkeypatch):
    path = tmp_path / "big.pt"
    write_volume(path, blobs((40, 40, 40), 2))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    block = LazyVolume(path).read((3, 4, 5), (8, 8, 8))
    assert calls and all(c.get("mmap") is True and c.get("weights_only") is True for c in calls)
    np.testing.assert_array_equal(block, read_volume(path)[0][3:11, 4:12, 5:13].numpy())


# ------------------------------------------------------------------------------ the dataset
def test_every_format_trains_through_the_api(mixed, physics):
    ds = RandomCropDataset(mixed, S, augmentation=Augmentation(flip=True, rot90=True, intensity=(0.9, 1.1)),
                           length=50, seed=0)
    assert {ds.crop(i).file for i in range(50)} == set(range(len(mixed)))  # every file is drawn
    assert [v.voxel_size[0] for v in ds.volumes] == pytest.approx([0.5 + 0.1 * i for i in range(len(mixed))])
    torch.manual_seed(0)
    rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=2, depth=1), n_iter=1), (S,) * 3, (8,) * 3)
    hist = train(rec, physics, ds, TrainConfig(steps=3, lr=1e-3, progress=False))
    assert len(hist["losses"]) == 3 and all(np.isfinite(hist["losses"]))
    keyed = RandomCropDataset([mixed[3]], S, key="scan/ct", length=2)
    assert torch.equal(keyed[0], RandomCropDataset([mixed[3]], S, length=2)[0])


def test_normalisations_map_the_values(tmp_path):
    hu = np.full((S, S, S), -1000.0, np.float32)
    hu[4:12, 4:12, 4:12] = 0.0  # water in air
    hu[0, 0, 0] = -1024.0  # scanner padding: clipped to no attenuation
    write_volume(tmp_path / "hu.nii.gz", hu)
    ds = RandomCropDataset([tmp_path / "hu.nii.gz"], S, IntensityNormalization("hu", mu_water=0.02), length=1)
    x = ds[0][0].numpy()
    assert x.min() == 0.0 and np.allclose(x[4:12, 4:12, 4:12], 0.02) and x.sum() == pytest.approx(512 * 0.02)
    v = blobs((S, S, S), 3, low=10.0, high=200.0)
    write_volume(tmp_path / "raw.h5", v)
    ds = RandomCropDataset([tmp_path / "raw.h5"], S, IntensityNormalization("percentile", percentile=90.0, value=2.0), length=1)
    assert np.percentile(ds[0][0].numpy(), 90.0) == pytest.approx(2.0, rel=1e-5)


def test_small_volumes_are_refused_or_padded_with_air(tmp_path):
    write_volume(tmp_path / "thin.npy", np.ones((S, S, 5), np.float32))
    with pytest.raises(FileFormatError, match=r"thin\.npy.*smaller than the training block.*W 5 < 16"):
        RandomCropDataset([tmp_path / "thin.npy"], S)
    ds = RandomCropDataset([tmp_path / "thin.npy"], S, pad=True, length=3)
    x = ds[0][0]
    assert x.shape == (S, S, S) and float(x.sum()) == S * S * 5  # the volume once, air around it
    start = ds.crop(0).start
    assert start[:2] == (0, 0) and -(S - 5) <= start[2] <= 0


def test_augmentation_is_reproducible_and_consistent(mixed):
    aug = Augmentation(flip=True, rot90=True, intensity=(0.8, 1.2))
    a = RandomCropDataset(mixed[:2], S, augmentation=aug, length=40, seed=5)
    b = RandomCropDataset(mixed[:2], S, augmentation=aug, length=40, seed=5)
    plain = RandomCropDataset(mixed[:2], S, length=40, seed=5)  # the same blocks, unchanged
    other = RandomCropDataset(mixed[:2], S, augmentation=aug, length=40, seed=6)
    draws = [a.crop(i).augmentation for i in range(40)]
    for i in (0, 7, 39):
        assert torch.equal(a[i], b[i]) and torch.equal(a[i], a[i])
        assert torch.equal(a[i], Augmentation.apply(plain[i], draws[i]))  # the block, flipped/turned/scaled
    assert not all(torch.equal(a[i], other[i]) for i in range(5))
    # every change happens, and not always
    assert {t for d in draws for t in [d["turns"]]} == {0, 1, 2, 3}
    assert all(any(ax in d["flips"] for d in draws) and not all(ax in d["flips"] for d in draws) for ax in (1, 2, 3))
    assert all(0.8 <= d["scale"] <= 1.2 for d in draws) and len({d["scale"] for d in draws}) == 40


def test_the_split_is_by_file_and_one_file_counts_once(tmp_path):
    for i in range(6):
        write_volume(tmp_path / f"v{i}.npy", np.zeros((2, 2, 2), np.float32))
    os.symlink(tmp_path / "v0.npy", tmp_path / "link.npy")
    files = expand_volume_paths(["*.npy", "v0.npy", str(tmp_path)], root=tmp_path)
    assert [p.name for p in files] == [f"v{i}.npy" for i in range(6)]  # the link, the repeats: once
    train_files, held = split_by_file(files, 2, seed=1)
    assert len(held) == 2 and not set(train_files) & set(held) and set(train_files) | set(held) == set(files)
    assert split_by_file(files, 2, seed=1) == (train_files, held)
    assert {tuple(split_by_file(files, 2, seed=s)[1]) for s in range(6)} != {tuple(held)}  # the seed decides
    with pytest.raises(ValueError, match="at least one must remain"):
        split_by_file(files, 6)


def test_resume_through_the_api_is_bitwise_identical(mixed, physics, tmp_path):
    ds = RandomCropDataset(mixed[:4], S, normalization=IntensityNormalization("percentile"),
                           augmentation=Augmentation(flip=True, rot90=True, intensity=(0.9, 1.1)), length=1000, seed=2)
    val_set = RandomCropDataset(mixed[4:], S, normalization=IntensityNormalization("percentile"), length=1, seed=3)
    val = [(val_set[0][None], None)]
    cfg = dict(steps=4, lr=2e-3, seed=1, noise_std=0.01, batch_size=2, checkpoint_every=1, val_every=2,
               progress=False)

    def make():
        torch.manual_seed(0)
        return PartitionedReconstructor(UnrolledPGD(UNet3D(base=2, depth=1), n_iter=1), (S,) * 3, (8,) * 3)

    full = train(make(), physics, ds, TrainConfig(out_dir=tmp_path / "full", **cfg), val_data=val)

    def kill(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make(), physics, ds, TrainConfig(out_dir=tmp_path / "split", **cfg), val_data=val, callback=kill)
    rec = make()
    resumed = train(rec, physics, ds, TrainConfig(out_dir=tmp_path / "split", **cfg), val_data=val, resume=True)
    assert resumed["resumed_from"] == 2 and resumed["losses"] == full["losses"] and resumed["val"] == full["val"]
    final = load_checkpoint(latest_checkpoint(tmp_path / "full"))["model"]
    for name, value in rec.state_dict().items():
        assert torch.equal(value, final[name]), name


# ------------------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def hu_run(tmp_path_factory):
    """A folder of HU volumes (.npy), a [data] run with a held-out file, and a scan of a held-out one."""
    d = tmp_path_factory.mktemp("hu")
    for i in range(4):
        write_volume(d / "scans" / f"head{i}.npy", blobs((S + 4, S + 2, S + 6), 10 + i, low=-1000.0, high=800.0))
    (d / "c.toml").write_text(toml('paths = "scans/*"\nnormalization = "hu"\nmu_water = 0.02\nval_files = 1\n'
                                   'val_crops = 1\nintensity = [0.9, 1.1]', steps=2, extra_train="val_every = 2\n"))
    code, out, err = cli("train", d / "c.toml", "--out-dir", d / "run", "--json")
    assert code == 0, err
    return d, json.loads(out.strip().splitlines()[-1])


def test_cli_trains_from_a_folder_and_records_the_normalisation_and_split(hu_run):
    d, log = hu_run
    assert log["steps"] == 2 and log["normalization"] == {"kind": "hu", "mu_water": 0.02}
    assert [v["step"] for v in log["val"]] == [2] and np.isfinite(log["val"][0]["psnr"])
    _, config = load_model(d / "run" / "model.pt")
    assert config["normalization"] == {"kind": "hu", "mu_water": 0.02}
    files = config["data_files"]
    every = {str((d / "scans" / f"head{i}.npy").resolve()) for i in range(4)}
    assert len(files["held_out"]) == 1 and not set(files["train"]) & set(files["held_out"])
    assert set(files["train"]) | set(files["held_out"]) == every  # the .json sidecars are not volumes
    # the same configuration resumes (a finished run: nothing to do); the weights are the run's
    code, out, _ = cli("train", d / "c.toml", "--out-dir", d / "run", "--resume", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["steps"] == 2


def test_reconstruct_applies_the_model_files_normalisation(hu_run):
    d, _ = hu_run
    _, config = load_model(d / "run" / "model.pt")
    held_out = Path(load_model(d / "run" / "model.pt")[1]["data_files"]["held_out"][0])
    mu = np.maximum(0.02 * (1 + read_volume(held_out)[0].numpy() / 1000), 0)  # the scan sees attenuation
    write_volume(d / "mu.npy", mu)
    assert cli("simulate", "--volume", d / "mu.npy", "--views", "8", "--noise", "0.005", "--out", d / "m.pt",
               "--quiet")[0] == 0
    # the training patch, half overlap and 2 sweeps, in float32 (the by-hand reconstructor's): the
    # default plan would take the whole volume in one sweep, and the network is in bfloat16 where native
    code, out, err = cli("reconstruct", d / "m.pt", "--method", "unrolled", "--weights", d / "run" / "model.pt",
                         "--patch-size", 8, "--overlap", 0.5, "--sweeps", 2, "--precision", "float32",
                         "--out", d / "r.npy", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["units"] == "HU" and np.isfinite(res["psnr"])
    # by hand: the model on the normalised measurements gives attenuation, written in HU
    y, g, _, _ = load_measurements(d / "m.pt")
    state, config = load_model(d / "run" / "model.pt")
    rec = build_model(config, g.vol_shape)
    rec.load_state_dict(state)
    physics = ConeBeamCT(g, normalize=True)
    with torch.no_grad():
        x = rec.eval()(physics.normalize_measurements(y), physics)[0, 0]
    np.testing.assert_allclose(read_volume(d / "r.npy")[0].numpy(), (1000 * (x / 0.02 - 1)).numpy(), rtol=1e-5,
                               atol=1e-3)


def test_reconstruct_applies_a_percentile_normalisation_and_its_inverse(tmp_path):
    for i in range(2):
        write_volume(tmp_path / f"v{i}.h5", blobs((S, S, S), 20 + i, low=0.0, high=300.0))  # uncalibrated units
    (tmp_path / "c.toml").write_text(toml('paths = ["v0.h5", "v1.h5"]\nnormalization = "percentile"\n'
                                          'percentile = 95.0\npercentile_value = 0.5\nflip = false\nrot90 = false',
                                          steps=1))
    assert cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run", "--quiet")[0] == 0
    assert cli("simulate", "--volume", tmp_path / "v1.h5", "--views", "8", "--noise", "0", "--out", tmp_path / "m.pt",
               "--quiet")[0] == 0
    code, out, err = cli("reconstruct", tmp_path / "m.pt", "--method", "unrolled", "--weights",
                         tmp_path / "run" / "model.pt", "--patch-size", 8, "--overlap", 0.5, "--sweeps", 2,
                         "--precision", "float32", "--out", tmp_path / "r.pt", "--json")
    assert code == 0, err
    assert json.loads(out)["normalization"] == {"kind": "percentile", "percentile": 95.0, "value": 0.5}
    y, g, _, _ = load_measurements(tmp_path / "m.pt")
    state, config = load_model(tmp_path / "run" / "model.pt")
    rec = build_model(config, g.vol_shape)
    rec.load_state_dict(state)
    physics = ConeBeamCT(g, normalize=True)
    scale = 0.5 / np.percentile(fdk(y, g, window=physics.fdk_window).double().numpy(), 95.0)
    with torch.no_grad():
        x = rec.eval()(physics.normalize_measurements(y) * scale, physics)[0, 0] / scale
    np.testing.assert_allclose(read_volume(tmp_path / "r.pt")[0].numpy(), x.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("data, needles", [
    ('paths = "none/*.npy"', ["c.toml", "[data] paths", "no file matches", "none/*.npy"]),
    ('paths = "vols/*.npy"\ncolour = 1', ["c.toml", "unknown keys in [data]", "colour"]),
    ('paths = "vols/*.npy"\nnormalization = "z-score"', ["c.toml", "[data] normalization", "z-score"]),
    ("paths = 3", ["c.toml", "[data] paths", "string or a list"]),
    ('paths = ["vols/a.npy", 2]', ["c.toml", "[data] paths"]),
    ('paths = "vols/*.npy"\nflip = "yes"', ["c.toml", "[data] flip", "True or False"]),
    ('paths = "vols/*.npy"\nintensity = true', ["c.toml", "[data] intensity"]),
    ('paths = "vols/*.npy"\nintensity = [1.2, 0.8]', ["c.toml", "[data] intensity", "low <= high"]),
    ('paths = "vols/*.npy"\nval_files = 1.5', ["c.toml", "[data] val_files", "integer"]),
    ('paths = "vols/*.npy"\nmu_water = 0.02', ["c.toml", "[data] mu_water", '"hu" only']),
    ('paths = "vols/*.npy"\nnormalization = "percentile"\npercentile = 120', ["[data] percentile", "(0, 100]"]),
    ('paths = "vols/*.npy"\nval_files = 2', ["c.toml", "val_files = 2", "at least one must remain"]),
    ('paths = "vols/a.txt"', ["[data] paths", "a.txt", "unknown volume file type"]),
    ('paths = "vols/missing.npy"', ["[data] paths", "missing.npy", "does not exist"]),
    ('paths = "vols/small.npy"', ["small.npy", "smaller than the training block"]),
    ('paths = "vols/*.npy"\n[phantoms]\nkind = "ellipsoids"', ["c.toml", "[phantoms] and [data] are exclusive"]),
    ("seed = 1", ["c.toml", "[data] needs paths"]),
])
def test_bad_data_sections_are_one_clear_error(tmp_path, data, needles):
    (tmp_path / "vols").mkdir()
    write_volume(tmp_path / "vols" / "a.npy", np.ones((S, S, S), np.float32))
    write_volume(tmp_path / "vols" / "b.npy", np.ones((S, S, S + 1), np.float32))
    (tmp_path / "vols" / "a.txt").write_text("not a volume")
    write_volume(tmp_path / "vols" / "small.npy", np.ones((4, 4, 4), np.float32))
    if "small" not in data:
        (tmp_path / "vols" / "small.npy").unlink()
        (tmp_path / "vols" / "small.json").unlink()
    (tmp_path / "c.toml").write_text(toml(data))
    code, out, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run")
    assert code == 2 and not (tmp_path / "run" / "model.pt").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unrolled3d train: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_validation_needs_held_out_files(tmp_path):
    write_volume(tmp_path / "a.npy", np.ones((S, S, S), np.float32))
    (tmp_path / "c.toml").write_text(toml('paths = "a.npy"', extra_train="val_every = 1\n"))
    code, _, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run")
    assert code == 2 and "[train] val_every" in err and "[data] val_files" in err


def test_bad_api_arguments_name_the_argument(tmp_path):
    write_volume(tmp_path / "a.npy", np.ones((S, S, S), np.float32))
    with pytest.raises(TypeError, match="paths must be a list"):
        RandomCropDataset(tmp_path / "a.npy", S)
    with pytest.raises(TypeError, match="normalization must be an IntensityNormalization"):
        RandomCropDataset([tmp_path / "a.npy"], S, normalization="hu")
    with pytest.raises(ValueError, match="normalization must be one of"):
        IntensityNormalization("z-score")
    with pytest.raises(ValueError, match="takes \\['mu_water'\\], got also \\['value'\\]"):
        IntensityNormalization.from_dict({"kind": "hu", "mu_water": 0.02, "value": 1.0})
    with pytest.raises(ValueError, match="intensity must be a range"):
        Augmentation(intensity=(1.2, 0.8))
    with pytest.raises(FileFormatError, match="key='ct' names an HDF5 dataset"):
        LazyVolume(tmp_path / "a.npy", key="ct")
    write_volume(tmp_path / "z.h5", np.zeros((S, S, S), np.float32))
    with pytest.raises(FileFormatError, match=r"z\.h5.*percentile of the volume is 0"):
        RandomCropDataset([tmp_path / "z.h5"], S, normalization=IntensityNormalization("percentile"))
    with pytest.raises(FileFormatError, match=r"z\.h5.*no dataset 'ct'"):
        RandomCropDataset([tmp_path / "z.h5"], S, key="ct")


def test_the_example_configuration_is_valid():
    from unrolled3d.cli.commands import load_train_config
    from unrolled3d.cli.train_data import augmentation_of, normalization_of

    cfg = load_train_config(Path(__file__).resolve().parents[1] / "examples" / "train_from_files.toml")
    assert "phantoms" not in cfg and cfg["data"]["val_files"] == 2 and cfg["train"]["val_every"] == 100
    assert normalization_of(cfg["data"]) == IntensityNormalization("hu", mu_water=0.0193)
    assert augmentation_of(cfg["data"]) == Augmentation(flip=True, rot90=True, intensity=(0.9, 1.1))


def test_resume_through_the_command_line_is_bitwise_identical(mixed, tmp_path, monkeypatch):
    """A [data] run killed after step 2 (Ctrl-C) and resumed with --resume writes the model of the
    uninterrupted run, bit for bit (blocks, augmentations, noise and validation included)."""
    import unrolled3d.training as train_module

    names = ", ".join(f'"{p}"' for p in mixed)
    (tmp_path / "c.toml").write_text(toml(f'paths = [{names}]\nnormalization = "percentile"\nval_files = 1\n'
                                          f'intensity = [0.8, 1.2]\nseed = 3', steps=4,
                                          extra_train="val_every = 2\nbatch_size = 2\n"))
    assert cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "full", "--quiet")[0] == 0
    real_train = train_module.train

    def killed_after_2(*args, **kwargs):
        def kill(step, loss):
            if step == 2:
                raise KeyboardInterrupt
        return real_train(*args, **kwargs, callback=kill)

    monkeypatch.setattr(train_module, "train", killed_after_2)
    code, _, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "split", "--quiet")
    assert code == 130 and "--resume" in err and not (tmp_path / "split" / "model.pt").exists()
    monkeypatch.setattr(train_module, "train", real_train)
    code, out, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "split", "--resume", "--json")
    assert code == 0, err
    log = json.loads(out.strip().splitlines()[-1])
    assert log["resumed_from"].endswith("checkpoint_00000002.pt") and [v["step"] for v in log["val"]] == [2, 4]
    full, _ = load_model(tmp_path / "full" / "model.pt")
    split, _ = load_model(tmp_path / "split" / "model.pt")
    assert full.keys() == split.keys() and all(torch.equal(full[k], split[k]) for k in full)
