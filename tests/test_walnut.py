"""The Walnut CBCT reader on a tiny synthetic scan written in the data set's layout.

The scan is written here independently of the reader: the inverse of the authors' image
transform is spelled out by index (``raw[a, b] = detector[b, C-1-a]``), files are numbered in
the reverse of the geometry order with the 360 degree view repeated, and the ``.geom`` file is
the ASTRA ``cone_vec`` rows plus the repeated first row. ``read_walnut`` must give back the
projector's line integrals and the vectors exactly.
"""
from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.ops import cone_project
from unrolled3d.data.walnut import DEFAULT_EPS, raw_to_detector, read_walnut, walnut_views

N_VIEWS, DET, VOL = 12, (16, 20), (8, 8, 8)


def tiny_geometry() -> ConeBeamGeometry:
    """12 views, 16 x 20 detector, 8^3 volume; jittered so that every vector is distinct."""
    g = ConeBeamGeometry.circular(N_VIEWS, 40.0, 25.0, DET, (1.2, 1.1), VOL, det_offset=(0.7, -0.9))
    vec = np.array(g.vectors)
    vec[:, 0:6] += np.random.default_rng(3).normal(scale=0.3, size=(N_VIEWS, 6))
    return ConeBeamGeometry.from_vectors(vec, DET, VOL)


def detector_to_raw(det: np.ndarray) -> np.ndarray:
    """Inverse of the authors' ``transpose(flipud(raw))``: ``raw[a, b] = det[b, C-1-a]``, shape (C, R)."""
    rows, cols = det.shape
    a = np.arange(cols)[:, None]
    b = np.arange(rows)[None, :]
    return det[b, cols - 1 - a]


