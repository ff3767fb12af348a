"""One noise convention (issue 30): a noise level is the std on the normalised measurements
``A x / ||A||``, in ``simulate --noise`` as in ``[train] noise_std``; ``--noise-relative`` keeps
the former meaning. The noise actually drawn is measured against the noiseless projection.

And a model file written by ``train`` records its training scale and ``||A||``."""
from __future__ import annotations

import math

import pytest
import torch

from unrolled3d.cli import main
from unrolled3d.io import load_measurements, load_model
from unrolled3d.models.scale import TrainingScale
from unrolled3d.ops import cone_project
from unrolled3d.physics.noise import NOISE_CONVENTION, raw_noise_std, relative_to_noise_std
from unrolled3d.physics.norm import cached_operator_norm, norm_from_record
from unrolled3d.training import RunConfig


def _drawn(path):
    """``(std of the noise drawn, largest noiseless line integral, ||A||, meta)`` of a simulated file."""
    y, g, x, meta = load_measurements(path)
    clean = cone_project(x, g)
    return float((y - clean).std()), float(clean.max()), cached_operator_norm(g, progress=False), meta


def test_simulate_noise_is_the_std_on_normalised_measurements(tmp_path):
    assert main(["simulate", "--size", "16", "--views", "10", "--noise", "0.02", "--out", str(tmp_path / "a.pt"),
                 "--quiet"]) == 0
    std, _, norm, meta = _drawn(tmp_path / "a.pt")
    # 10 x 20 x 24 = 4800 draws: the sample std is within 1.5 % of the true one at 3 sigma
    assert std / norm == pytest.approx(0.02, rel=0.03)
    assert meta["noise_std"] == pytest.approx(0.02, rel=1e-12) and meta["noise_convention"] == NOISE_CONVENTION
    assert meta["noise_std"] * norm == pytest.approx(raw_noise_std(0.02, norm))


def test_noise_relative_keeps_the_former_meaning_and_converts(tmp_path):
    assert main(["simulate", "--size", "16", "--views", "10", "--noise-relative", "0.02",
                 "--out", str(tmp_path / "r.pt"), "--quiet"]) == 0
    std, y_max, norm, meta = _drawn(tmp_path / "r.pt")
    assert std / y_max == pytest.approx(0.02, rel=0.03)
    assert meta["noise_relative"] == pytest.approx(0.02, rel=1e-6)
    assert meta["noise_std"] == pytest.approx(relative_to_noise_std(0.02, y_max, norm), rel=1e-5)
    assert main(["simulate", "--size", "8", "--views", "4", "--noise", "0.02", "--noise-relative", "0.02",
                 "--out", str(tmp_path / "both.pt")]) == 2
    assert not (tmp_path / "both.pt").exists()


def test_no_noise_needs_no_norm(tmp_path):
    assert main(["simulate", "--size", "8", "--views", "4", "--noise", "0", "--out", str(tmp_path / "z.pt"),
                 "--quiet"]) == 0
    y, g, x, meta = load_measurements(tmp_path / "z.pt")
    assert torch.equal(y, cone_project(x, g)) and meta["noise_relative"] == 0.0


def test_a_trained_model_file_records_its_training_scale_and_norm(tmp_path):
    (tmp_path / "c.toml").write_text("[geometry]\nsize = 12\nviews = 6\n[model]\nn_iter = 1\nbase = 2\ndepth = 1\n"
                                     "[partition]\npatch = 6\n[train]\nsteps = 1\nnoise_std = 0.03\n")
    assert main(["train", str(tmp_path / "c.toml"), "--out-dir", str(tmp_path / "run"), "--quiet"]) == 0
    _, config = load_model(tmp_path / "run" / "model.pt")
    scale = TrainingScale.from_dict(config["training_scale"])
    assert scale.noise_std == 0.03 and scale.samples == 16 and scale.percentile == 99.5
    assert scale.fdk_range[0] <= scale.fdk <= scale.fdk_range[1] and math.isfinite(scale.measurements)
    run = RunConfig.from_dict(config, records=True)  # the records do not disturb the configuration
    from unrolled3d.physics import standard_cone_beam

    g = standard_cone_beam(run.geometry.size, run.geometry.views)
    assert norm_from_record(config["operator_norm"], g) == pytest.approx(cached_operator_norm(g, progress=False))
