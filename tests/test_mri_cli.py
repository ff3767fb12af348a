"""The MRI command-line path end to end on tiny volumes: ``simulate --modality mri``, ``reconstruct``
of k-space files (zero-filled, CG-SENSE, an MRI model), ``train`` with an ``[mri]`` section, and
the clear errors on bad input (wrong file kinds, a model of the other modality, bad options)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unrolled3d.cli import main
from unrolled3d.cli.demo import DEFAULT_WEIGHTS
from unrolled3d.cli.mri_train import MRITrainingSet
from unrolled3d.errors import FileFormatError
from unrolled3d.io import file_kind, load_kspace, load_model, read_volume, save_kspace
from unrolled3d.models import build_model
from unrolled3d.mri import MaskBank, MultiCoilMRI3D, acceleration, birdcage_maps, cg_sense
from unrolled3d.training import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

N = 16
TOML = """[geometry]
size = 16
[mri]
coils = 4
acceleration = [2.5, 4.0]
masks = 3
[model]
n_iter = 2
base = 4
depth = 1
[partition]
patch = 8
[train]
steps = 3
checkpoint_every = 0
"""


def _run(argv, capsys):
    """Exit status and the JSON payload (``--json`` added)."""
    code = main([*argv, "--json"])
    out = capsys.readouterr().out.strip()
    return code, json.loads(out.splitlines()[-1]) if code == 0 else None


def _error(argv, capsys) -> str:
    """The one error line of a command that must fail with status 2."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"unrolled3d {argv[0]}: error: "), err
    return err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A k-space file (noise-free), a noisy one, a CT measurements file and a tiny trained MRI model."""
    d = tmp_path_factory.mktemp("mri_cli")
    base = ["simulate", "--modality", "mri", "--size", str(N), "--coils", "4", "--acceleration", "3", "--quiet"]
    assert main([*base, "--noise", "0", "--output", str(d / "k.pt")]) == 0
    assert main([*base, "--noise", "0.05", "--seed", "3", "--output", str(d / "noisy.pt")]) == 0
    assert main(["simulate", "--size", str(N), "--views", "6", "--output", str(d / "ct.pt"), "--quiet"]) == 0
    (d / "mri.toml").write_text(TOML)
    assert main(["train", str(d / "mri.toml"), "--out-dir", str(d / "run"), "--quiet"]) == 0
    return d


# ------------------------------------------------------------------------------- simulate
def test_simulated_kspace_is_the_operator_on_its_truth(workdir):
    scan = load_kspace(workdir / "k.pt")
    assert file_kind(workdir / "k.pt") == "kspace" and file_kind(workdir / "ct.pt") == "measurements"
    assert scan.y.shape == (1, 2, 4, N, N, N) and scan.x_true.shape == (1, 2, N, N, N)
    assert scan.coil_maps.shape == (4, N, N, N) and scan.coil_maps.is_complex()
    assert abs(acceleration(scan.mask) - 3.0) < 0.05 and scan.meta["modality"] == "mri"
    # the coil maps are normalised, the image is complex (a smooth phase), its magnitude the phantom's
    torch.testing.assert_close(torch.linalg.vector_norm(scan.coil_maps, dim=0), torch.ones(N, N, N))
    assert float(scan.x_true[0, 1].abs().max()) > 0.1 * float(scan.x_true.abs().max())
    # noise-free: y is exactly the file's own operator on the truth, zero off the mask
    physics = MultiCoilMRI3D(scan.mask, scan.coil_maps)
    torch.testing.assert_close(scan.y, physics.A(scan.x_true), rtol=0, atol=0)
    assert bool((scan.y[..., scan.mask == 0] == 0).all())


def test_simulated_noise_has_the_stated_std_on_the_sampled_kspace_only(workdir):
    scan = load_kspace(workdir / "noisy.pt")
    physics = MultiCoilMRI3D(scan.mask, scan.coil_maps)
    noise = scan.y - physics.A(scan.x_true)
    peak = float(torch.linalg.vector_norm(scan.x_true, dim=1).max())
    sampled = noise[..., scan.mask > 0]
    # ~2 * 4 * 16^3 / 3 ~ 11000 samples: the std estimate is within 3 % (5 standard errors)
    assert abs(float(sampled.std()) / (0.05 * peak) - 1) < 0.035
    assert bool((noise[..., scan.mask == 0] == 0).all())
    assert scan.meta["noise"] == 0.05 and math.isclose(scan.meta["noise_std"], 0.05 * peak, rel_tol=1e-6)


def test_simulate_from_a_volume_file_keeps_its_grid(tmp_path):
    vol = np.zeros((12, 16, 20), dtype=np.float32)
    vol[3:9, 4:12, 5:15] = 2.0
    np.save(tmp_path / "v.npy", vol)
    assert main(["simulate", "--modality", "mri", "--volume", str(tmp_path / "v.npy"), "--acceleration", "2",
                 "--coils", "2", "--mask", "random", "--noise", "0", "--output", str(tmp_path / "k.pt"), "--quiet"]) == 0
    scan = load_kspace(tmp_path / "k.pt")
    assert scan.shape == (12, 16, 20) and scan.meta["mask"] == "random"
    torch.testing.assert_close(torch.linalg.vector_norm(scan.x_true[0], dim=0), torch.from_numpy(vol))


# ---------------------------------------------------------------------------- reconstruct
def _centred_adjoint(scan) -> torch.Tensor:
    """``sum_c conj(S_c) F^-1 (M y_c)`` written out with fftshift (not the operator's folded phases)."""
    k = torch.view_as_complex(scan.y[0].movedim(0, -1).contiguous()) * scan.mask
    dims = (-3, -2, -1)
    img = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(k, dim=dims), dim=dims, norm="ortho"), dim=dims)
    return (scan.coil_maps.conj() * img).sum(0)


