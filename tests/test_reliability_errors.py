"""Every error one line naming the file or key and the cause (issue 29): never torch's advice to load
unsafely, never an "internal error" for a hostile file, a volume outside the field of view named as
such, float64 measurements taken, a scan orders of magnitude off a calibrated model refused, long
values shortened, MemoryError an exit-2 error."""
from __future__ import annotations

import pickle

import pytest
import torch

from reliability_inputs import Giant, cli, error_lines, measurements, tiny_model
from unrolled3d.errors import FileFormatError
from unrolled3d.io import load_measurements, load_model, read_volume
from unrolled3d.io.files import MEAS_FORMAT


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_error_does_not_advise_an_unsafe_load(tmp_path):
    """A measurements file holding arbitrary Python objects: named and refused, without torch's weights_only=False advice."""
    path = tmp_path / "m.pt"
    torch.save({"format": MEAS_FORMAT, "y": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(FileFormatError) as err:
        load_measurements(path)
    text = str(err.value)
    assert text.startswith(f"{path}: not a readable measurements file (it holds Python objects"), text
    assert "weights_only" not in text and "two options" not in text and "\x1b[" not in text, text


def test_truncated_torch_file_error_has_no_miniz_advice(tmp_path):
    """A truncated model file: 'truncated or corrupt' naming it, without torch's internal-miniz paragraph."""
    path = tiny_model(tmp_path / "w.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"w\.pt: not a readable model file \(truncated or corrupt") as err:
        load_model(path)
    assert "miniz" not in str(err.value) and "high likelihood" not in str(err.value)


@pytest.mark.parametrize("shape", [(10**4, 10**4, 10**4), (10**18, 10**18, 10**17)], ids=["1e12", "1e53"])
def test_stride0_giant_volume_is_a_clear_error(tmp_path, shape):
    """A .pt volume of a few bytes declaring 10^12 (or 10^53) values: refused naming the file, no MemoryError."""
    path = tmp_path / "v.pt"
    torch.save({"volume": Giant(shape)}, path)
    with pytest.raises(FileFormatError, match=r"v\.pt: .*(declares|more values than any machine)"):
        read_volume(path)
    code, _, err = cli("simulate", "--volume", path, "--views", "4", "--output", tmp_path / "m.pt")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "v.pt" in lines[0] and "internal error" not in err, err


def test_stride0_giant_weight_in_a_model_file_is_a_clear_error(tmp_path):
    """A model file whose weight declares 10^12 values is refused before anything materialises it."""
    path = tiny_model(tmp_path / "w.pt")
    state = torch.load(path, weights_only=True)
    weights = dict(state["state_dict"])
    weights[next(iter(weights))] = Giant((10**4, 10**4, 10**4))
    torch.save({**state, "state_dict": weights}, path)
    with pytest.raises(FileFormatError, match=r"w\.pt: entry 'weight .*declares 10000 x 10000 x 10000 values"):
        load_model(path)


def test_float64_measurements_reconstruct_with_a_float32_model(tmp_path):
    """float64 measurements into the (float32) unrolled reconstruction: taken, not torch's raw dtype error."""
    m = measurements(tmp_path / "m.pt", dtype=torch.float64)
    w = tiny_model(tmp_path / "w.pt")
    code, out, err = cli("reconstruct", m, "--method", "unrolled", "--weights", w, "--output", tmp_path / "x.npy",
                         "--json")
    assert code == 0, err
    assert read_volume(tmp_path / "x.npy")[0].dtype == torch.float32


@pytest.mark.parametrize("argv", [["reconstruct", "--method", "unrolled"], ["reconstruct"], ["fit-normal"]],
                         ids=["unrolled", "fdk", "fit-normal"])
def test_volume_outside_the_field_of_view_is_named(tmp_path, argv):
    """A geometry whose rays all miss the volume: the cause said, not 'reconstruction holds NaN' (or zeros written)."""
    m = measurements(tmp_path / "m.pt", geometry_change={"vol_offset": [100.0, 0.0, 0.0]})
    extra = ["--weights", str(tiny_model(tmp_path / "w.pt"))] if "unrolled" in argv else []
    out = ["--out", str(tmp_path / "h.pt"), "--iters", "2"] if argv[0] == "fit-normal" else ["--output", str(tmp_path / "x.npy")]
    code, _, err = cli(argv[0], m, *argv[1:], *extra, *out)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "m.pt" in lines[0] and "outside the geometry's field of view" in lines[0], err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "h.pt").exists()


def test_a_long_init_path_gives_a_short_error_line(tmp_path):
    """A 4000-character [model] init path (200 KB ones are refused by [model]'s own bound): a short line."""
    init = "x" * 4000
    (tmp_path / "c.toml").write_text(f'[geometry]\nsize = 8\nviews = 4\n[model]\nn_iter = 1\nbase = 2\ndepth = 1\n'
                                     f'init = "{init}"\n[partition]\npatch = 4\n[train]\nsteps = 1\n')
    code, _, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and len(lines[0]) < 1000 and "characters)" in lines[0], err[:2000]


def test_memory_error_is_a_clear_exit_2(monkeypatch):
    """A MemoryError (e.g. numpy's 'Unable to allocate') is one exit-2 line saying memory ran out, not 'internal error'."""
    import unrolled3d.cli.commands as commands

    def exhausted(args):
        raise MemoryError("Unable to allocate 3.64 TiB for an array with shape (10000, 10000, 10000)")

    monkeypatch.setattr(commands, "info", exhausted)
    code, _, err = cli("info")
    assert code == 2 and error_lines(err) == ["unrolled3d info: error: not enough memory: Unable to allocate 3.64 TiB "
                                              "for an array with shape (10000, 10000, 10000)"], err


@pytest.mark.parametrize("scale", ["recorded", "unrecorded"])
@pytest.mark.parametrize("factor", [1e-8, 1e8])
@pytest.mark.parametrize("out", ["x.npy", "x.zarr"], ids=["in-memory", "streamed"])
def test_scan_orders_of_magnitude_off_a_calibrated_model_is_refused(tmp_path, factor, out, scale):
    """A scan scaled by 1e-8 (or 1e8) into an attenuation model: exit 2, one line saying so, not a -111 dB volume."""
    import json

    from unrolled3d.io import save_measurements

    y, g, x, meta = load_measurements(measurements(tmp_path / "m0.pt"))
    m = tmp_path / "m.pt"
    save_measurements(m, y * factor, g, x_true=x * factor, meta=meta)
    w = tiny_model(tmp_path / "w.pt")
    if scale == "unrecorded":  # trained on files before model files recorded their training scale
        state = torch.load(w, weights_only=True)
        config = {**json.loads(state["config"]), "data": {"train": ["volumes/"]}}
        torch.save({**state, "config": json.dumps(config)}, w)
    code, _, err = cli("reconstruct", m, "--method", "unrolled", "--weights", w, "--output", tmp_path / out)
    lines = error_lines(err)
    # the training scale made again from the phantom recipe (api's check), else the fixed range of calibrated values
    said = "the reconstruction would be meaningless" if scale == "recorded" else "orders of magnitude off"
    assert code == 2 and len(lines) == 1 and "w.pt" in lines[0] and said in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m0.pt", "w.pt", "w.toml"]
