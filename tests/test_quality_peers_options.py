"""bench/experiments/quality_peers.py's model options (issue 28): models scored with the inference
``unrolled3d reconstruct`` plans, and on the validation volumes (choosing a model without touching
the held-out ones). Tiny volumes and a tiny model: the figures are checked against a direct
computation, not against numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "experiments"))  # the scripts import their neighbours
    import quality_peers

    return quality_peers


@pytest.fixture()
def files(tmp_path):
    """Two validation and one held-out volume (different random blobs) and a tiny model file."""
    from unrolled3d.io import save_model
    from unrolled3d.models import build_model

    gen = np.random.default_rng(0)
    paths = {}
    for name in ("val_a", "val_b", "test_a"):
        vol = np.zeros((10, 12, 11), dtype=np.float32)
        vol[2:8, 3:9, 2:9] = 1.0 + 0.5 * gen.random((6, 6, 7), dtype=np.float32)
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], vol)
    config = {"geometry": {"size": 12, "views": 6}, "model": {"n_iter": 2, "base": 2, "depth": 1, "shared": False},
              "partition": {"patch": 8}, "train": {"steps": 1, "noise_std": 0.02}}
    torch.manual_seed(0)
    rec = build_model(config, (12, 12, 12))
    paths["model"] = tmp_path / "tiny.pt"
    save_model(paths["model"], rec, config)
    return paths


def _argv(files, out, *extra):
    return ["--size", "12", "--views", "6", "--val", str(files["val_a"]), str(files["val_b"]),
            "--test", str(files["test_a"]), "--methods", "models", "--models", str(files["model"]),
            "--out", str(out), *extra]


def test_score_on_val_scores_the_validation_volumes_with_their_own_noise(peers, files, tmp_path, one_thread):
    from unrolled3d.data import IntensityNormalization
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    from quality_real import held_out_volume, scores

    out = tmp_path / "val.json"
    peers.main(_argv(files, out, "--score-on-val"))
    result = json.loads(out.read_text())
    assert result["data"]["scored"] == ["val_a.npy", "val_b.npy"]
    # FDK (Hann) of the validation volumes with the validation noise draws (seed VAL_SEED), directly
    norm = IntensityNormalization("percentile", percentile=99.5, value=1.0)
    vals = [held_out_volume(str(files[n]), 12, 1, norm) for n in ("val_a", "val_b")]
    physics = ConeBeamCT(standard_cone_beam(12, 6), normalize=True)
    ys = peers.noisy(physics, vals, 0.02, peers.VAL_SEED)
    expected = [scores(physics.A_dagger(y, window="hann"), x, 12)["psnr_whole"] for x, y in zip(vals, ys)]
    got = [v["psnr_whole"] for v in result["views"]["6"]["methods"]["FDK (Hann)"]["per_volume"]]
    assert got == pytest.approx(expected, abs=1e-9)
    # the held-out volume's scores differ (it was not the one scored)
    held = [held_out_volume(str(files["test_a"]), 12, 1, norm)]
    y_t = peers.noisy(physics, held, 0.02, peers.TEST_SEED)[0]
    assert scores(physics.A_dagger(y_t, window="hann"), held[0], 12)["psnr_whole"] not in got


def test_planned_inference_is_the_whole_volume_and_equals_a_one_patch_reconstruction(peers, files, tmp_path,
                                                                                      one_thread):
    from unrolled3d.io import load_model
    from unrolled3d.models import build_model
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam

    physics = ConeBeamCT(standard_cone_beam(12, 6), normalize=True)
    label, run, info = peers.unrolled_model(str(files["model"]), 12, physics, "planned")
    y = physics.A(torch.rand(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        x_hat = run(y)
    assert "planned inference" in label and info["plan"]["whole_volume"] and info["plan"]["n_sweeps"] == 1
    # the same network on the whole volume as one patch (precision as planned)
    state, config = load_model(files["model"])
    whole = build_model(config, (12, 12, 12), patch=12)
    whole.load_state_dict(state)
    whole.eval()
    whole.base.amp = info["plan"]["amp"]
    with torch.no_grad():
        torch.testing.assert_close(x_hat, whole(y, physics, x_init=physics.A_dagger(y), n_sweeps=1))
    # the default keeps the training patch (half overlap, two sweeps)
    label0, _, info0 = peers.unrolled_model(str(files["model"]), 12, physics)
    assert "partitioned" in label0 and info0["inference"] == "training-patch" and "plan" not in info0


def test_score_on_val_refuses_the_peers_and_files_before_the_new_options_still_append(peers, files, tmp_path,
                                                                                    one_thread):
    with pytest.raises(SystemExit, match="--score-on-val scores models only"):
        peers.parse_args(_argv(files, tmp_path / "x.json", "--score-on-val", "--methods", "models", "tv"))
    out = tmp_path / "old.json"
    peers.main(_argv(files, out))
    old = json.loads(out.read_text())
    for key in ("inference", "score_on_val"):  # a file written before these options existed
        del old["config"][key]
    out.write_text(json.dumps(old))
    peers.main(_argv(files, out, "--inference", "planned"))  # same problem: appended, not refused
    methods = json.loads(out.read_text())["views"]["6"]["methods"]
    assert {"tiny.pt (unrolled, partitioned)", "tiny.pt (unrolled, planned inference)"} <= set(methods)
    with pytest.raises(SystemExit, match="another problem"):
        peers.main(_argv(files, out, "--score-on-val"))  # validation scores never mix with held-out ones


def test_post_models_are_scored_as_their_network_on_the_whole_fdk(peers, files, tmp_path, one_thread):
    from quality_real import held_out_volume, scores
    from train_post import build_post, save_post

    from unrolled3d.data import IntensityNormalization
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam

    post = build_post(2, 1, patch=8)
    config = {"geometry": {"size": 12, "views": 6}, "train": {"steps": 3}, "parameters": 7,
              "post": {"base": 2, "depth": 1, "window": "hann", "patch": 8}}
    save_post(tmp_path / "post.pt", post, config)
    out = tmp_path / "post.json"
    peers.main(_argv(files, out, "--score-on-val", "--post-models", str(tmp_path / "post.pt")))
    got = json.loads(out.read_text())["views"]["6"]["methods"]["post.pt (post-processing UNet3D on FDK Hann)"]
    assert got["trained_steps"] == 3 and got["post"]["patch"] == 8
    norm = IntensityNormalization("percentile", percentile=99.5, value=1.0)
    vals = [held_out_volume(str(files[n]), 12, 1, norm) for n in ("val_a", "val_b")]
    physics = ConeBeamCT(standard_cone_beam(12, 6), normalize=True)
    with torch.no_grad():
        expected = [scores(post.eval().net(physics.A_dagger(y, window="hann")), x, 12)["psnr_whole"]
                    for x, y in zip(vals, peers.noisy(physics, vals, 0.02, peers.VAL_SEED))]
    assert [v["psnr_whole"] for v in got["per_volume"]] == pytest.approx(expected, abs=1e-9)