def test_zero_filled_is_the_coil_combined_adjoint(workdir, capsys):
    code, res = _run(["reconstruct", str(workdir / "noisy.pt"), "--method", "zero-filled",
                      "--output", str(workdir / "zf.npy")], capsys)
    assert code == 0 and res["method"] == "zero-filled" and res["output"] == "magnitude"
    out, voxel = read_volume(workdir / "zf.npy")
    scan = load_kspace(workdir / "noisy.pt")
    torch.testing.assert_close(out, _centred_adjoint(scan).abs(), rtol=1e-4, atol=1e-5)
    assert voxel == (1.0, 1.0, 1.0)


def test_cg_sense_is_the_default_and_solves_a_fully_sampled_scan_exactly(workdir, capsys):
    # R = 1 with normalised maps: A^H A = I, so CG-SENSE returns the truth (no noise)
    assert main(["simulate", "--modality", "mri", "--size", "12", "--coils", "3", "--acceleration", "1",
                 "--noise", "0", "--output", str(workdir / "full.pt"), "--quiet"]) == 0
    code, res = _run(["reconstruct", str(workdir / "full.pt"), "--cg-iters", "3", "--cg-lam", "0",
                      "--output", str(workdir / "full.npy")], capsys)
    assert code == 0 and res["method"] == "cg-sense" and res["cg_iters"] == 3 and res["psnr"] > 100
    out, _ = read_volume(workdir / "full.npy")
    truth = torch.linalg.vector_norm(load_kspace(workdir / "full.pt").x_true[0], dim=0)
    torch.testing.assert_close(out, truth, rtol=1e-4, atol=1e-5)


