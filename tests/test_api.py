"""The high-level API (issue 30): ``load_pretrained`` and ``reconstruct`` apply the model's rules.

Each rule is checked against the same computation written out by hand with the building blocks
(``build_model``, ``ConeBeamCT(normalize=True)``, ``normalize_measurements``, the reconstructor),
or against an invariance it implies (a percentile model is scale-equivariant; the streamed path
equals the in-memory one); the scale check on scans of another scale; bad inputs.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

import unrolled3d
from unrolled3d.api import ERROR_FACTOR, WARN_FACTOR, ScaleMismatchWarning, check_measurement_scale, reconstruct_detailed
from unrolled3d.data import PhantomDataset
from unrolled3d.errors import FileFormatError
from unrolled3d.io import load_model, save_model
from unrolled3d.models import build_model
from unrolled3d.models.scale import TrainingScale, measure_training_scale
from unrolled3d.normal import DiagCirculantNormal, fit_normal, save_normal
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.pretrained import check_modality
from unrolled3d.physics import ConeBeamCT, fdk, standard_cone_beam

S, VIEWS = 16, 8


@pytest.fixture(scope="module")
def scan():
    """A held-out phantom, its geometry and raw line integrals ``[1, 1, V, R, C]``."""
    g = standard_cone_beam(S, VIEWS)
    x = PhantomDataset(1, S, seed=5)[0][None]
    return g, x, ConeBeamCT(g, progress=False).A(x)


def _config(normalization=None):
    cfg = {"geometry": {"size": S, "views": VIEWS}, "phantoms": {"kind": "ellipsoids", "seed": 0},
           "model": {"n_iter": 2, "base": 2, "depth": 1, "shared": True}, "partition": {"patch": 8},
           "train": {"noise_std": 0.02}}
    if normalization is not None:
        cfg["normalization"] = normalization
    return cfg


def _model_file(path, cfg, scale=True):
    torch.manual_seed(0)
    rec = build_model(cfg, (S, S, S))
    if scale:  # what `unrolled3d train` records: the training scans' scale
        physics = ConeBeamCT(standard_cone_beam(S, VIEWS), normalize=True, progress=False)
        cfg = {**cfg, "training_scale": measure_training_scale(PhantomDataset(8, S), physics, 0.02, samples=4).to_dict()}
    save_model(path, rec, cfg)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny attenuation model (random weights) recording its training scale."""
    return _model_file(tmp_path_factory.mktemp("api") / "m.pt", _config())


def by_hand(path, y_raw, g, patch, n_sweeps, normal=None, amp=None, overlap=0.25):
    """The rules written out with the building blocks (the README's former partitioned example, fixed);
    the network in bfloat16 where it is native (``amp=None``, the default precision ``"auto"``);
    patches sharing a quarter of their edge (the patched default) unless ``overlap`` is given."""
    from unrolled3d.budget import bf16_is_native

    state, cfg = load_model(path)
    rec = build_model(cfg, g.vol_shape, patch=patch)
    rec.load_state_dict(state)
    stride = patch - round(overlap * patch)
    rec = type(rec)(rec.eval().base, rec.img_shape, patch, stride, n_sweeps=n_sweeps)
    rec.base.amp = bf16_is_native("cpu") if amp is None else amp
    physics = ConeBeamCT(g, normalize=True, progress=False)
    with torch.no_grad():
        return rec(physics.normalize_measurements(y_raw), physics, normal=normal)


# ---------------------------------------------------------------------------------- load_pretrained
@pytest.mark.parametrize("name, size, patch", [("heads_ct", 96, 48), ("demo_ct", 48, 24)])
def test_load_pretrained_reads_the_recipe_normalisation_patch_and_training_scale(name, size, patch):
    model = unrolled3d.load_pretrained(name)
    _, config = load_model(model.path)
    assert model.name == name and model.path.name == f"{name}.pt"
    assert model.scan == {"size": size, "views": 30, "noise_std": 0.02} == {
        "size": config["geometry"]["size"], "views": config["geometry"]["views"],
        "noise_std": config["train"]["noise_std"]}
    assert model.patch == config["partition"]["patch"] == patch and model.normalization.kind == "attenuation"
    assert model.training_geometry == standard_cone_beam(size, 30)
    table = json.loads(unrolled3d.pretrained.TRAINING_SCALES_FILE.read_text())
    # recorded in the file by `unrolled3d train`, else (files written before that) measured into the table
    recorded = config.get("training_scale") or table[model.sha256]["training_scale"]
    assert model.training_scale == TrainingScale.from_dict(recorded)
    assert not model.base.training and next(model.base.parameters()).device.type == "cpu"
    assert callable(model)


