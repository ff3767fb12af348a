"""Volume files: exact round trips in every format, the documented layouts, and clear failures."""
from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

import unrolled3d.io as files
from unrolled3d.io import SUPPORTED_EXTENSIONS, read_volume, write_volume

EXTS = [".npy", ".nii", ".nii.gz", ".h5", ".hdf5", ".tif", ".tiff", ".pt"]
SHAPE = (3, 5, 7)  # (D, H, W): every axis distinct, so a transposition cannot pass unnoticed
VS = (2.5, 0.1496, 0.1)  # (sz, sy, sx) mm


def volume(dtype=torch.float32, shape=SHAPE, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ext", EXTS)
def test_round_trip_is_exact(tmp_path, ext, dtype):
    v = volume(dtype)
    path = tmp_path / f"vol{ext}"
    write_volume(path, v, VS)
    r, vs = read_volume(path)
    assert r.dtype == dtype and r.shape == SHAPE and torch.equal(r, v)
    assert vs == VS
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


@pytest.mark.parametrize("ext", EXTS)
def test_default_voxel_size_and_overwrite(tmp_path, ext):
    path = tmp_path / f"vol{ext}"
    write_volume(path, volume(seed=1), 0.5)
    write_volume(path, volume(seed=2)[None, None])  # [1, 1, D, H, W] accepted; replaces the file
    r, vs = read_volume(path)
    assert torch.equal(r, volume(seed=2)) and vs == (1.0, 1.0, 1.0)


def test_nifti_voxel_sizes_beyond_float32_come_back_to_float32_precision(tmp_path):
    write_volume(tmp_path / "v.nii.gz", volume(), (1 / 3, 0.7, 2 / 7))
    _, vs = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(vs, (1 / 3, 0.7, 2 / 7), rtol=1e-7)
    assert vs[1] == 0.7  # a short decimal is exact


@pytest.mark.parametrize("ext", [".npy", ".h5", ".tif", ".nii"])
def test_other_dtypes_are_written_as_float32(tmp_path, ext):
    a = np.arange(105, dtype=np.int16).reshape(SHAPE)
    write_volume(tmp_path / f"i{ext}", a)
    r, _ = read_volume(tmp_path / f"i{ext}")
    assert r.dtype == torch.float32 and torch.equal(r, torch.from_numpy(a.astype(np.float32)))
    write_volume(tmp_path / f"h{ext}", torch.ones(SHAPE, dtype=torch.float16))
    assert read_volume(tmp_path / f"h{ext}")[0].dtype == torch.float32


def test_integer_files_read_as_float32(tmp_path):
    a = np.arange(105, dtype=np.uint16).reshape(SHAPE)
    np.save(tmp_path / "u.npy", a)
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["volume"] = a
    tifffile.imwrite(tmp_path / "u.tif", a, photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="single-channel 2D pages"):
        read_volume(tmp_path / "rgb.tif")
    for name in ("u.npy", "u.h5", "u.tif"):
        r, vs = read_volume(tmp_path / name)
        assert r.dtype == torch.float32 and torch.equal(r, torch.from_numpy(a.astype(np.float32))) and vs == (1, 1, 1)


# --------------------------------------------------------------------------- documented layouts
def test_nifti_axes_are_x_y_z(tmp_path):
    v = volume()
    write_volume(tmp_path / "v.nii", v, VS)
    img = nib.load(tmp_path / "v.nii")
    data = np.asanyarray(img.dataobj)
    assert data.shape == (7, 5, 3)  # (i, j, k) = (x, y, z) = (W, H, D)
    assert data[6, 1, 2] == v[2, 1, 6].item()
    np.testing.assert_allclose(img.header.get_zooms(), (0.1, 0.1496, 2.5), rtol=1e-7)  # (sx, sy, sz)
    assert img.header.get_xyzt_units()[0] == "mm"
    # and back: a NIfTI written by nibabel itself reads as [z, y, x]
    xyz = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    other = nib.Nifti1Image(xyz, np.diag([0.5, 0.25, 2.0, 1.0]))
    other.header.set_zooms((0.5, 0.25, 2.0))
    nib.save(other, tmp_path / "o.nii.gz")
    r, vs = read_volume(tmp_path / "o.nii.gz")
    assert r.shape == (4, 3, 2) and r[3, 2, 1].item() == xyz[1, 2, 3] and vs == (2.0, 0.25, 0.5)


def test_nifti_trailing_singleton_dimension(tmp_path):
    xyz1 = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    nib.save(nib.Nifti1Image(xyz1, np.eye(4)), tmp_path / "t.nii")
    assert read_volume(tmp_path / "t.nii")[0].shape == (4, 3, 2)


def test_hdf5_layout(tmp_path):
    v = volume(torch.float64)
    write_volume(tmp_path / "v.h5", v, VS)
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert np.array_equal(f["volume"][()], v.numpy())
        assert tuple(f["volume"].attrs["voxel_size"]) == VS and f["volume"].attrs["axes"] == "zyx"


def test_tiff_layout_pages_are_z_slices(tmp_path):
    """float32: an ImageJ hyperstack (what Fiji opens with its voxel size), our exact JSON inside its
    description; float64 (no ImageJ float64): tifffile's JSON description."""
    v = volume()
    write_volume(tmp_path / "v.tif", v, VS)
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        assert len(tif.pages) == SHAPE[0]
        assert np.array_equal(tif.pages[2].asarray(), v[2].numpy())
        ij = tif.imagej_metadata
        assert tif.is_imagej and ij["spacing"] == VS[0] and ij["unit"] == "mm" and ij["slices"] == SHAPE[0]
        assert tif.pages[0].resolution == pytest.approx((1 / VS[2], 1 / VS[1]), rel=1e-6)
        assert json.loads(ij["unrolled3d"])["voxel_size_zyx_mm"] == list(VS)
    write_volume(tmp_path / "v64.tif", v.double(), VS)
    with tifffile.TiffFile(tmp_path / "v64.tif") as tif:
        assert len(tif.pages) == SHAPE[0] and not tif.is_imagej
        assert json.loads(tif.pages[0].description)["voxel_size_zyx_mm"] == list(VS)


def test_tiff_from_imagej_and_without_metadata(tmp_path):
    v = volume().numpy()
    tifffile.imwrite(tmp_path / "fiji.tif", v, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "mm", "axes": "ZYX"})
    r, vs = read_volume(tmp_path / "fiji.tif")
    assert np.array_equal(r.numpy(), v) and vs == (2.0, 0.25, 0.5)  # (spacing, 1/YRes, 1/XRes)
    with tifffile.TiffWriter(tmp_path / "plain.tif") as w:
        for k in range(SHAPE[0]):
            w.write(v[k], metadata=None)
    r, vs = read_volume(tmp_path / "plain.tif")
    assert np.array_equal(r.numpy(), v) and vs == (1.0, 1.0, 1.0)


