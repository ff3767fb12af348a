"""Spatial metadata end to end (issue 30): the input volume's affine and voxel size survive
``simulate --volume`` -> ``reconstruct`` in every output format (checked with nibabel, tifffile, h5py
and zarr, the tools users open them with), and Hounsfield-unit input is projected as attenuation."""
from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from reliability_inputs import cli
from unrolled3d.data import shepp_logan_3d, voxelize
from unrolled3d.data.normalization import MU_WATER
from unrolled3d.io import load_measurements, read_volume, write_volume

#: an LPS volume (x and y axes flipped) with its origin at (90, 120, -50) mm: the reported case
LPS = np.array([[-0.8, 0, 0, 90], [0, -0.8, 0, 120], [0, 0, 2, -50], [0, 0, 0, 1.0]])
SHAPE = (12, 14, 16)  # (D, H, W): distinct, so an axis mix-up shows


def _phantom() -> np.ndarray:
    return voxelize(shepp_logan_3d(5.0), SHAPE).numpy()  # attenuation-like values in [0, 1]


def _nifti(path, volume: np.ndarray, affine=LPS, code: int = 1):
    img = nib.Nifti1Image(volume.transpose(2, 1, 0).astype(np.float32), affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The LPS NIfTI simulated into a .pt measurements file and a Zarr measurements store."""
    d = tmp_path_factory.mktemp("spatial")
    src = _nifti(d / "lps.nii.gz", _phantom())
    for out in ("m.pt", "m.zarr"):
        code, _, err = cli("simulate", "--volume", src, "--views", "12", "--noise", "0", "--output", d / out,
                           "--quiet")
        assert code == 0, err
    return d


def test_measurements_record_the_input_affine(scans):
    """The measurements file keeps the input's affine and frame (NIfTI sform/qform code 1: scanner)."""
    from unrolled3d.io import Spatial

    _, g, _, meta = load_measurements(scans / "m.pt")
    rec = Spatial.from_dict(meta["spatial"])
    np.testing.assert_allclose(rec.matrix, LPS, rtol=0, atol=1e-6)  # NIfTI stores float32
    assert rec.code == 1 and rec.voxel_size == g.voxel_size == (2.0, 0.8, 0.8)


@pytest.mark.parametrize("source", ["m.pt", "m.zarr"])
def test_nifti_output_has_the_input_affine(scans, source):
    """simulate --volume LPS.nii.gz -> reconstruct -> .nii.gz: nibabel reads the input's affine, codes and origin."""
    out = scans / f"x_{source.replace('.', '_')}.nii.gz"
    if source == "m.zarr":  # a streamed reconstruction writes .zarr/.npy: read its npy back into NIfTI terms
        out = out.with_name(out.name.replace(".nii.gz", ".npy"))
    code, _, err = cli("reconstruct", scans / source, "--output", out, "--quiet")
    assert code == 0, err
    from unrolled3d.io import read_spatial

    if out.suffix == ".npy":
        sp = read_spatial(out)
        np.testing.assert_allclose(sp.matrix, LPS, atol=1e-6)
        assert sp.code == 1
        return
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, LPS, atol=1e-6)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.header.get_zooms()[:3], (0.8, 0.8, 2.0), rtol=1e-6)
    assert img.shape == SHAPE[::-1]


def test_tiff_output_is_an_imagej_hyperstack_with_the_voxel_size(scans):
    """reconstruct -> .tif: an ImageJ hyperstack (tifffile: spacing, X/YResolution, unit) plus the exact affine."""
    code, _, err = cli("reconstruct", scans / "m.pt", "--output", scans / "x.tif", "--quiet")
    assert code == 0, err
    with tifffile.TiffFile(scans / "x.tif") as tif:
        ij = tif.imagej_metadata
        assert tif.is_imagej and ij["hyperstack"] and ij["images"] == ij["slices"] == SHAPE[0]
        assert ij["spacing"] == 2.0 and ij["unit"] == "mm"
        assert tif.pages[0].resolution == pytest.approx((1 / 0.8, 1 / 0.8), rel=1e-6)
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == SHAPE
    from unrolled3d.io import read_spatial

    np.testing.assert_allclose(read_spatial(scans / "x.tif").matrix, LPS, atol=1e-6)


def test_hdf5_output_is_chunked_compressed_with_attributes(scans):
    """reconstruct -> .h5: a chunked, gzip-compressed dataset with voxel size and affine attributes (h5py)."""
    code, _, err = cli("reconstruct", scans / "m.pt", "--output", scans / "x.h5", "--quiet")
    assert code == 0, err
    with h5py.File(scans / "x.h5", "r") as f:
        ds = f["volume"]
        assert ds.chunks is not None and ds.compression == "gzip" and ds.shuffle
        assert tuple(ds.attrs["voxel_size"]) == (2.0, 0.8, 0.8) and ds.attrs["axes"] == "zyx"
        np.testing.assert_allclose(ds.attrs["affine"], LPS, atol=1e-6)
        assert int(ds.attrs["frame_code"]) == 1