def write_walnut_scan(folder: Path, geometry: ConeBeamGeometry, p: np.ndarray, seed: int = 0,
                      dtype=np.float32) -> dict[str, np.ndarray]:
    """Write line integrals ``p`` [n_views, rows, cols] (geometry order) as a Walnut orbit folder.

    Returns the detector-frame dark and flats and the intensities, for tests that need them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n, rows, cols = p.shape
    dark = 100.0 + 10.0 * rng.random((rows, cols))
    flat0 = 1500.0 + 300.0 * rng.random((rows, cols))
    flat1 = flat0 + 50.0 * rng.random((rows, cols))  # the two flats differ: the reader must average them
    flat = 0.5 * (flat0 + flat1)
    intensity = dark + (flat - dark) * np.exp(-p)
    for name, img in (("di000000.tif", dark), ("io000000.tif", flat0), ("io000001.tif", flat1)):
        tifffile.imwrite(folder / name, detector_to_raw(img).astype(dtype))
    # N = n + 1 files; geometry row k <-> file N-1-k = n-k; file 0 repeats view 0 (360 degrees).
    for k in range(n):
        tifffile.imwrite(folder / f"scan_{n - k:06d}.tif", detector_to_raw(intensity[k]).astype(dtype))
    tifffile.imwrite(folder / "scan_000000.tif", detector_to_raw(intensity[0]).astype(dtype))
    vec = np.array(geometry.vectors)
    rows12 = np.concatenate([vec, vec[:1]], axis=0)
    np.savetxt(folder / "scan_geom_corrected.geom", rows12)  # %.18e: float64 round-trips exactly
    original = rows12.copy()
    original[:, 3:6] += 0.25  # a distinguishable "uncalibrated" geometry
    np.savetxt(folder / "scan_geom_original.geom", original)
    return {"dark": dark, "flat": flat, "intensity": intensity}


def make_scan(folder: Path, seed: int = 0) -> tuple[ConeBeamGeometry, np.ndarray]:
    """Project a random phantom and write it; returns the geometry and the line integrals."""
    g = tiny_geometry()
    x = 0.15 * torch.rand((1, 1, *VOL), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = cone_project(x, g)[0, 0].numpy()
    write_walnut_scan(folder, g, p, seed=seed)
    return g, p


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("Walnut1") / "Projections" / "tubeV2"
    g, p = make_scan(folder)
    return folder, g, p


@pytest.fixture
def scan_copy(scan, tmp_path):
    folder, g, p = scan
    dst = tmp_path / "tubeV2"
    shutil.copytree(folder, dst)
    return dst, g, p


def read(folder, **kw):
    kw.setdefault("vol_shape", VOL)
    kw.setdefault("voxel_size", 1.0)
    return read_walnut(folder, **kw)


# --------------------------------------------------------------------------- conventions
def test_raw_to_detector_is_flipud_then_transpose():
    raw = np.array([[0, 1], [2, 3], [4, 5]])  # raw (C=3, R=2): landscape read-out
    det = raw_to_detector(raw)
    # det[r, c] = raw[C-1-c, r]: row r = raw column r, column c counts raw rows from the bottom
    assert det.tolist() == [[4, 2, 0], [5, 3, 1]]
    assert np.array_equal(det, np.transpose(np.flipud(raw)))
    assert np.array_equal(raw_to_detector(detector_to_raw(np.arange(12.0).reshape(3, 4))), np.arange(12.0).reshape(3, 4))


def test_view_pairs_follow_the_authors_latest_scripts():
    # 1201 files: rows 0, 10, ... 1190 with files 1200, 1190, ... 10 (range(1200, 0, -10))
    pairs = walnut_views(1201, 10)
    assert len(pairs) == 120 and pairs[0] == (0, 1200) and pairs[-1] == (1190, 10)
    assert walnut_views(1201)[-1] == (1199, 1) and len(walnut_views(1201)) == 1200  # duplicate dropped
    with pytest.raises(ValueError, match="at least 2"):
        walnut_views(1)
    assert len(walnut_views(1201, 1199)) == 2  # rows 0 and 1199: the largest step that keeps two views
    with pytest.raises(ValueError, match=r"view_step=1200 keeps 1 of the scan's 1200 views.*at most 1199"):
        walnut_views(1201, 1200)
    assert walnut_views(2, 5) == [(0, 1)]  # a one-view scan keeps its view whatever the step


def test_a_view_step_past_the_orbit_is_refused_before_the_projections_are_read(scan):
    folder, _, _ = scan
    with pytest.raises(ValueError, match=f"view_step={N_VIEWS} keeps 1 of the scan's {N_VIEWS} views"):
        read(folder, view_step=N_VIEWS)


# --------------------------------------------------------------------------- round trip
def test_recovers_line_integrals_and_vectors(scan):
    folder, g, p = scan
    y, geom = read(folder)
    assert y.shape == (1, 1, N_VIEWS, *DET) and y.dtype == torch.float32
    assert float(p.max()) > 0.5  # a real signal, not an empty phantom
    np.testing.assert_allclose(y[0, 0].numpy(), p, rtol=0, atol=2e-5)
    assert np.array_equal(geom.vectors, g.vectors)
    assert geom.det_shape == DET and geom.vol_shape == VOL and geom.voxel_size == (1.0, 1.0, 1.0)


def test_measurements_match_the_projector_on_the_read_geometry(scan):
    folder, _, _ = scan
    y, geom = read(folder, vol_shape=(6, 7, 8), voxel_size=(0.9, 1.0, 1.1), vol_offset=(0.2, 0.0, -0.1))
    assert geom.vol_shape == (6, 7, 8) and geom.voxel_size == (0.9, 1.0, 1.1) and geom.vol_offset == (0.2, 0.0, -0.1)
    assert y.shape[-3:] == geom.sino_shape


@pytest.mark.parametrize("step", [2, 5, 11])
def test_view_subsampling(scan, step):
    folder, g, p = scan
    y, geom = read(folder, view_step=step)
    keep = list(range(0, N_VIEWS, step))
    assert geom.n_views == len(keep)
    np.testing.assert_allclose(y[0, 0].numpy(), p[keep], rtol=0, atol=2e-5)
    assert np.array_equal(geom.vectors, g.vectors[keep])


def test_geometry_file_option(scan):
    folder, g, _ = scan
    _, geom = read(folder, geometry_file="scan_geom_original.geom")
    assert np.array_equal(geom.vectors[:, 3:6], g.vectors[:, 3:6] + 0.25)


@pytest.mark.parametrize("b", [2, 3])
def test_binning_averages_intensities_and_keeps_geometry_exact(tmp_path, b):
    g = tiny_geometry()
    p = cone_project(0.1 * torch.rand((1, 1, *VOL), generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64), g)[0, 0].numpy()
    raw = write_walnut_scan(tmp_path, g, p, dtype=np.float64)
    y, geom = read(tmp_path, binning=b)
    rows, cols = DET[0] // b, DET[1] // b
    assert y.shape == (1, 1, N_VIEWS, rows, cols)

    def block_mean(a):  # [..., R, C] -> [..., R//b, C//b], trailing rows/cols dropped
        a = a[..., : rows * b, : cols * b]
        return a.reshape(*a.shape[:-2], rows, b, cols, b).mean(axis=(-3, -1))

    t = (block_mean(raw["intensity"]) - block_mean(raw["dark"])) / (block_mean(raw["flat"]) - block_mean(raw["dark"]))
    np.testing.assert_allclose(y[0, 0].numpy(), -np.log(t), rtol=0, atol=1e-6)
    # Each binned pixel sits at the mean of the pixels it merges.
    np.testing.assert_allclose(geom.pixel_positions(), block_mean(g.pixel_positions().transpose(0, 3, 1, 2))
                               .transpose(0, 2, 3, 1), rtol=0, atol=1e-9)
    assert np.array_equal(geom.vectors[:, 0:3], g.vectors[:, 0:3])


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("remove", ["di000000.tif", "io000001.tif", "scan_geom_corrected.geom"])
def test_missing_files(scan_copy, remove):
    folder, _, _ = scan_copy
    (folder / remove).unlink()
    with pytest.raises(FileNotFoundError, match=remove.replace(".", r"\.")):
        read(folder)


def test_missing_folder_and_no_projections(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read(tmp_path / "nowhere")
    np.savetxt(tmp_path / "scan_geom_corrected.geom", np.ones((3, 12)))
    with pytest.raises(FileNotFoundError, match="no projections"):
        read(tmp_path)


def test_gap_in_projection_numbers(scan_copy):
    folder, _, _ = scan_copy
    (folder / "scan_000005.tif").unlink()
    with pytest.raises(ValueError, match="not numbered"):
        read(folder)


@pytest.mark.parametrize("rows", [N_VIEWS, N_VIEWS + 2])
def test_geometry_rows_must_match_projections(scan_copy, rows):
    folder, g, _ = scan_copy
    vec = np.concatenate([g.vectors, g.vectors])[:rows]
    np.savetxt(folder / "scan_geom_corrected.geom", vec)
    with pytest.raises(ValueError, match=f"{rows} rows but there are {N_VIEWS + 1} projections"):
        read(folder)


def test_geometry_needs_12_columns(scan_copy):
    folder, g, _ = scan_copy
    np.savetxt(folder / "scan_geom_corrected.geom", np.concatenate([g.vectors, g.vectors[:1]])[:, :11])
    with pytest.raises(ValueError, match="12 numbers"):
        read(folder)
    (folder / "scan_geom_corrected.geom").write_text("1 2 3 x\n")
    with pytest.raises(ValueError, match="scan_geom_corrected.geom"):
        read(folder)


def test_projection_of_another_shape(scan_copy):
    folder, _, _ = scan_copy
    tifffile.imwrite(folder / "scan_000003.tif", np.ones((DET[1], DET[0] + 1), np.float32))
    with pytest.raises(ValueError, match="scan_000003.tif has shape"):
        read(folder)


def test_flat_of_another_shape(scan_copy):
    folder, _, _ = scan_copy
    tifffile.imwrite(folder / "io000000.tif", np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="io000000.tif has shape"):
        read(folder)


def test_truncated_projection(scan_copy):
    folder, _, _ = scan_copy
    f = folder / "scan_000007.tif"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="scan_000007.tif: not a readable TIFF"):
        read(folder)


def test_dead_pixels_are_clamped_with_a_warning(scan_copy):
    folder, _, p = scan_copy
    dark = raw_to_detector(tifffile.imread(folder / "di000000.tif"))
    for name in ("io000000.tif", "io000001.tif"):
        flat = raw_to_detector(tifffile.imread(folder / name))
        flat[:, :5] = dark[:, :5]  # five dead detector columns
        flat[3, 10] = dark[3, 10]  # and one more dead pixel
        tifffile.imwrite(folder / name, detector_to_raw(flat))
    with pytest.warns(RuntimeWarning, match=r"81 dead detector pixel\(s\) with flat - dark < 1e-06"):
        y, _ = read(folder)
    assert torch.isfinite(y).all()
    # dead pixels (flat == dark) measured nothing: line integral 0, not a division by zero
    assert float(y[..., :, :5].abs().max()) == 0.0 and float(y[..., 3, 10].abs().max()) == 0.0
    np.testing.assert_allclose(y[0, 0, :, :3, 5:].numpy(), p[:, :3, 5:], rtol=0, atol=2e-5)  # the rest is intact


def test_opaque_pixels_are_clamped_at_eps(scan_copy):
    folder, _, _ = scan_copy
    dark = tifffile.imread(folder / "di000000.tif")
    tifffile.imwrite(folder / "scan_000012.tif", dark - 5.0)  # view 0 darker than the dark field
    with pytest.warns(RuntimeWarning, match=rf"{DET[0] * DET[1]} transmission value\(s\) below 1e-06"):
        y, _ = read(folder)
    assert torch.allclose(y[0, 0, 0], torch.full(DET, -math.log(DEFAULT_EPS)))


def test_no_warning_on_clean_data(scan):
    folder, _, _ = scan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = read(folder, view_step=6)
    assert y.shape[2] == 2


def test_flat_equal_to_dark_everywhere(scan_copy):
    folder, _, _ = scan_copy
    shutil.copy(folder / "di000000.tif", folder / "io000000.tif")
    shutil.copy(folder / "di000000.tif", folder / "io000001.tif")
    with pytest.raises(ValueError, match="not brighter than the dark"):
        read(folder)


@pytest.mark.parametrize("kw, exc, match", [
    ({"view_step": 0}, ValueError, "view_step"),
    ({"view_step": 1.5}, TypeError, "view_step"),
    ({"binning": 0}, ValueError, "binning"),
    ({"binning": 17}, ValueError, "binning 17 is larger"),
    ({"eps": 0.0}, ValueError, "eps"),
    ({"vol_shape": (200, 200, 200)}, ValueError, "bounding sphere"),
    ({"voxel_size": -1.0}, ValueError, "voxel_size"),
])
def test_bad_arguments(scan, kw, exc, match):
    folder, _, _ = scan
    with pytest.raises(exc, match=match):
        read(folder, **kw)