def test_npy_sidecar_is_the_files_module_format(tmp_path):
    v = volume()
    write_volume(tmp_path / "v.npy", v, VS)
    assert json.loads((tmp_path / "v.json").read_text())["voxel_size_zyx_mm"] == list(VS)
    r, vs = files.load_volume(tmp_path / "v.npy")
    assert torch.equal(r, v) and vs == VS
    files.save_volume(tmp_path / "f.pt", v, VS)  # and the other way round
    r, vs = read_volume(tmp_path / "f.pt")
    assert torch.equal(r, v) and vs == VS


def test_npy_without_sidecar_is_1mm(tmp_path):
    np.save(tmp_path / "v.npy", volume().numpy())
    assert read_volume(tmp_path / "v.npy")[1] == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("ext", EXTS)
def test_truncated_file_is_rejected(tmp_path, ext):
    path = tmp_path / f"vol{ext}"
    write_volume(path, volume(shape=(6, 20, 30)), VS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"vol{ext.replace('.', '[.]')}.*(truncated|corrupt)"):
        read_volume(path)


@pytest.mark.parametrize("ext", EXTS)
def test_missing_file(tmp_path, ext):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_volume(tmp_path / f"missing{ext}")


@pytest.mark.parametrize("name", ["v.raw", "v.nii.zip", "v", "v.npz"])
def test_unknown_extension_lists_the_supported_ones(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    for call in (lambda: read_volume(tmp_path / name), lambda: write_volume(tmp_path / name, volume())):
        with pytest.raises(ValueError, match="supported endings are .npy, .nii, .nii.gz, .h5, .hdf5, .tif, .tiff"):
            call()
    assert set(SUPPORTED_EXTENSIONS) == set(EXTS)


def test_garbage_with_a_good_extension(tmp_path):
    for ext in EXTS:
        (tmp_path / f"g{ext}").write_bytes(b"\x00 this is not a volume file " * 8)
        with pytest.raises(ValueError, match=f"g{ext.replace('.', '[.]')}"):
            read_volume(tmp_path / f"g{ext}")


def test_wrong_number_of_dimensions(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((4, 5), np.float32))
    with h5py.File(tmp_path / "four.h5", "w") as f:
        f["volume"] = np.zeros((2, 3, 4, 5), np.float32)
    tifffile.imwrite(tmp_path / "page.tif", np.zeros((4, 5), np.float32))
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 2), np.float32), np.eye(4)), tmp_path / "four.nii")
    for name in ("two.npy", "four.h5", "page.tif", "four.nii"):
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*3D"):
            read_volume(tmp_path / name)


