"""bench/experiments/report.py's table of every scored heads_ct training run (issue 17), on made-up result files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def report():
    from unrolled3d.bench.experiments import report  # bench/ ships as unrolled3d.bench

    return report


def scored(path: Path, weights: str, psnr: float, post_weights: str, post_psnr: float, views: int = 30) -> Path:
    """A `quality_real.py --skip-trained --shipped` result: two held-out volumes, FDK at 30 and 31 dB."""
    def method(mean: float) -> dict:
        return {"mean_psnr_whole": mean, "mean_ssim_whole": 0.9,
                "per_volume": [{"psnr_whole": mean - 0.5}, {"psnr_whole": mean + 0.5}]}
    shipped = {"weights": weights, "steps": 100, "size": 48, "views": views, "noise": 0.02, "patch": 24,
               "methods": {"FDK (Hann)": method(30.5), "shipped model.pt (partitioned)": method(psnr),
                           "post-processing UNet3D": method(post_psnr)},
               "post_processing": {"weights": post_weights, "steps": 150, "parameters": 1234,
                                   "label": "post-processing UNet3D"}}
    path.write_text(json.dumps({"data": {"test": ["a/colin.npy", "a/dipy.npy"]}, "shipped": shipped}))
    return path


def test_every_run_is_one_row_and_a_model_scored_twice_counts_once(report, tmp_path):
    files = [scored(tmp_path / "q.json", "w/heads.pt", 35.0, "runs/p1/post.pt", 33.0),
             scored(tmp_path / "q_wide.json", "w/heads.pt", 35.0, "runs/p2/post.pt", 32.75),
             scored(tmp_path / "q_new.json", "runs/new/model.pt", 36.25, "runs/p3/post.pt", 33.5)]
    rows = [r for r in report.heads_ct_runs_table(files).splitlines() if r.startswith("| ")]
    assert len(rows) == 1 + 1 + 5  # header, FDK once, 2 + 1 (heads.pt once) + 2 rows
    assert sum("w/heads.pt" in r for r in rows) == 1
    new = next(r for r in rows if "runs/new/model.pt" in r)
    # gains over FDK (Hann): 36.25 - 30.5 on the mean, and on each volume
    assert "| 36.25 | +5.75 | +5.75 / +5.75 | 0.900 |" in new and "partitioned unrolled" in new
    assert "150 steps, 1,234 weights" in next(r for r in rows if "runs/p3/post.pt" in r)
    assert "held out: colin, dipy" in report.heads_ct_runs_table(files)
    # a fine-tuned model's steps are said to follow its start's
    q = json.loads(files[2].read_text())
    q["shipped"]["init"] = {"path": "/x/heads.pt", "sha256": "0123456789abcdef" * 4}
    files[2].write_text(json.dumps(q))
    assert "| 100 steps, fine-tuned from `heads.pt` (01234567) |" in report.heads_ct_runs_table(files)


def test_runs_of_another_problem_are_refused_and_one_run_makes_no_table(report, tmp_path):
    a = scored(tmp_path / "q.json", "w/heads.pt", 35.0, "runs/p1/post.pt", 33.0)
    b = scored(tmp_path / "q_50.json", "w/heads.pt", 35.0, "runs/p1/post.pt", 33.0, views=50)
    with pytest.raises(ValueError, match="q_50.json scores another problem than q.json"):
        report.heads_ct_runs_table([a, b])
    assert report.heads_ct_runs_table([a, tmp_path / "missing.json"]) == ""