def test_load_pretrained_takes_a_path_and_refuses_what_is_not_a_model(model_file, tmp_path):
    model = unrolled3d.load_pretrained(model_file)
    assert model.name is None and model.patch == 8 and model.training_scale.samples == 4
    assert unrolled3d.load_pretrained(str(model_file)).sha256 == model.sha256
    with pytest.raises(FileNotFoundError, match="demo_ct, heads_ct"):
        unrolled3d.load_pretrained("heads_mri")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(FileFormatError, match="junk.pt"):
        unrolled3d.load_pretrained(tmp_path / "junk.pt")
    with pytest.raises(TypeError, match="name_or_path"):
        unrolled3d.load_pretrained(3)


def test_an_mri_model_is_refused_by_the_ct_api_with_the_way_to_run_it(tmp_path):
    """The shipped MRI model loaded as a CT model and failed deep inside ("UNet3D expects 2 input
    channels, got 1"); it is refused at once, naming the file and the command that runs it."""
    mri = Path(unrolled3d.__file__).parent / "weights" / "mri_heads.pt"
    with pytest.raises(FileFormatError, match=r"mri_heads\.pt.*is an MRI model.*--method unrolled"):
        unrolled3d.load_pretrained(mri)
    g = standard_cone_beam(16, 8)
    with pytest.raises(FileFormatError, match="is an MRI model"):
        unrolled3d.reconstruct(torch.zeros(g.sino_shape), g, model=str(mri), progress=False)
    with pytest.raises(ValueError, match=r"expected must be one of 'mri', 'ct', got 'pet'"):
        check_modality({}, mri, "pet")


def test_a_phantom_model_without_a_recorded_scale_gets_it_from_its_recipe(tmp_path, model_file):
    """Old model files keep working: one trained on phantoms has its training scans made again."""
    old = unrolled3d.load_pretrained(_model_file(tmp_path / "old.pt", _config(), scale=False))
    scale = old.training_scale
    physics = ConeBeamCT(standard_cone_beam(S, VIEWS), normalize=True, progress=False)
    assert scale == measure_training_scale(PhantomDataset(100_000, S, seed=0), physics, 0.02)
    cfg = _config()
    cfg.pop("phantoms")  # nothing to make them from: the check is skipped, said so
    unknown = unrolled3d.load_pretrained(_model_file(tmp_path / "unknown.pt", cfg, scale=False))
    assert unknown.training_scale is None


@pytest.mark.slow
def test_the_shipped_demo_scale_is_what_its_recipe_gives():
    """training_scales.json's demo_ct entry is the measurement of its recipe's phantoms."""
    model = unrolled3d.load_pretrained("demo_ct")
    from unrolled3d.pretrained import _scale_from_phantom_recipe

    again = _scale_from_phantom_recipe(model)
    recorded = model.training_scale
    assert again.samples == recorded.samples == 16
    for key in ("fdk", "volume", "measurements"):
        assert getattr(again, key) == pytest.approx(getattr(recorded, key), rel=1e-5), key


# ---------------------------------------------------------------------------------- reconstruct: the rules
def test_unrolled_equals_the_rules_written_out(scan, model_file):
    g, _, y = scan
    got = unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, n_sweeps=2, progress=False)
    torch.testing.assert_close(got, by_hand(model_file, y, g, 8, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options, amp", [({"precision": "float32"}, False), ({"precision": "bfloat16"}, True),
                                          ({"amp": False}, False), ({"amp": True, "precision": "auto"}, True)])
def test_the_network_precision_is_the_one_asked_for(scan, model_file, options, amp):
    """``precision`` (the CLI's ``--precision``) or ``amp``: the network in float32 or bfloat16, as by hand."""
    g, _, y = scan
    got = unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, n_sweeps=2, progress=False, **options)
    torch.testing.assert_close(got, by_hand(model_file, y, g, 8, 2, amp=amp), rtol=1e-5, atol=1e-6)
    res = reconstruct_detailed(y, g, model=model_file, progress=False, memory_budget="4G", **options)
    assert res.plan["amp"] is amp