def test_cg_sense_output_is_cg_sense_of_the_file(workdir, capsys):
    code, res = _run(["reconstruct", str(workdir / "noisy.pt"), "--method", "cg-sense", "--cg-iters", "4",
                      "--cg-lam", "0.05", "--output", str(workdir / "cg.npy")], capsys)
    scan = load_kspace(workdir / "noisy.pt")
    expected = cg_sense(scan.y, MultiCoilMRI3D(scan.mask, scan.coil_maps), n_iter=4, tol=0.0, lam=0.05)
    out, _ = read_volume(workdir / "cg.npy")
    torch.testing.assert_close(out, torch.linalg.vector_norm(expected[0], dim=0), rtol=1e-4, atol=1e-5)
    assert code == 0 and res["cg_lam"] == 0.05


def test_unrolled_reconstruction_with_an_mri_model(workdir, capsys):
    _, config = load_model(workdir / "run" / "model.pt")
    assert config["mri"]["coils"] == 4 and "views" not in config["geometry"]
    assert build_model(config, (N, N, N)).base.denoisers[0].in_channels == 2  # real and imaginary
    for extra in ([], ["--patch-size", "8"]):
        code, res = _run(["reconstruct", str(workdir / "noisy.pt"), "--method", "unrolled", "--weights",
                          str(workdir / "run" / "model.pt"), "--output", str(workdir / "u.nii.gz"), *extra], capsys)
        assert code == 0 and res["method"] == "unrolled" and math.isfinite(res["psnr"])
        assert res["patch"] == ([N] * 3 if not extra else [8] * 3)
        out, _ = read_volume(workdir / "u.nii.gz")
        assert out.shape == (N, N, N) and bool(torch.isfinite(out).all()) and bool((out >= 0).all())


def test_the_self_ensemble_of_an_mri_model_averages_flips_and_conjugates(workdir, capsys):
    """``--self-ensemble flips+conj``: reported, and a different volume from the plain model's (16 network
    answers averaged; ``tests/test_self_ensemble.py`` checks the average itself)."""
    outs = {}
    for name in ("none", "flips+conj"):
        code, res = _run(["reconstruct", str(workdir / "noisy.pt"), "--method", "unrolled", "--weights",
                          str(workdir / "run" / "model.pt"), "--self-ensemble", name,
                          "--output", str(workdir / f"e_{name}.npy")], capsys)
        assert code == 0 and res["self_ensemble"] == name and math.isfinite(res["psnr"])
        outs[name] = read_volume(workdir / f"e_{name}.npy")[0]
    assert float((outs["none"] - outs["flips+conj"]).abs().max()) > 1e-4 * float(outs["none"].abs().max())


# -------------------------------------------------------------------------------- training
def test_training_items_carry_their_mask_and_the_trainer_sets_it(workdir):
    from unrolled3d.data.datasets import PhantomDataset
    from unrolled3d.training import TrainConfig, Trainer

    bank = MaskBank((N, N, N), (2.0, 4.0), count=3, seed=5)
    ds = MRITrainingSet(PhantomDataset(10, N), bank, seed=1)
    x, params = ds[4]
    assert x.shape == (2, N, N, N) and torch.equal(params["mask"], bank.for_item(4))
    assert torch.equal(ds[4][0], x) and torch.equal(ds[-6][1]["mask"], params["mask"])
    physics = MultiCoilMRI3D(bank[0], birdcage_maps(2, (N, N, N)))
    rec = build_model({"model": {"n_iter": 1, "base": 2, "depth": 0}, "partition": {"patch": 8}, "mri": {}},
                      (N, N, N))
    trainer = Trainer(rec, physics, ds, TrainConfig(steps=1, progress=False))
    trainer.start()
    gen = torch.Generator().manual_seed(trainer.generator.initial_seed())
    i = int(torch.randint(len(ds), (1,), generator=gen))  # the item the step draws
    trainer.step()
    assert torch.equal(physics.mask, bank.for_item(i))


