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


def peers_result(path: Path, same_problem: bool) -> Path:
    """A `quality_peers.py` result: two held-out volumes at 30 and 50 views, FDK (Hann) at 30 and 32 dB."""
    def method(mean: float, **extra) -> dict:
        return {"mean_psnr_whole": mean, "mean_ssim_whole": 0.8, "cpu_seconds": 2.0,
                "per_volume": [{"psnr_whole": mean - 1.0}, {"psnr_whole": mean + 1.0}], **extra}
    views = {str(v): {"methods": {"FDK (Hann)": method(31.0),
                                  "TV (PGD)": method(32.5, **{"lambda": 0.003, "iterations": 50}),
                                  "MBIR (mbirjax, validation-tuned)": method(34.0, snr_db=20.04, sharpness=-0.5)},
                      "projector_match": {"relative_difference": 0.0061}} for v in (30, 50)}
    ref = {"same_problem": same_problem, "post-processing UNet3D (quoted)": method(33.0)}
    path.write_text(json.dumps({"config": {"size": 48, "noise": 0.02}, "views": views, "reference": ref,
                                "data": {"test": ["colin27.npy", "dipy.npy"], "val": ["mni152.npy", "inia19.npy"]}}))
    return path


def test_the_peers_table_gives_each_method_its_gain_parameters_and_cpu_time(report, tmp_path):
    text = report.quality_peers_table(peers_result(tmp_path / "p.json", same_problem=True))
    assert "parameters chosen on mni152, inia19" in text and "held-out real volumes (colin27, dipy" in text
    assert "| 30 | MBIR (mbirjax, validation-tuned) | 34.00 | +3.00 | +3.00 / +3.00 | 0.800 | 2.0 | snr_db 20.0, sharpness -0.5 |" in text
    assert "| 50 | TV (PGD) | 32.50 | +1.50 | +1.50 / +1.50 | 0.800 | 2.0 | lambda 0.003, 50 iterations |" in text
    assert "0.61 % relative difference" in text
    # the post-processing baseline is quoted from the reference run at its view count only
    assert [r.split(" | ")[0] for r in text.splitlines() if "(quoted)" in r] == ["| 30"]
    other = report.quality_peers_table(peers_result(tmp_path / "q.json", same_problem=False))
    assert "(quoted)" not in other  # another problem: nothing quoted
    assert report.quality_peers_table(tmp_path / "missing.json") == ""