def test_bfloat16_changes_the_network_not_the_rules(scan, model_file):
    """The two precisions differ (the switch is not ignored), by bfloat16's rounding only."""
    g, _, y = scan
    a = unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, progress=False, precision="float32")
    b = unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, progress=False, precision="bfloat16")
    assert not torch.equal(a, b)
    # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4 %): a few steps through 2 unrolled iterations
    assert float((a - b).norm() / a.norm()) < 0.05


def test_the_default_plan_is_plan_inference_whole_volume_one_sweep(scan, model_file):
    """With no patch given the budget's plan runs: here the whole volume, one sweep, bfloat16 where native."""
    from unrolled3d.budget import bf16_is_native

    g, _, y = scan
    res = reconstruct_detailed(y, g, model=model_file, progress=False, memory_budget="4G")
    assert res.plan["whole_volume"] and res.plan["n_sweeps"] == 1 and res.plan["patch"] == [S, S, S]
    assert res.plan["amp"] == bf16_is_native("cpu")
    model = unrolled3d.load_pretrained(model_file)
    base = copy.copy(model.base)
    base.amp = res.plan["amp"]
    rec = PartitionedReconstructor(base, g.vol_shape, g.vol_shape, g.vol_shape, n_sweeps=1).eval()
    physics = ConeBeamCT(g, normalize=True, progress=False)
    with torch.no_grad():
        expected = rec(physics.normalize_measurements(y), physics)
    torch.testing.assert_close(res.volume, expected, rtol=1e-5, atol=1e-6)
    assert res.units == "input" and res.operator_norm == pytest.approx(float(physics.operator_norm))