def test_zarr_output_has_the_affine_attributes(scans):
    """reconstruct m.zarr -> x.zarr (streamed): the Zarr array's attributes hold voxel size and affine."""
    import zarr

    code, _, err = cli("reconstruct", scans / "m.zarr", "--output", scans / "x.zarr", "--quiet")
    assert code == 0, err
    attrs = dict(zarr.open_array(str(scans / "x.zarr"), mode="r").attrs)
    assert attrs["voxel_size"] == [2.0, 0.8, 0.8] and attrs["frame_code"] == 1
    np.testing.assert_allclose(attrs["affine"], LPS, atol=1e-6)


@pytest.mark.parametrize("ext", [".npy", ".nii.gz", ".h5", ".tif", ".pt"])
def test_write_volume_spatial_round_trip(tmp_path, ext):
    """write_volume(spatial=...) then read_spatial gives the same affine, code and voxel size in every format."""
    from unrolled3d.io import Spatial, read_spatial

    sp = Spatial.from_affine(LPS, code=1)
    write_volume(tmp_path / f"v{ext}", torch.rand(SHAPE), spatial=sp)
    back = read_spatial(tmp_path / f"v{ext}")
    np.testing.assert_allclose(back.matrix, LPS, atol=1e-6)
    assert back.code == 1 and back.voxel_size == pytest.approx(sp.voxel_size, rel=1e-6)
    assert read_volume(tmp_path / f"v{ext}")[1] == pytest.approx((2.0, 0.8, 0.8), rel=1e-6)


def test_write_volume_refuses_a_spatial_of_another_voxel_size(tmp_path):
    """voxel_size and spatial given together must agree."""
    from unrolled3d.io import Spatial

    with pytest.raises(ValueError, match="affine is for"):
        write_volume(tmp_path / "v.nii", torch.rand(SHAPE), (1.0, 1.0, 1.0), spatial=Spatial.from_affine(LPS))


# ------------------------------------------------------------------------------ Hounsfield units
def _hu(volume: np.ndarray) -> np.ndarray:
    return 1000.0 * (volume * 0.05 / MU_WATER - 1.0)  # a phantom of up to 0.05/mm in HU: air -1000


@pytest.mark.parametrize("units", [None, "hu"])
def test_hu_volume_is_projected_as_attenuation(tmp_path, units):
    """An HU volume (detected, or declared with --units hu) is converted to 1/mm: line integrals >= 0, meta says so."""
    vol = _hu(_phantom())
    write_volume(tmp_path / "hu.npy", vol)
    extra = ["--units", units] if units else []
    code, _, err = cli("simulate", "--volume", tmp_path / "hu.npy", "--views", "8", "--noise", "0", *extra,
                       "--output", tmp_path / "m.pt")
    assert code == 0, err
    y, _, x_true, meta = load_measurements(tmp_path / "m.pt")
    assert float(y.min()) >= 0.0 and meta["units"] == "hu" and meta["mu_water"] == MU_WATER
    expected = np.maximum(MU_WATER * (1 + vol / 1000.0), 0.0)
    np.testing.assert_allclose(x_true[0, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    if units is None:
        assert "looks like Hounsfield units" in err


def test_units_attenuation_projects_values_as_they_are(tmp_path):
    """--units attenuation keeps today's behaviour: the values are projected as given (negative here)."""
    write_volume(tmp_path / "hu.npy", _hu(_phantom()))
    code, _, err = cli("simulate", "--volume", tmp_path / "hu.npy", "--views", "8", "--noise", "0", "--units",
                       "attenuation", "--output", tmp_path / "m.pt", "--quiet")
    assert code == 0, err
    y, _, _, meta = load_measurements(tmp_path / "m.pt")
    assert float(y.min()) < 0 and meta["units"] == "attenuation"


def test_zarr_simulate_converts_hu_slab_by_slab(tmp_path):
    """The streamed simulate (Zarr store) detects and converts HU like the in-memory one."""
    write_volume(tmp_path / "hu.npy", _hu(_phantom()))
    code, _, err = cli("simulate", "--volume", tmp_path / "hu.npy", "--views", "8", "--noise", "0",
                       "--output", tmp_path / "m.zarr", "--quiet")
    assert code == 0, err
    from unrolled3d.io.scan_stores import open_scan

    y, _, x_true, meta = open_scan(tmp_path / "m.zarr")
    assert meta["units"] == "hu" and float(y.read((0, 0, 0), y.shape).min()) >= 0.0
    assert float(x_true.read((0, 0, 0), x_true.shape).min()) >= 0.0
    assert json.loads(json.dumps(meta["spatial"]))["frame_code"] == 0
