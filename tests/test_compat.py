"""The deepinv drop-in: ``unrolled3d.physics.TomographyWithAstra`` and ``ConeBeamCT`` checked by
deepinv's own physics tests (imported from the deepinv wheel, not copied), by ASTRA's own
geometry code, and against ASTRA's CPU fan-beam projector."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import deepinv.tests.test_physics as deepinv_tests
from unrolled3d.physics import TomographyWithAstra, cone_beam_geometry_from_deepinv
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

astra = pytest.importorskip("astra")
from deepinv.physics.functional.astra import create_object_geometry, create_projection_geometry  # noqa: E402

OURS = ("unrolled3d_conebeam", "unrolled3d_astra_compat")
IMSIZE = (1, 10, 12, 14)  # (C, D, H, W) as deepinv's find_operator returns it
RADII = {"source_radius": 60.0, "detector_radius": 30.0}
DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _make(name: str, device) -> ConeBeamCT:
    if name == "unrolled3d_conebeam":
        g = ConeBeamGeometry.circular(16, 60.0, 30.0, (16, 22), 1.5, IMSIZE[1:])
        return ConeBeamCT(g, device=device)
    return TomographyWithAstra(img_size=IMSIZE[1:], angles=16, n_detector_pixels=(16, 22), angular_range=(0, 360),
                               detector_spacing=(1.5, 1.5), geometry_type="conebeam", geometry_parameters=RADII,
                               normalize=False, device=device)


@pytest.fixture
def suite(monkeypatch, tmp_path):
    """deepinv's test module, its ``find_operator`` also serving our two operators."""
    original = deepinv_tests.find_operator

    def find_operator(name, device, imsize=None, get_physics_param=False):
        if name not in OURS:
            return original(name, device, imsize=imsize, get_physics_param=get_physics_param)
        found = (_make(name, device), IMSIZE, 1, torch.float)
        return found + ([],) if get_physics_param else found

    monkeypatch.setattr(deepinv_tests, "find_operator", find_operator)
    monkeypatch.chdir(tmp_path)  # test_physics_state_dict writes ./cache_test_physics
    return deepinv_tests


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("name", OURS)
def test_deepinv_generic_physics_tests(suite, name, device):
    rng = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731  (deepinv's rng fixture)
    suite.test_operators_adjointness(name, device, rng())
    for implicit in (True, False):
        suite.test_pseudo_inverse(name, device, rng(), implicit)
    suite.test_concatenation(name, device)
    suite.test_operators_differentiability(name, device)
    suite.test_physics_state_dict(name, device)
    suite.test_operator_cropper(name, device, rng())


def test_the_suite_sees_our_operators(suite):
    # guard against a vacuous pass: the substituted find_operator must hand the tests our classes
    assert type(suite.find_operator(OURS[0], "cpu")[0]) is ConeBeamCT
    assert type(suite.find_operator(OURS[1], "cpu")[0]) is TomographyWithAstra
    assert suite.find_operator("denoising", "cpu")[0].__class__.__name__ == "Denoising"


# ------------------------------------------------------------------ ASTRA's conventions, from ASTRA
ANGLES = torch.tensor([0.0, 17.5, 90.0, 133.0, 250.0, 301.25], dtype=torch.float64)


@pytest.mark.parametrize("det_spacing", [(1.0, 1.0), (0.8, 1.3)])
def test_vectors_equal_astra_geom_2vec_of_deepinvs_projection_geometry(det_spacing):
    radii = {"source_radius": 150.0, "detector_radius": 70.0}
    ours = TomographyWithAstra(img_size=(8, 10, 12), angles=ANGLES, n_detector_pixels=(9, 15),
                               detector_spacing=det_spacing, geometry_type="conebeam", geometry_parameters=radii,
                               normalize=False, device="cpu")
    pg = create_projection_geometry("conebeam", det_spacing, (9, 15), ANGLES, is_2d=False, geometry_parameters=radii)
    np.testing.assert_allclose(ours.geometry.vectors, astra.geom_2vec(pg)["Vectors"], rtol=0, atol=1e-12)
    assert ours.measurement_shape == (9, len(ANGLES), 15)  # deepinv's (rows, angles, cols)
    torch.testing.assert_close(ours.angles, ANGLES)
    # the ASTRA dicts themselves give the same operator
    og = create_object_geometry(10, 12, 8, is_2d=False, pixel_spacing=1.0)
    twin = TomographyWithAstra.from_astra_geometry(og, pg, normalize=False, device="cpu")
    assert twin.geometry == ours.geometry


def test_volume_mapping_matches_astras_object_geometry():
    spacing, box = (0.5, 0.75, 1.25), (-4.0, 8.0, -6.0, 3.0, -2.0, 7.0)
    for kw in ({"pixel_spacing": spacing}, {"bounding_box": box}):
        og = create_object_geometry(10, 12, 8, is_2d=False, **kw)
        g = cone_beam_geometry_from_deepinv((8, 10, 12), angles=4, geometry_parameters={"source_radius": 200.0},
                                            **kw)
        o = og["option"]
        lo = [o["WindowMinZ"], o["WindowMinY"], o["WindowMinX"]]
        hi = [o["WindowMaxZ"], o["WindowMaxY"], o["WindowMaxX"]]
        assert g.vol_shape == (og["GridSliceCount"], og["GridRowCount"], og["GridColCount"])
        np.testing.assert_allclose(g.voxel_size, [(b - a) / n for a, b, n in zip(lo, hi, g.vol_shape)], rtol=1e-12)
        np.testing.assert_allclose(g.vol_offset, [(a + b) / 2 for a, b in zip(lo, hi)], atol=1e-12)


def test_geometry_vectors_are_used_as_given():
    pg = create_projection_geometry("conebeam", (1.0, 1.0), (9, 15), ANGLES, is_2d=False,
                                    geometry_parameters={"source_radius": 150.0, "detector_radius": 70.0})
    vec = torch.from_numpy(astra.geom_2vec(pg)["Vectors"])
    vec[:, 2] += 3.0  # a source lifted 3 mm (no circular description fits)
    ours = TomographyWithAstra(img_size=(8, 10, 12), n_detector_pixels=(9, 15), geometry_type="conebeam",
                               geometry_vectors=vec, normalize=False, device="cpu")
    np.testing.assert_array_equal(ours.geometry.vectors, vec.numpy())
    assert ours.angles is None and torch.equal(ours.geometry_vectors, vec)


def _smooth_slice(h: int, w: int) -> np.ndarray:
    yy = (np.arange(h) - (h - 1) / 2)[:, None]
    xx = (np.arange(w) - (w - 1) / 2)[None, :]
    return np.exp(-((xx - 6) ** 2 / 60 + (yy + 4) ** 2 / 30)) + 0.5 * np.exp(-((xx + 8) ** 2 + (yy - 7) ** 2) / 20)


def test_central_row_equals_astras_cpu_fan_beam_projection():
    # A volume constant along z: the detector's central row (odd row count: it lies in the z = 0
    # plane) sees a 2D fan-beam scan of one slice. ASTRA's 2D volume puts image row 0 at +y
    # while its 3D volume (and ours) puts row 0 at -y: the slice must be flipped along y to
    # agree -- shown by the unflipped comparison failing.
    deg = torch.linspace(0, 360, 25, dtype=torch.float64)[:-1]
    d, h, w, cols = 9, 40, 48, 96
    ours = TomographyWithAstra(img_size=(d, h, w), angles=deg, n_detector_pixels=(9, cols), detector_spacing=1.0,
                               geometry_type="conebeam", geometry_parameters={"source_radius": 120.0,
                                                                               "detector_radius": 60.0},
                               normalize=False, device="cpu")
    img = _smooth_slice(h, w)
    vol = torch.from_numpy(np.broadcast_to(img, (d, h, w)).copy())[None, None]
    central = ours.A(vol)[0, 0, d // 2].numpy()  # [angles, cols]
    fan = astra.create_proj_geom("fanflat", 1.0, cols, np.deg2rad(-deg.numpy()), 120.0, 60.0)  # deepinv's sign
    errors = {}
    for flipped in (True, False):
        pid = astra.create_projector("strip_fanflat", fan, astra.create_vol_geom(h, w))
        sid, sino = astra.create_sino(np.ascontiguousarray(img[::-1] if flipped else img), pid)
        astra.data2d.delete(sid)
        astra.projector.delete(pid)
        errors[flipped] = np.linalg.norm(sino - central) / np.linalg.norm(central)
    print(f"relative L2 to ASTRA strip_fanflat: {errors[True]:.4f} (y flipped), {errors[False]:.3f} (not)")
    assert errors[True] < 0.01
    assert errors[False] > 0.3


# ------------------------------------------------------------------ behaviour of the adapter
@pytest.fixture
def pair():
    kw = dict(img_size=(10, 12, 14), angles=20, n_detector_pixels=(16, 22), angular_range=(0, 360),
              detector_spacing=(1.5, 1.5), geometry_type="conebeam", geometry_parameters=RADII, device="cpu")
    compat = TomographyWithAstra(normalize=False, **kw)
    native = ConeBeamCT(compat.geometry)
    return compat, native


def _vol(shape, seed=0, dtype=torch.float64):
    return torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_adapter_is_the_native_operator_in_deepinvs_layout(pair):
    compat, native = pair
    x = _vol(compat.img_size)
    y = compat.A(x)
    assert y.shape == (1, 1, 16, 20, 22)
    torch.testing.assert_close(y, native.A(x).transpose(2, 3), rtol=0, atol=0)
    torch.testing.assert_close(compat.A_adjoint(y), native.A_adjoint(native.A(x)), rtol=0, atol=0)
    torch.testing.assert_close(compat.fbp(y), native.A_dagger(native.A(x)), rtol=0, atol=0)
    torch.testing.assert_close(compat.A_dagger(y, fbp=True), compat.fbp(y), rtol=0, atol=0)
    assert float(compat.adjointness_test(x)) < 1e-12


def test_a_dagger_least_squares_by_default_in_the_adapter_fdk_in_conebeamct(pair):
    compat, native = pair
    x = _vol(compat.img_size, 1)
    r = native.A_adjoint(native.A(x))  # in the range of A^T: least squares recovers it
    y_native = native.A(r)
    y_compat = y_native.transpose(2, 3)
    ls = compat.A_dagger(y_compat, tol=1e-6, max_iter=200)
    assert float((ls - r).norm() / r.norm()) < 0.02
    fdk = native.A_dagger(y_native)
    assert float((fdk - r).norm() / r.norm()) > 0.05  # FDK is not least squares: the test can tell
    torch.testing.assert_close(native.A_dagger(y_native, fbp=True), fdk, rtol=0, atol=0)
    # deepinv's solver keywords switch ConeBeamCT to least squares
    torch.testing.assert_close(native.A_dagger(y_native, solver="lsqr", tol=1e-6, max_iter=200),
                               compat.A_dagger(y_compat, solver="lsqr", tol=1e-6, max_iter=200),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="solver keywords"):
        native.A_dagger(y_native, fbp=True, solver="lsqr")


def test_normalize_follows_deepinv():
    kw = dict(img_size=(10, 12, 14), angles=12, n_detector_pixels=(16, 22), angular_range=(0, 360),
              geometry_type="conebeam", geometry_parameters=RADII, device="cpu")
    with pytest.warns(UserWarning, match="normalize"):
        default = TomographyWithAstra(**kw)
    raw = TomographyWithAstra(normalize=False, **kw)
    assert default.normalize and "operator_norm" in default.state_dict()
    x = _vol(raw.img_size, 2)
    torch.testing.assert_close(default.A(x) * default.operator_norm, raw.A(x))
    sq = float(default.compute_sqnorm(x, max_iter=200, tol=1e-7, verbose=False))
    assert sq == pytest.approx(1.0, rel=2e-3)
    # fbp undoes the normalisation, as deepinv's does
    torch.testing.assert_close(default.fbp(default.A(x)), raw.fbp(raw.A(x)))


def test_defaults_and_properties_follow_deepinv():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = TomographyWithAstra(img_size=(8, 10, 12), angles=6, geometry_type="conebeam", normalize=False,
                                device="cpu")
    assert p.n_detector_pixels == (12, 12)  # ceil(sqrt(2) * 8), deepinv's default
    torch.testing.assert_close(p.angles, torch.arange(6, dtype=torch.float64) * 30.0)
    assert p.angular_range == (0.0, 150.0) and p.num_angles == 6 and p.geometry_type == "conebeam"
    assert p.img_size == (8, 10, 12) and p.geometry_vectors is None
    assert p.pixel_spacing == (1.0, 1.0, 1.0) and p.detector_spacing == (1.0, 1.0)
    assert p.bounding_box == (-6.0, 6.0, -5.0, 5.0, -4.0, 4.0)
    assert p.geometry.trajectory.scan == "short" and p.geometry.trajectory.source_origin == 80.0


@pytest.mark.parametrize("kwargs, match", [
    ({"img_size": (10, 12)}, "img_size: 2D"),
    ({"geometry_type": "parallel"}, "geometry_type='parallel'"),
    ({"geometry_type": "fanbeam"}, "geometry_type='fanbeam'"),
    ({"is_2d": True}, "2D"),
    ({"bounding_box": (0, 1, 0, 1)}, "bounding_box"),
    ({"bounding_box": (1, 0, 0, 1, 0, 1)}, "max > min"),
    ({"pixel_spacing": (1.0, 1.0)}, "pixel_spacing"),
    ({"geometry_parameters": {"source_radus": 100.0}}, "unknown keys"),
    ({"n_detector_pixels": (4, 5, 6)}, "n_detector_pixels"),
    ({"angles": 0}, "angles"),
    ({"geometry_parameters": {"source_radius": 5.0}}, "bounding sphere"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    base = dict(img_size=(8, 10, 12), angles=6, geometry_type="conebeam", normalize=False, device="cpu")
    with pytest.raises(ValueError, match=match):
        TomographyWithAstra(**{**base, **kwargs})


def test_measurements_of_the_wrong_layout_are_refused(pair):
    compat, native = pair
    y = native.A(_vol(compat.img_size))  # [B, C, views, rows, cols]: not deepinv's layout
    with pytest.raises(ValueError, match="astra"):
        compat.A_adjoint(y)


# ------------------------------------------------------------------ the guide's before/after example
def _readme_blocks() -> tuple[str, str]:
    """The swap-in's before/after blocks, in docs/guide/deepinv.md (the README links there)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "deepinv.md").read_text()
    before = re.search(r"<!-- deepinv-before -->\s*```python\n(.*?)```", text, re.S)
    after = re.search(r"<!-- deepinv-after -->\s*```python\n(.*?)```", text, re.S)
    assert before and after, "docs/guide/deepinv.md lacks the marked deepinv before/after example"
    return before.group(1), after.group(1)


def test_readme_swap_is_one_import_line_and_runs():
    before, after = _readme_blocks()
    diff = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines()) and len(diff) == 1, diff
    assert "import TomographyWithAstra" in diff[0][0] and "from unrolled3d.physics import" in diff[0][1]
    namespace: dict = {}
    exec(compile(after, "docs/guide/deepinv.md (after)", "exec"), namespace)  # noqa: S102 -- our own docs
    x, x_hat = namespace["x"], namespace["x_hat"]
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