def test_measurements_of_a_normalised_physics_give_the_same_volume(scan, model_file):
    g, _, y = scan
    physics = ConeBeamCT(g, normalize=True, progress=False)
    a = unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, progress=False)
    b = unrolled3d.reconstruct(physics.normalize_measurements(y), physics, model=model_file, patch_size=8,
                               progress=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # (n_views, rows, cols) in, (D, H, W) out; and deepinv's layout with an "astra" physics
    c = unrolled3d.reconstruct(y[0, 0].numpy(), g, model=model_file, patch_size=8, progress=False)
    assert c.shape == g.vol_shape
    torch.testing.assert_close(c, a[0, 0], rtol=1e-5, atol=1e-6)
    astra = ConeBeamCT(g, layout="astra")
    d = unrolled3d.reconstruct(y.transpose(2, 3), astra, model=model_file, patch_size=8, progress=False)
    torch.testing.assert_close(d, a, rtol=1e-5, atol=1e-6)


def test_h_mode_equals_the_rules_written_out(scan, model_file, tmp_path):
    g, _, y = scan
    physics = ConeBeamCT(g, normalize=True, progress=False)
    H = DiagCirculantNormal.for_physics(physics, g.vol_shape)
    fit_normal(H, physics, n_iter=3, progress=False)
    expected = by_hand(model_file, y, g, 8, 2, normal=H)
    got = unrolled3d.reconstruct(y, g, model=model_file, normal=H, patch_size=8, n_sweeps=2, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    save_normal(H, tmp_path / "h.pt")
    from_file = unrolled3d.reconstruct(y, g, model=model_file, normal=tmp_path / "h.pt", patch_size=8, n_sweeps=2,
                                       progress=False)
    torch.testing.assert_close(from_file, expected, rtol=1e-5, atol=1e-6)


def test_fdk_is_fdk_of_the_raw_line_integrals(scan):
    g, x, y = scan
    assert torch.equal(unrolled3d.reconstruct(y, g, progress=False), fdk(y, g))
    physics = ConeBeamCT(g, normalize=True, fdk_window="hann", progress=False)
    got = unrolled3d.reconstruct(physics.normalize_measurements(y), physics, progress=False)
    torch.testing.assert_close(got, fdk(y, g, window="hann"), rtol=1e-5, atol=1e-6)
    assert torch.equal(unrolled3d.reconstruct(y, g, fdk_window="hann", progress=False), fdk(y, g, window="hann"))


def test_a_percentile_model_is_scale_equivariant_and_a_hu_model_gives_hu(scan, tmp_path):
    """The percentile rule brings any scale to the training scale and back: reconstructing ``c y``
    gives ``c`` times the volume. A "hu" model's own units are HU."""
    g, _, y = scan
    pct = _model_file(tmp_path / "p.pt", _config({"kind": "percentile", "percentile": 99.0, "value": 1.0}))
    a = unrolled3d.reconstruct(y, g, model=pct, patch_size=8, progress=False)
    b = unrolled3d.reconstruct(250.0 * y, g, model=pct, patch_size=8, progress=False)
    torch.testing.assert_close(b, 250.0 * a, rtol=1e-4, atol=1e-4)
    hu = _model_file(tmp_path / "hu.pt", _config({"kind": "hu", "mu_water": 0.02}), scale=False)
    res = reconstruct_detailed(y, g, model=hu, patch_size=8, progress=False, output_units="model")
    plain = unrolled3d.reconstruct(y, g, model=hu, patch_size=8, progress=False)
    assert res.units == "HU"
    torch.testing.assert_close(res.volume, 1000 * (plain / 0.02 - 1), rtol=1e-5, atol=1e-3)


def test_streamed_equals_in_memory(scan, model_file, tmp_path):
    from unrolled3d.io.stores import ArrayStore

    g, _, y = scan
    expected = unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, progress=False)
    out = unrolled3d.reconstruct(ArrayStore(y[0, 0].numpy()), g, model=model_file, patch_size=8,
                                 out=tmp_path / "x.zarr", memory_budget="1G", progress=False)
    got = torch.from_numpy(out.read((0, 0, 0), g.vol_shape))
    torch.testing.assert_close(got, expected[0, 0], rtol=1e-4, atol=1e-5)
    fdk_out = unrolled3d.reconstruct(ArrayStore(y[0, 0].numpy()), g, out=tmp_path / "f.npy", progress=False)
    torch.testing.assert_close(torch.from_numpy(fdk_out.read((0, 0, 0), g.vol_shape)), fdk(y, g)[0, 0],
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- the scale check
def test_a_scan_of_another_scale_is_refused_warned_or_rescaled(scan, model_file):
    g, _, y = scan
    ok = check_measurement_scale(y, g, model_file)
    assert ok.status == "ok" and 1 / WARN_FACTOR < ok.ratio < WARN_FACTOR
    far = 2 * ERROR_FACTOR / ok.ratio  # 20 times the training scale
    with pytest.raises(ValueError, match=r"times the scale m.pt was trained on.*scale_check='rescale'"):
        unrolled3d.reconstruct(far * y, g, model=model_file, patch_size=8, progress=False)
    near = 1.5 * WARN_FACTOR / ok.ratio
    with pytest.warns(ScaleMismatchWarning, match="expect a poor reconstruction"):
        res = reconstruct_detailed(near * y, g, model=model_file, patch_size=8, progress=False)
    assert res.scale.status == "warned" and res.scale.ratio == pytest.approx(1.5 * WARN_FACTOR, rel=1e-4)
    with pytest.warns(ScaleMismatchWarning):
        assert check_measurement_scale(far * y, g, model_file, scale_check="warn").status == "warned"
    # rescaled: the model sees the training scale whatever the input's, and the output comes back
    with pytest.warns(ScaleMismatchWarning, match="rescaled"):
        r = reconstruct_detailed(far * y, g, model=model_file, patch_size=8, progress=False, scale_check="rescale")
    assert r.scale.factor == pytest.approx(1 / r.scale.ratio)
    with pytest.warns(ScaleMismatchWarning, match="rescaled"):
        r10 = unrolled3d.reconstruct(10 * far * y, g, model=model_file, patch_size=8, progress=False,
                                     scale_check="rescale")
    # the same input up to a float32 rounding, through the network: equal to rounding
    torch.testing.assert_close(r10, 10 * r.volume, rtol=1e-4, atol=1e-4 * float(r10.abs().max()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignored = reconstruct_detailed(far * y, g, model=model_file, patch_size=8, progress=False,
                                       scale_check="ignore")
    assert ignored.scale.status == "unchecked"


def test_the_former_readme_mistake_is_refused():
    """Raw line integrals handed over with a normalised physics are ||A|| times too large: 37.6
    times at the shipped models' scan (48^3, 30 views), where it gave -6.03 dB without a word."""
    g = standard_cone_beam(48, 30)
    physics = ConeBeamCT(g, normalize=True, progress=False)
    y_raw = ConeBeamCT(g, progress=False).A(PhantomDataset(1, 48, seed=11)[0][None])
    assert check_measurement_scale(physics.normalize_measurements(y_raw), physics, "demo_ct").status == "ok"
    with pytest.raises(ValueError, match="times the scale demo_ct was trained on"):
        unrolled3d.reconstruct(y_raw, physics, model="demo_ct", progress=False)
    report = check_measurement_scale(y_raw, physics, "demo_ct", scale_check="ignore")
    assert report.status == "unchecked"
    with pytest.warns(ScaleMismatchWarning):
        report = check_measurement_scale(y_raw, physics, "demo_ct", scale_check="warn")
    assert report.ratio > 0.9 * float(physics.operator_norm) * 0.9


# ---------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, error, match", [
    ({"y": "swap"}, ValueError, "y has shape"),
    ({"y": "other_scan"}, ValueError, r"y has shape \(1, 1, 9,"),
    ({"y": "nan"}, ValueError, "y"),
    ({"y": "text"}, ValueError, "measurements store"),
    ({"y": "list"}, TypeError, "y must be"),
    ({"geometry_or_physics": {"n_views": 8}}, TypeError, "geometry_or_physics"),
    ({"geometry_or_physics": None}, TypeError, "geometry_or_physics"),
    ({"method": "sirt"}, ValueError, "method"),
    ({"model": None, "method": "unrolled"}, ValueError, "needs a model"),
    ({"model": "heads_mri"}, FileNotFoundError, "shipped model"),
    ({"model": 3}, TypeError, "model must be"),
    ({"method": "fdk", "normal": "h.pt"}, ValueError, "apply to method='unrolled'"),
    ({"patch_size": 64}, ValueError, "larger than the volume"),
    ({"patch_size": 8, "memory_budget": "1G"}, ValueError, "not both"),
    ({"memory_budget": "lots"}, ValueError, "memory budget must look like"),
    ({"scale_check": "maybe"}, ValueError, "scale_check"),
    ({"precision": "float16"}, ValueError, "precision"),
    ({"precision": "float32", "amp": True}, ValueError, "disagree"),
    ({"model": None, "method": "fdk", "precision": "bfloat16"}, ValueError, r"^precision/amp apply to method='unrolled'"),
    ({"frobnicate": 1}, TypeError, "unexpected options"),
    ({"out": "x.zarr"}, ValueError, "streamed"),
])
def test_bad_inputs_are_refused_naming_the_argument(scan, model_file, tmp_path, kwargs, error, match):
    g, _, y = scan
    args = {"y": y, "geometry_or_physics": g, "model": model_file, "progress": False}
    special = {"swap": y.transpose(2, 3), "other_scan": ConeBeamCT(standard_cone_beam(S, 9)).A(torch.ones(1, 1, S, S, S)),
               "nan": y * float("nan"), "text": str(tmp_path / "m.pt"), "list": [1, 2]}
    args.update({k: special.get(v, v) if isinstance(v, str) and k == "y" else v for k, v in kwargs.items()})
    with pytest.raises(error, match=match):
        unrolled3d.reconstruct(**args)


def test_an_approximation_of_another_volume_is_refused(scan, model_file, tmp_path):
    g, _, y = scan
    H = DiagCirculantNormal((8, 8, 8))
    with pytest.raises(ValueError, match=r"normal is for a \(8, 8, 8\) volume"):
        unrolled3d.reconstruct(y, g, model=model_file, normal=H, progress=False)
    fit_normal(H, ConeBeamCT(standard_cone_beam(8, 4), normalize=True, progress=False), n_iter=1, progress=False)
    save_normal(H, tmp_path / "h8.pt")  # fitted for another scan: refused, naming the file
    with pytest.raises((ValueError, FileFormatError), match="h8.pt"):
        unrolled3d.reconstruct(y, g, model=model_file, normal=tmp_path / "h8.pt", progress=False)


# ---------------------------------------------------------------------------------- progress
def test_progress_on_stderr_and_none_when_off(scan, model_file, capfd):
    g, _, y = scan
    unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, progress=False)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    unrolled3d.reconstruct(y, g, model=model_file, patch_size=8, progress=True)
    captured = capfd.readouterr()
    assert "partitioned unrolled reconstruction" in captured.err and "sweep" in captured.err and captured.out == ""
