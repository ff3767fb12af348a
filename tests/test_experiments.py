"""bench/experiments' baselines (issue 28): the layout mbirjax reads our volumes in, and the TV solver's
runs continued from checkpoints (mbirjax itself runs in its own environment, not here)."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.bench.experiments.baselines import TVPGD, volume_from_mbirjax, volume_to_mbirjax
from unrolled3d.physics import ConeBeamCT, standard_cone_beam


def test_our_volume_is_mbirjax_rows_cols_slices_with_y_mirrored():
    x = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 1, 3, 4, 5)  # (z, y, x)
    v = volume_to_mbirjax(x)
    assert v.shape == (4, 5, 3)  # (rows = -y, cols = x, slices = z)
    z, y, col = 2, 1, 3
    assert v[4 - 1 - y, col, z] == x[0, 0, z, y, col]
    assert torch.equal(volume_from_mbirjax(v), x)


def test_tv_runs_continued_from_checkpoints_are_one_long_run(one_thread):
    physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 2:6, 2:6, 3:5] = 1.0
    y = physics.A(x) + 0.01 * torch.randn(physics.A(x).shape, generator=torch.Generator().manual_seed(0))
    x0 = physics.A_dagger(y, window="hann")
    staged = TVPGD(0.01, inner=5).run(y, physics, x0, [3, 6])
    whole = TVPGD(0.01, inner=5).run(y, physics, x0, [6])
    torch.testing.assert_close(staged[6], whole[6], rtol=1e-5, atol=1e-6)
    # the iterations reduce the TV-regularised objective from the FDK start
    from deepinv.optim.prior import TVPrior

    def objective(u):
        return 0.5 * float((physics.A(u) - y).pow(2).sum()) + 0.01 * float(TVPrior().fn(u).sum())
    assert objective(whole[6]) < objective(staged[3]) < objective(x0)


def test_tv_refuses_a_non_positive_weight():
    with pytest.raises(ValueError, match="lam"):
        TVPGD(0.0)


def _inv3(path, hu, spacing_xyz, modality="CT"):
    """A minimal InVesalius 3 project: a gzipped tar of a folder with main.plist and matrix.dat."""
    import io
    import plistlib
    import tarfile

    meta = {"modality": modality, "matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(hu.shape)},
            "spacing": list(spacing_xyz)}
    with tarfile.open(path, "w:gz") as t:
        for name, data in (("main.plist", plistlib.dumps(meta)), ("matrix.dat", hu.astype("<i2").tobytes())):
            info = tarfile.TarInfo(f"tmpabc/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_an_invesalius_project_reads_as_hounsfield_slices_with_the_spacing_reversed(tmp_path):
    np = pytest.importorskip("numpy")
    from unrolled3d.bench.experiments.real_volumes import load_inv3

    hu = np.arange(-1024, -1024 + 3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # (slices, rows, columns)
    _inv3(tmp_path / "head.inv3", hu, (0.5, 0.75, 2.0))
    vol, voxel = load_inv3(tmp_path / "head.inv3")
    assert vol.dtype == np.float32 and np.array_equal(vol, hu.astype(np.float32))
    assert voxel == (2.0, 0.75, 0.5)  # (D, H, W) = (slice, row, column) spacings


def test_an_invesalius_project_of_another_modality_is_refused(tmp_path):
    np = pytest.importorskip("numpy")
    from unrolled3d.bench.experiments.real_volumes import load_inv3

    _inv3(tmp_path / "head.inv3", np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0), modality="MRI")
    with pytest.raises(SystemExit, match="modality 'MRI', expected CT"):
        load_inv3(tmp_path / "head.inv3")


def test_a_member_of_a_source_archive_in_the_cache_is_read_without_a_download(tmp_path, monkeypatch):
    import io
    import tarfile

    from unrolled3d.bench.experiments import real_volumes

    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "pkg-1.0.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("pkg-1.0/data/vol.bin")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    monkeypatch.setattr(real_volumes.subprocess, "run", lambda *a, **k: pytest.fail(f"downloaded: {a}"))
    path = real_volumes._fetch("sdist:pkg==1.0", "pkg-1.0/data/vol.bin", cache)
    assert path.read_bytes() == b"abc"
    assert path == cache / "pkg-1.0" / "pkg-1.0" / "data" / "vol.bin"