def test_mri_section_is_checked(tmp_path):
    ok = RunConfig.from_dict({"geometry": {"size": 16}, "mri": {"acceleration": 6}, "partition": {"patch": 8}})
    assert ok.mri.acceleration == (6.0, 6.0) and ok.to_dict()["mri"]["mask"] == "poisson"
    bad = {"views": ({"geometry": {"size": 16, "views": 30}, "mri": {}}, "views is a CT setting"),
           "range": ({"mri": {"acceleration": [5, 2]}}, r"\[mri\] acceleration must be"),
           "below one": ({"mri": {"acceleration": 0.5}}, r"\[mri\] acceleration must be"),
           "unknown": ({"mri": {"coil": 8}}, r"unknown keys in \[mri\]: coil"),
           "kind": ({"mri": {"mask": "grid"}}, r"\[mri\] mask"),
           "coils": ({"mri": {"coils": 0}}, r"\[mri\] coils")}
    for name, (table, match) in bad.items():
        with pytest.raises((TypeError, ValueError), match=match):
            RunConfig.from_dict({"partition": {"patch": 8}, **table})


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv, expected", [
    (["reconstruct", "{ct}", "--method", "cg-sense", "--out", "x.npy"], "holds cone-beam CT measurements"),
    (["reconstruct", "{ct}", "--method", "zero-filled", "--out", "x.npy"], "holds cone-beam CT measurements"),
    (["reconstruct", "{k}", "--method", "fdk", "--out", "x.npy"], "FDK is for cone-beam CT"),
    (["reconstruct", "{k}", "--method", "unrolled", "--weights", "{ct_model}", "--out", "x.npy"], "is a CT model"),
    (["reconstruct", "{ct}", "--method", "unrolled", "--weights", "{model}", "--out", "x.npy"], "is an MRI model"),
    (["reconstruct", "{k}", "--method", "unrolled", "--out", "x.npy"], "needs --weights"),
    (["reconstruct", "{k}", "--method", "zero-filled", "--cg-iters", "3", "--out", "x.npy"],
     "--cg-iters applies to --method cg-sense"),
    (["reconstruct", "{k}", "--weights", "{model}", "--out", "x.npy"], "--weights applies to --method unrolled"),
    (["reconstruct", "{k}", "--self-ensemble", "flips", "--out", "x.npy"],
     "--self-ensemble applies to --method unrolled, not to cg-sense"),
    (["reconstruct", "{k}", "--normal", "{model}", "--out", "x.npy"], "--normal applies to cone-beam CT"),
    (["reconstruct", "{k}", "--precision", "bfloat16", "--out", "x.npy"], "MRI reconstructions run in float32"),
    (["reconstruct", "{k}", "--preview", "p.png", "--out", "x.npy"], "--preview applies to cone-beam CT"),
    (["reconstruct", "{k}", "--method", "unrolled", "--weights", "{model}", "--overlap", "0", "--sweeps", "2",
      "--out", "x.npy"], "--overlap, --sweeps apply to cone-beam CT's unrolled reconstruction"),
    (["reconstruct", "{k}", "--scale-check", "rescale", "--out", "x.npy"],
     "--scale-check applies to cone-beam CT's unrolled reconstruction"),
    (["simulate", "--modality", "mri", "--noise-relative", "0.1", "--out", "y.pt"],
     "--noise-relative applies to cone-beam CT"),
    (["reconstruct", "{k}", "--cg-iters", "0", "--out", "x.npy"], "--cg-iters must be a positive integer"),
    (["reconstruct", "{k}", "--cg-lam", "-1", "--out", "x.npy"], "--cg-lam must be >= 0"),
    (["reconstruct", "{k}", "--out", "x.zarr"], "not Zarr stores"),
    (["reconstruct", "{k}", "--out", "{k}"], "refusing to overwrite an input"),
    (["reconstruct", "{corrupt}", "--method", "cg-sense", "--out", "x.npy"], "not a readable k-space file"),
    (["simulate", "--modality", "mri", "--acceleration", "0.5", "--out", "y.pt"], "--acceleration must be >= 1"),
    (["simulate", "--modality", "mri", "--acceleration", "nan", "--out", "y.pt"], "--acceleration must be finite"),
    (["simulate", "--modality", "mri", "--size", "16", "--acceleration", "100", "--out", "y.pt"],
     "--acceleration 100: the 4x4 calibration block"),
    (["simulate", "--modality", "mri", "--views", "10", "--out", "y.pt"], "--views applies to cone-beam CT"),
    (["simulate", "--modality", "mri", "--short-scan", "--out", "y.pt"], "--short-scan applies to cone-beam CT"),
    (["simulate", "--modality", "mri", "--units", "hu", "--out", "y.pt"], "--units applies to cone-beam CT"),
    (["simulate", "--coils", "4", "--mask", "random", "--out", "y.pt"], "--coils, --mask apply to --modality mri"),
    (["simulate", "--modality", "mri", "--coils", "0", "--out", "y.pt"], "--coils must be a positive integer"),
    (["simulate", "--modality", "mri", "--out", "y.zarr"], "not a Zarr store"),
    (["simulate", "--modality", "mri", "--out", "y.npy"], "must end in .pt"),
])
def test_bad_mri_input_is_one_clear_line(workdir, capsys, tmp_path, monkeypatch, argv, expected):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    names = {"ct": workdir / "ct.pt", "k": workdir / "k.pt", "model": workdir / "run" / "model.pt",
             "ct_model": DEFAULT_WEIGHTS, "corrupt": tmp_path / "corrupt.pt"}
    monkeypatch.chdir(tmp_path)
    err = _error([a.format(**names) for a in argv], capsys)
    assert expected in err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "y.pt").exists()


