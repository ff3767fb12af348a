"""HDF5 read safely (issue 29): nothing read from outside the file, no plug-in filters, declared sizes
and chunk layouts costed before a read, so that a tiny hostile file can neither leak another file,
nor exhaust the memory, nor hang a percentile's sample."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from reliability_inputs import cli, env, error_lines
from unrolled3d.errors import FileFormatError
from unrolled3d.io import LazyVolume, read_volume

SECRET = np.arange(64, dtype=np.float32).reshape(4, 4, 4) + 1000.0  # "another file's bytes"


def _secret(tmp_path):
    raw = tmp_path / "secret.bin"
    raw.write_bytes(SECRET.tobytes())
    with h5py.File(tmp_path / "secret.h5", "w") as f:
        f["data"] = SECRET
        f["volume"] = SECRET
    return raw


def hostile(tmp_path, kind: str):
    """An HDF5 file whose 'volume' reads another file (external storage, virtual, external link) or
    needs a plug-in filter."""
    raw = _secret(tmp_path)
    path = tmp_path / f"{kind}.h5"
    with h5py.File(path, "w") as f:
        if kind == "external":
            f.create_dataset("volume", shape=(4, 4, 4), dtype="f4", external=[(str(raw), 0, SECRET.nbytes)])
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 4, 4), dtype="f4")
            layout[:] = h5py.VirtualSource(str(tmp_path / "secret.h5"), "data", shape=(4, 4, 4))
            f.create_virtual_dataset("volume", layout)
        elif kind == "link":
            f["volume"] = h5py.ExternalLink(str(tmp_path / "secret.h5"), "/volume")
        elif kind == "filter":
            f.create_dataset("volume", shape=(8, 8, 8), dtype="f4", chunks=(4, 4, 4), compression=32001,
                             allow_unknown_filter=True)
    return path


WORDS = {"external": "external storage", "virtual": "virtual dataset", "link": "external link",
         "filter": "filter 32001"}


@pytest.mark.parametrize("kind", list(WORDS))
def test_hdf5_reading_outside_the_file_or_a_plugin_is_refused(tmp_path, kind):
    """External storage, virtual datasets of other files, external links and plug-in filters are refused by every reader."""
    path = hostile(tmp_path, kind)
    for read in (read_volume, LazyVolume):
        with pytest.raises(FileFormatError, match=rf"{kind}\.h5: .*{WORDS[kind]}"):
            read(path)


def test_virtual_dataset_inside_the_file_still_reads(tmp_path):
    """A virtual dataset whose sources are in the same file is read as before."""
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f["parts"] = SECRET
        layout = h5py.VirtualLayout(shape=(4, 4, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(".", "parts", shape=(4, 4, 4))
        f.create_virtual_dataset("volume", layout)
    assert np.array_equal(read_volume(path)[0].numpy(), SECRET)


def test_simulate_refuses_a_volume_with_external_storage(tmp_path):
    """simulate --volume of a file pointing at another file: exit 2, one line naming it, no measurements written."""
    path = hostile(tmp_path, "external")
    code, _, err = cli("simulate", "--volume", path, "--views", "4", "--output", tmp_path / "m.pt")
    assert code == 2 and len(error_lines(err)) == 1 and "external.h5" in err and "external storage" in err, err
    assert not (tmp_path / "m.pt").exists()


def _huge(path, chunks=(8, 8, 8)):
    """1.4 KB on disk, 10^15 voxels declared (no chunk written: every read is the fill value)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("volume", shape=(100_000,) * 3, dtype="f4", chunks=chunks)
    return path


def test_declared_size_beyond_memory_is_refused_before_reading(tmp_path):
    """read_volume of a file declaring 10^15 voxels: refused at once, naming the size, nothing allocated."""
    with pytest.raises(FileFormatError, match=r"huge\.h5: .*declares 100000 x 100000 x 100000 values \(3\.6 PiB\)"):
        read_volume(_huge(tmp_path / "huge.h5"))


def test_percentile_sample_of_a_huge_declared_volume_is_bounded(tmp_path):
    """The reported hang: 10^15 voxels in 8^3 chunks with the percentile normalisation answers within seconds."""
    path = _huge(tmp_path / "huge.h5")
    script = textwrap.dedent(f"""
        import time
        from unrolled3d.data import IntensityNormalization, RandomCropDataset
        from unrolled3d.errors import FileFormatError
        from unrolled3d.io import LazyVolume
        t = time.perf_counter()
        s = LazyVolume({str(path)!r}).sample(2**21)
        assert 0 < s.size <= 2**21, s.shape
        try:
            RandomCropDataset([{str(path)!r}], 8, normalization=IntensityNormalization("percentile"))
        except FileFormatError as exc:
            print("refused:", exc)
        print("seconds", time.perf_counter() - t)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: " in proc.stdout and "huge.h5" in proc.stdout and "percentile" in proc.stdout, proc.stdout


def _chunks_touched(region, shape, chunks) -> int:
    """How many chunks a read of ``region`` decodes (counted here independently, index by index)."""
    per_axis = []
    for sl, n, c in zip(region, shape, chunks):
        per_axis.append(len({i // c for i in range(*sl.indices(n))}))
    return math.prod(per_axis)


def test_sample_of_a_tiny_chunk_layout_reads_whole_chunks(tmp_path, monkeypatch):
    """A real file of 8^3 chunks: the sample decodes a bounded number of chunks (a 1000^3 file took 40 s silently)."""
    import unrolled3d.io.hdf5 as hdf5

    path = tmp_path / "c8.h5"
    rng = np.random.default_rng(0)
    data = rng.random((192, 192, 192), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("volume", data=data, chunks=(8, 8, 8))
    touched, real = [], hdf5._read

    def counting(p, ds, region):
        touched.append(_chunks_touched(region if isinstance(region, tuple) else (slice(None),) * 3, ds.shape, ds.chunks))
        return real(p, ds, region)

    monkeypatch.setattr(hdf5, "_read", counting)
    sample = LazyVolume(path).sample(2**18)
    # a regular every-3rd-voxel sample would have decoded all 13824 chunks (each voxel of the stride in a new chunk)
    assert sum(touched) <= hdf5.MAX_SAMPLE_CHUNKS and 0 < sample.size <= 2**18
    # the sample still represents the volume: its quartiles are those of the uniform values within 2 %
    np.testing.assert_allclose(np.percentile(sample, [25, 50, 75]), [0.25, 0.5, 0.75], atol=0.02)


def test_block_read_of_a_pathological_chunk_layout_is_refused_with_a_hint(tmp_path):
    """A block read that would decode more chunks than the stated limit is refused, saying how to rechunk."""
    path = tmp_path / "c1.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("volume", shape=(100, 100, 100), dtype="f4", chunks=(1, 1, 1))
    with pytest.raises(FileFormatError, match=r"c1\.h5: reading a block .*1000000 chunks of 1x1x1 .*h5repack"):
        LazyVolume(path).read((0, 0, 0), (100, 100, 100))
    assert LazyVolume(path).read((0, 0, 0), (4, 4, 4)).shape == (4, 4, 4)  # a small block still reads