def test_missing_hdf5_dataset(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["data"] = np.zeros(SHAPE, np.float32)
        f.create_group("volume_group")
    with pytest.raises(ValueError, match=r"v\.h5: no dataset 'volume'.*'data'"):
        read_volume(tmp_path / "v.h5")
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("volume")
    with pytest.raises(ValueError, match="is a group"):
        read_volume(tmp_path / "g.h5")


def test_non_numeric_dtypes(tmp_path):
    np.save(tmp_path / "s.npy", np.full(SHAPE, "abc"))
    np.save(tmp_path / "c.npy", np.zeros(SHAPE, np.complex64))
    np.save(tmp_path / "o.npy", np.full(SHAPE, None, dtype=object), allow_pickle=True)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["volume"] = np.full(SHAPE, b"abc")
    for name in ("s.npy", "c.npy", "s.h5"):
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*non-numeric"):
            read_volume(tmp_path / name)
    with pytest.raises(ValueError, match="Python objects"):
        read_volume(tmp_path / "o.npy")
    (tmp_path / "j.npy").write_bytes(b"junk" * 30)
    with pytest.raises(ValueError, match="no NumPy header"):
        read_volume(tmp_path / "j.npy")


def test_bad_sidecar(tmp_path):
    write_volume(tmp_path / "v.npy", volume(), VS)
    np.save(tmp_path / "v.npy", np.zeros((2, 2, 2), np.float32))  # volume replaced, sidecar stale
    with pytest.raises(ValueError, match="stale sidecar"):
        read_volume(tmp_path / "v.npy")
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"v\.json.*not a valid voxel-size sidecar"):
        read_volume(tmp_path / "v.npy")
    (tmp_path / "v.json").write_text(json.dumps({"voxel_size_zyx_mm": [1, -1, 1]}))
    with pytest.raises(ValueError, match="positive"):
        read_volume(tmp_path / "v.npy")


def test_directory_is_not_a_volume(tmp_path):
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(ValueError, match="not a file"):
        read_volume(tmp_path / "d.h5")


@pytest.mark.parametrize("vol, voxel_size, exc, match", [
    (torch.zeros(2, 1, 3, 4, 5), 1.0, ValueError, "shape"),
    (torch.zeros(4, 5), 1.0, ValueError, "shape"),
    (torch.zeros(0, 4, 5), 1.0, ValueError, "empty"),
    (torch.zeros(3, 4, 5, dtype=torch.complex64), 1.0, TypeError, "real"),
    ([[[0.0]]], 1.0, TypeError, "torch.Tensor or numpy.ndarray"),
    (torch.zeros(3, 4, 5), (1.0, 1.0), ValueError, "3 entries"),
    (torch.zeros(3, 4, 5), -1.0, ValueError, "positive"),
    (torch.zeros(3, 4, 5), "big", TypeError, "voxel_size"),
    (torch.zeros(3, 4, 5), float("nan"), ValueError, "finite"),
])
def test_write_rejects_bad_arguments(tmp_path, vol, voxel_size, exc, match):
    with pytest.raises(exc, match=match):
        write_volume(tmp_path / "v.h5", vol, voxel_size)
    assert not any(tmp_path.iterdir())


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "v.pt"
    write_volume(path, volume(seed=1), VS)

    def crash(obj, f, *a, **k):
        open(f, "wb").write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_volume(path, volume(seed=2), VS)
    monkeypatch.undo()
    assert torch.equal(read_volume(path)[0], volume(seed=1)) and [p.name for p in tmp_path.iterdir()] == ["v.pt"]