def test_kspace_files_refuse_bad_contents(tmp_path):
    mask, maps = torch.ones(4, 4, 4), birdcage_maps(2, (4, 4, 4))
    y = torch.zeros(1, 2, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_kspace(tmp_path / "a.pt", y.clone().fill_(float("nan")), mask, maps)
    with pytest.raises(ValueError, match="k-space must be a real floating-point tensor of shape"):
        save_kspace(tmp_path / "a.pt", y[:, :, :1], mask, maps)
    with pytest.raises(ValueError, match="coil maps must be a complex"):
        save_kspace(tmp_path / "a.pt", y, mask, maps.real)
    assert not (tmp_path / "a.pt").exists()
    save_kspace(tmp_path / "a.pt", y, mask, maps, voxel_size=(2.0, 1.0, 1.0))
    assert load_kspace(tmp_path / "a.pt").voxel_size == (2.0, 1.0, 1.0)
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    state["mask"] = torch.ones(4, 4, 5)  # shapes that disagree
    torch.save(state, tmp_path / "b.pt")
    with pytest.raises(FileFormatError, match="coil maps must be a complex"):
        load_kspace(tmp_path / "b.pt")
    state["format"] = "unrolled3d.measurements/1"
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(FileFormatError, match="holds cone-beam CT measurements"):
        load_kspace(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError):
        load_kspace(tmp_path / "missing.pt")


def test_training_from_files_validates_held_out_files_with_the_fixed_mask(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(tmp_path / f"v{k}.npy", (1 + rng.random((18, 16, 16))).astype(np.float32))
    toml = TOML.replace("[train]\n", "[train]\nval_every = 3\n") + (
        '[data]\npaths = ["*.npy"]\nnormalization = "percentile"\nval_files = 1\nval_crops = 1\n')
    (tmp_path / "f.toml").write_text(toml)
    code, res = _run(["train", str(tmp_path / "f.toml"), "--out-dir", str(tmp_path / "run")], capsys)
    assert code == 0 and len(res["val"]) == 1 and math.isfinite(res["val"][0]["psnr"])
    _, config = load_model(tmp_path / "run" / "model.pt")
    assert len(config["data_files"]["held_out"]) == 1 and config["normalization"]["kind"] == "percentile"
