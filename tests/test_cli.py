"""The command line, end to end on tiny sizes, and its failures (non-zero exit, one-line reason)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from unrolled3d.budget import parse_bytes
import torch

from unrolled3d.cli import main
from unrolled3d.cli.demo import DEFAULT_WEIGHTS as DEMO_WEIGHTS
from unrolled3d.io import load_measurements, load_model
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.physics import ConeBeamCT
from unrolled3d.io import read_volume, write_volume
from unrolled3d.data.walnut import read_walnut

from test_walnut import make_scan  # the tiny synthetic Walnut scan (tests/ is on sys.path under pytest)


def run(*argv) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "unrolled3d.cli", *argv], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert main(["simulate", "--size", "20", "--views", "10", "--out", str(d / "m.pt"), "--quiet"]) == 0
    (d / "c.toml").write_text("[geometry]\nsize = 20\nviews = 10\n[model]\nn_iter = 2\nbase = 4\n"
                              "[partition]\npatch = 10\n[train]\nsteps = 2\ncheckpoint_every = 1\n")
    assert main(["train", str(d / "c.toml"), "--out-dir", str(d / "run"), "--quiet"]) == 0
    write_volume(d / "phantom.h5", torch.rand(6, 7, 8, generator=torch.Generator().manual_seed(0)), (0.8, 1.0, 0.9))
    make_scan(d / "Walnut1" / "Projections" / "tubeV2")
    bad = d / "bad_walnut"
    make_scan(bad)
    (bad / "scan_geom_corrected.geom").write_text("\n".join(" ".join(["1"] * 12) for _ in range(3)) + "\n")
    return d


def test_simulate_writes_measurements_with_geometry(workdir):
    y, g, x, meta = load_measurements(workdir / "m.pt")
    assert y.shape == (1, 1, *g.sino_shape) and x.shape == (1, 1, 20, 20, 20) and meta["phantom"] == "shepp-logan"


def test_reconstruct_fdk_json(workdir, capsys):
    assert main(["reconstruct", str(workdir / "m.pt"), "--out", str(workdir / "fdk.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["psnr"] > 15 and np.load(workdir / "fdk.npy").shape == (20, 20, 20)
    assert json.loads((workdir / "fdk.json").read_text())["voxel_size_zyx_mm"] == [1.0, 1.0, 1.0]


def test_reconstruct_output_format_follows_the_extension(workdir, capsys):
    ref = workdir / "ref.npy"
    assert main(["reconstruct", str(workdir / "m.pt"), "--output", str(ref), "--quiet"]) == 0
    expected, _ = read_volume(ref)
    for ext in (".nii.gz", ".nii", ".h5", ".hdf5", ".tif", ".tiff", ".pt"):
        out = workdir / f"fdk{ext}"
        assert main(["reconstruct", str(workdir / "m.pt"), "--output", str(out), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["out"] == str(out)
        vol, vs = read_volume(out)
        assert vol.shape == (20, 20, 20) and torch.equal(vol, expected) and vs == (1.0, 1.0, 1.0)


def test_simulate_from_a_volume_file_keeps_shape_and_voxel_size(workdir):
    out = workdir / "from_volume.pt"
    assert main(["simulate", "--volume", str(workdir / "phantom.h5"), "--views", "8", "--noise", "0",
                 "--output", str(out), "--quiet"]) == 0
    y, g, x, meta = load_measurements(out)
    vol, vs = read_volume(workdir / "phantom.h5")
    assert g.vol_shape == (6, 7, 8) and g.voxel_size == (0.8, 1.0, 0.9) and torch.equal(x[0, 0], vol)
    assert meta["volume"] == str(workdir / "phantom.h5") and y.shape == (1, 1, *g.sino_shape)
    # the detector sees the whole volume: its border pixels stay dark, the centre does not
    border = torch.cat([y[..., 0, :].flatten(), y[..., -1, :].flatten(), y[..., :, 0].flatten(), y[..., :, -1].flatten()])
    assert float(border.abs().max()) == 0.0 and float(y.max()) > 1.0


def test_import_walnut_writes_measurements_that_reconstruct(workdir, capsys):
    folder = workdir / "Walnut1" / "Projections" / "tubeV2"
    out = workdir / "walnut.pt"
    assert main(["import-walnut", str(folder), "--output", str(out), "--view-step", "2", "--vol-shape", "8", "8", "8",
                 "--voxel-size", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sino_shape"] == [1, 1, 6, 16, 20] and res["vol_shape"] == [8, 8, 8]
    y, g, x, meta = load_measurements(out)
    y_ref, g_ref = read_walnut(folder, vol_shape=(8, 8, 8), voxel_size=1.0, view_step=2)
    assert torch.equal(y, y_ref) and g == g_ref and x is None
    assert meta["source"] == "walnut" and meta["view_step"] == 2
    assert main(["reconstruct", str(out), "--output", str(workdir / "walnut_fdk.nii.gz"), "--quiet"]) == 0
    vol, vs = read_volume(workdir / "walnut_fdk.nii.gz")
    assert vol.shape == (8, 8, 8) and torch.isfinite(vol).all() and vs == (1.0, 1.0, 1.0)


def test_train_writes_a_loadable_model_with_its_command_and_resumes(workdir, capsys):
    state, config = load_model(workdir / "run" / "model.pt")
    assert config["command"].startswith("unrolled3d train") and any(k.startswith("base.") for k in state)
    assert main(["train", str(workdir / "c.toml"), "--out-dir", str(workdir / "run"), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_train_fine_tunes_from_the_model_file_that_model_init_names(workdir):
    # With a learning rate of 1e-30 Adam moves no weight by more than ~1e-30: the run's model is
    # its starting point. From run/model.pt (2 steps at lr 1e-3) that is run/model.pt; without
    # init it is the seed's random weights, which differ from run/model.pt by the 2 steps (~1e-3).
    cfg = ("[geometry]\nsize = 20\nviews = 10\n[model]\nn_iter = 2\nbase = 4\n{init}"
           "[partition]\npatch = 10\n[train]\nsteps = 1\nlr = 1e-30\n")
    start, _ = load_model(workdir / "run" / "model.pt")
    for name, init in (("ft", 'init = "run/model.pt"\n'), ("fresh", "")):
        (workdir / f"{name}.toml").write_text(cfg.format(init=init))
        assert main(["train", str(workdir / f"{name}.toml"), "--out-dir", str(workdir / name), "--quiet"]) == 0
    tuned, config = load_model(workdir / "ft" / "model.pt")
    fresh, fresh_config = load_model(workdir / "fresh" / "model.pt")
    assert _max_difference(tuned, start) < 1e-20
    assert _max_difference(fresh, start) > 1e-5
    # the model file records where it started, by path and content
    assert config["model"]["init"] == "run/model.pt" and "init" not in fresh_config
    assert config["init"] == {"path": str((workdir / "run" / "model.pt").resolve()),
                              "sha256": hashlib.sha256((workdir / "run" / "model.pt").read_bytes()).hexdigest()}


@pytest.mark.parametrize("model, message", [
    ('base = 6\ninit = "run/model.pt"', "another architecture (base 4 there, 6 here)"),
    ('base = 4\nshared = false\ninit = "run/model.pt"', "shared True there, False here"),
    ('base = 4\ninit = "nowhere/model.pt"', "no model file at"),
    ('base = 4\ninit = "m.pt"', "not an unrolled3d model file"),
])
def test_a_model_init_that_cannot_start_the_run_is_refused_before_the_folder_is_made(workdir, capsys, model,
                                                                                     message):
    (workdir / "bad_init.toml").write_text(f"[geometry]\nsize = 20\nviews = 10\n[model]\nn_iter = 2\n{model}\n"
                                           "[partition]\npatch = 10\n[train]\nsteps = 1\n")
    assert main(["train", str(workdir / "bad_init.toml"), "--out-dir", str(workdir / "bad_init")]) != 0
    assert message in capsys.readouterr().err
    assert not (workdir / "bad_init").exists()


def test_reconstruct_unrolled_and_with_normal_operator(workdir, capsys):
    assert main(["fit-normal", str(workdir / "m.pt"), "--iters", "2", "--out", str(workdir / "h.pt"), "--quiet"]) == 0
    assert main(["fit-normal", str(workdir / "m.pt"), "--iters", "2", "--kernel-radius", "4",
                 "--out", str(workdir / "h4.pt"), "--quiet"]) == 0
    # the operator file carries its kernel radius: reconstruct rebuilds the wrapper from it
    assert DiagCirculantWrapper.from_file(workdir / "h4.pt", ConeBeamCT(load_measurements(workdir / "m.pt")[1])
                                          ).kernel_radius == (4, 4, 4)
    for extra in ([], ["--normal", str(workdir / "h.pt")], ["--normal", str(workdir / "h4.pt")]):
        assert main(["reconstruct", str(workdir / "m.pt"), "--method", "unrolled", "--weights",
                     str(workdir / "run" / "model.pt"), "--out", str(workdir / "u.pt"), "--json", *extra]) == 0
        assert np.isfinite(json.loads(capsys.readouterr().out)["psnr"])
        assert torch.load(workdir / "u.pt", weights_only=True)["volume"].shape == (20, 20, 20)


def test_reconstruct_with_a_memory_budget_picks_a_patch_that_fits(workdir, capsys):
    picks = {}
    for budget in ("40M", "4G"):
        assert main(["reconstruct", str(workdir / "m.pt"), "--method", "unrolled", "--weights",
                     str(workdir / "run" / "model.pt"), "--memory-budget", budget, "--out", str(workdir / "b.npy"),
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert np.isfinite(out["psnr"]) and out["predicted_peak_mib"] <= parse_bytes(budget) / 2**20
        picks[budget] = out["patch"]
    assert picks["4G"] == [20, 20, 20]  # everything fits: one patch, the whole volume
    assert picks["40M"][0] <= picks["4G"][0]


def test_demo_quick(tmp_path):
    code, out, err = run("demo", "--quick", "--out", str(tmp_path / "d.png"), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert (tmp_path / "d.png").stat().st_size > 10_000
    assert set(res["methods"]) == {"FDK", "partitioned unrolled"}
    for m in res["methods"].values():
        assert len(m["psnr"]) == 1 and np.isfinite(m["mean_psnr"]) and 0 < m["mean_ssim"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["reconstruct", "missing.pt", "--out", "x.npy"], "does not exist"),
    (["reconstruct", "{corrupt}", "--out", "x.npy"], "not a readable"),
    (["reconstruct", "{m}", "--device", "tpu", "--out", "x.npy"], "device"),
    (["reconstruct", "{m}", "--method", "unrolled", "--weights", "{model}", "--patch-size", "64", "--out", "x.npy"],
     "larger than the volume"),
    (["reconstruct", "{m}", "--method", "unrolled", "--out", "x.npy"], "needs --weights"),
    (["reconstruct", "{m}", "--method", "unrolled", "--weights", "{model}", "--memory-budget", "1k", "--out", "x.npy"],
     "too small"),
    (["reconstruct", "{m}", "--method", "unrolled", "--weights", "{model}", "--memory-budget", "lots",
      "--out", "x.npy"], "memory budget must look like"),
    (["reconstruct", "{m}", "--out", "x.xyz"], "supported endings are .npy"),
    (["simulate", "--volume", "missing.h5", "--out", "x.pt"], "does not exist"),
    (["simulate", "--volume", "{corrupt}", "--out", "x.pt"], "not a readable .pt volume"),
    (["simulate", "--volume", "{vol}", "--phantom", "ellipsoids", "--out", "x.pt"], "replaces --phantom"),
    (["simulate", "--volume", "{model}", "--out", "x.pt"], "expected a dict with a tensor 'volume'"),
    (["import-walnut", "nowhere", "--output", "x.pt"], "does not exist"),
    (["import-walnut", "{badwalnut}", "--output", "x.pt"], "3 rows but there are 13 projections"),
    (["import-walnut", "{walnut}", "--output", "x.pt", "--view-step", "0"], "view_step must be a positive"),
    (["import-walnut", "{walnut}", "--output", "x.pt", "--vol-shape", "8", "8", "0"], "vol_shape must be positive"),
    (["import-walnut", "{walnut}", "--output", "x.pt", "--vol-shape", "200", "200", "200",
      "--voxel-size", "1"], "bounding sphere"),
    (["train", "{badcfg}", "--out-dir", "r"], "unknown keys"),
    (["fit-normal", "{model}", "--out", "h.pt"], "not an unrolled3d measurements file"),
    (["fit-normal", "{m}", "--kernel-radius", "-2", "--out", "h.pt"], "kernel_radius must be >= 0"),
    (["reconstruct", "{m}", "--method", "unrolled", "--weights", "{model}", "--normal", "{model}",
      "--out", "x.pt"], "not a DiagCirculantWrapper file"),
    # a model file whose weights are not the network its configuration describes (demo: an internal error once)
    (["demo", "--weights", "{misfit}", "--quick", "--out", "d.png"], "the weights do not fit the model"),
    (["reconstruct", "{m}", "--method", "unrolled", "--weights", "{misfit}", "--out", "x.npy"],
     "the weights do not fit the model"),
])
def test_failures_exit_non_zero_with_a_reason(workdir, tmp_path, capsys, argv, message):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    (tmp_path / "bad.toml").write_text("[train]\nstepz = 3\n")
    misfit = torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True)
    misfit["config"] = json.dumps({**json.loads(misfit["config"]), "model": {"n_iter": 5, "base": 6, "depth": 2}})
    torch.save(misfit, tmp_path / "misfit.pt")
    subst = {"{misfit}": str(tmp_path / "misfit.pt"), "{corrupt}": str(tmp_path / "corrupt.pt"), "{m}": str(workdir / "m.pt"),
             "{model}": str(workdir / "run" / "model.pt"), "{badcfg}": str(tmp_path / "bad.toml"),
             "{vol}": str(workdir / "phantom.h5"), "{walnut}": str(workdir / "Walnut1" / "Projections" / "tubeV2"),
             "{badwalnut}": str(workdir / "bad_walnut")}
    argv = [subst.get(a, a) for a in argv]
    argv = [a if not a.endswith(("x.npy", "x.xyz", "x.pt", "d.png")) else str(tmp_path / a) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0 and message in err, (code, err)
    assert len([line for line in err.splitlines() if line.startswith("unrolled3d")]) == 1


def test_every_command_has_help(capsys):
    for cmd in ["demo", "simulate", "fit-normal", "train", "reconstruct", "import-walnut", "info"]:
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0 and "usage" in capsys.readouterr().out


def test_console_script_runs_as_a_process():
    code, out, _ = run("info", "--json")
    assert code == 0 and json.loads(out)["cpp_cpu"] is True


def test_bench_runs_a_suite_and_writes_the_report(tmp_path, capsys):
    assert main(["bench", "--suite", "projector", "--select", "cpu_projector and forward and cpp and 64",
                 "--results", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = json.loads(Path(out["results"][0]).read_text())
    assert [b["name"] for b in data["benchmarks"]] == ["test_cpu_projector[forward-cpp-64]"]
    report = (tmp_path / "report.md").read_text()
    assert "### Projector, CPU" in report and "| forward | 64 | cpp |" in report


def test_bench_sizes_and_quick_come_from_the_command_line(tmp_path, capsys):
    assert main(["bench", "--suite", "projector", "fused", "--select", "cpu_projector and forward or twins_cpu",
                 "--sizes", "24", "--quick", "--results", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {b["name"] for f in out["results"] for b in json.loads(Path(f).read_text())["benchmarks"]}
    assert names == {"test_cpu_projector[forward-cpp-24]", "test_cpu_projector[forward-torch_twin-24]",
                     "test_bench_reference_twins_cpu_small[24]"}
    # --quick: pytest-benchmark's own rounds, cut to one round and 0.1 s unless asked for more
    options = [b["options"] for f in out["results"] for b in json.loads(Path(f).read_text())["benchmarks"]]
    assert all(o["min_rounds"] == 1 and o["max_time"] == 0.1 for o in options), options


def test_bench_reports_a_suite_without_selected_cases(tmp_path, capsys):
    assert main(["bench", "--suite", "compat", "--select", "no_such_case", "--results", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"] == [] and out["skipped"] == ["compat"]
    assert not (tmp_path / "compat_cpu.json").exists()
