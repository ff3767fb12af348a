"""The shipped MRI model (issue 28): safe to load, small, an MRI model, made by the recipe it records."""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
import torch

from unrolled3d.cli import build_parser
from unrolled3d.cli.commands import load_train_config
from unrolled3d.io import load_model
from unrolled3d.models import build_model
from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, variable_density_mask
from unrolled3d.training import RunConfig
from unrolled3d.training.config import RECORDS
from weights_chain import stage_recipes

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "unrolled3d" / "weights" / "mri_heads.pt"
RESULTS = ROOT / "bench" / "results" / "quality_mri_heads.json"


def test_mri_weights_load_with_weights_only_and_build_a_two_channel_model():
    raw = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert raw["format"] == "unrolled3d.model/1" and WEIGHTS.stat().st_size < 5 * 2**20
    state, config = load_model(WEIGHTS)
    rec = build_model(config, (config["geometry"]["size"],) * 3)
    rec.load_state_dict(state)  # strict: every tensor of the architecture is there
    assert all(torch.isfinite(p).all() for p in rec.parameters())
    assert all(d.in_channels == 2 and d.out_channels == 2 for d in rec.base.denoisers)  # real, imaginary


def test_mri_weights_match_their_recipe():
    """The file's configuration is the shipped TOML's (the recipe copies it beside the training
    volumes, so the command names the copy: the check is on the content), plus what training from
    files records: the percentile normalisation and the training files, none held out."""
    _, config = load_model(WEIGHTS)
    args = build_parser().parse_args(shlex.split(config["command"])[1:])
    recipe = WEIGHTS.with_suffix(".toml")
    assert args.command == "train" and Path(args.config).suffix == ".toml" and not args.overwrite
    # a run cut short may be resumed (bit for bit, unrolled3d.training), as stage 1 was; only where
    # the recipe says so
    assert not args.resume or "--resume" in recipe.read_text()
    assert RunConfig.from_dict(config, records=True) == RunConfig.from_toml(recipe)
    expected = load_train_config(recipe)
    assert {k for k in config if k not in RECORDS} == set(expected)  # RECORDS: what training adds
    for section in expected:  # every value the file states is the TOML's
        assert config[section] == {k: expected[section].get(k) for k in config[section]}, section
    assert config["mri"]["coils"] == 8 and config["mri"]["acceleration"] == [4.0, 10.0]
    assert config["normalization"] == {"kind": "percentile", "percentile": 99.5, "value": 1.0}
    names = sorted(Path(p).name for p in config["data_files"]["train"])
    assert names == sorted(f"{n}_{e}.npy" for n in ("inia19", "mni152", "pycortex_s1") for e in (48, 62, 76, 92))
    assert config["data_files"]["held_out"] == []


def test_mri_weights_were_fine_tuned_from_the_stage_two_model_its_recipe_names():
    """mri_heads.pt is stage 6: it records the SHA-256 of the file it started from, the stage-5 model
    mri_heads_stage5.toml gives, itself fine-tuned from stage 4, and so on to stage 1 (each earlier
    recipe gives the file the next one started from). The same network, scan, coils and mask bank
    throughout, new draws; stages 1-5 train on MNI152 and INIA19, stage 6 adds a third head."""
    stages = stage_recipes(WEIGHTS, [WEIGHTS.with_name(f"mri_heads_stage{k}.toml") for k in (1, 2, 3, 4, 5)])
    assert [s["model"]["init"] for s in stages[1:]] == [f"mri_heads_stage{k}.pt" for k in (1, 2, 3, 4, 5)]
    for later in stages[1:]:
        for section in ("geometry", "mri", "partition"):
            assert later[section] == stages[0][section], section
    assert len({s["train"]["seed"] for s in stages}) == 6
    assert all(s["data"]["paths"] == ["train/*.npy"] for s in stages[:5])  # the folder held MNI152 and INIA19
    assert stages[5]["data"]["paths"] == [f"train/{n}_*.npy" for n in ("mni152", "inia19", "pycortex_s1")]


def test_the_result_file_scores_these_weights_on_held_out_heads_only():
    """The committed figures are of this file (its SHA-256), chosen on the training anatomy (MNI152,
    INIA19, pycortex's S1), scored on Colin 27 and dipy's head, which no training file comes from."""
    res = json.loads(RESULTS.read_text())
    assert res["weights"]["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert res["volumes"]["validation"] == ["mni152.npy", "inia19.npy", "pycortex_s1.npy"]
    assert res["volumes"]["held_out"] == ["colin27.npy", "dipy_aniso.npy"]
    assert not {Path(p).stem.split("_")[0] for p in res["weights"]["training_files"]} & {"colin27", "dipy"}
    # chosen on validation among the candidates the run names: the best, and it is the shipped file
    best = max(res["selection"]["model_candidates"], key=lambda c: c["validation_mean_psnr"])
    assert best["sha256"] == res["weights"]["sha256"] and best["inference"] == res["held_out"]["model"]["inference"]
    assert best["self_ensemble"] == res["held_out"]["model"]["self_ensemble"] == "flips+conj"
    # stages 1, 2 and 3, stages 3, 4 and 5 with flips+conj (earlier runs), then this file
    assert res["models_scored_on_held_out"] == 7


@pytest.mark.usefixtures("one_thread")
def test_mri_weights_reconstruct_a_small_scan_better_than_zero_filled():
    """A smoke test of the weights on a 32^3 complex ball-and-shell scan at R = 4: the model
    beats the zero-filled start (the figures on real heads are the bench's)."""
    from unrolled3d.cli.mri import unrolled_mri
    from unrolled3d.data import IntensityNormalization, smooth_phase
    from unrolled3d.metrics import magnitude_psnr
    from unrolled3d.mri import zero_filled

    state, config = load_model(WEIGHTS)
    n = 32
    rec = build_model(config, (n, n, n))
    rec.load_state_dict(state)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n),) * 3, indexing="ij")
    r = (z**2 + y**2 + x**2).sqrt()
    mag = ((r < 0.8).float() * 0.6 + (r < 0.5).float() * 0.4 - ((x - 0.2).abs() < 0.1).float() * (r < 0.5) * 0.5)
    phase = smooth_phase((n, n, n), torch.Generator().manual_seed(0))
    truth = torch.stack([mag * phase.cos(), mag * phase.sin()])[None]
    physics = MultiCoilMRI3D(variable_density_mask((n, n, n), 4.0, seed=1), birdcage_maps(8, (n, n, n)))
    kspace = physics.A(truth) + 0.01 * physics.mask * torch.randn(1, 2, 8, n, n, n,
                                                                    generator=torch.Generator().manual_seed(2))
    norm = IntensityNormalization.from_dict(config["normalization"])
    x_hat, _ = unrolled_mri(rec.eval(), norm, kspace, physics)
    assert magnitude_psnr(x_hat, truth) > magnitude_psnr(zero_filled(kspace, physics), truth) + 1.0
