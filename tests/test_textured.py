"""The textured procedural phantom (issue 17): deterministic per item, the anatomy-like
ingredients present (smooth variation, texture, thin high-contrast structure), and usable from the
command line's [phantoms] kind."""
from __future__ import annotations


import pytest
import torch

from unrolled3d.data import PhantomDataset
from unrolled3d.data.textured import textured_phantom

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def volumes() -> list[torch.Tensor]:
    return [PhantomDataset(3, 40, kind="textured", seed=4)[i][0] for i in range(3)]


def test_deterministic_per_item_and_different_between_items(volumes):
    ds = PhantomDataset(3, 40, kind="textured", seed=4)
    assert torch.equal(ds[1][0], volumes[1]) and ds[1].shape == (1, 40, 40, 40)
    assert not torch.equal(volumes[0], volumes[1])
    assert not torch.equal(PhantomDataset(3, 40, kind="textured", seed=5)[0][0], volumes[0])


def test_non_negative_zero_outside_the_body_and_in_range(volumes):
    for x in volumes:
        assert x.dtype == torch.float32 and bool(torch.isfinite(x).all()) and float(x.min()) == 0.0
        assert float(x[0].abs().max()) == 0.0 and float(x[:, 0].abs().max()) == 0.0  # the borders are air
        assert 0.8 < float(x.max()) < 1.3


def test_soft_tissue_varies_smoothly_and_has_texture(volumes):
    """Unlike piecewise-constant ellipsoids: neighbouring soft-tissue voxels differ (texture), and
    distant regions have different mean levels (smooth variation)."""
    for x in volumes:
        tissue = (x > 0.15) & (x < 0.4)
        pairs = tissue[:, :, 1:] & tissue[:, :, :-1]
        diffs = (x[:, :, 1:] - x[:, :, :-1])[pairs]
        assert float((diffs.abs() > 1e-4).float().mean()) > 0.9  # almost no flat neighbour pairs
        blocks = [x[z:z + 8, y:y + 8, w:w + 8][tissue[z:z + 8, y:y + 8, w:w + 8]] for z, y, w in
                  ((12, 12, 12), (20, 20, 20), (12, 20, 24), (24, 12, 16))]
        means = torch.stack([b.mean() for b in blocks if b.numel() > 100])
        assert len(means) >= 2 and float(means.max() - means.min()) > 0.005
    ellipsoids = PhantomDataset(1, 40, seed=4)[0][0]
    inside = ellipsoids > 0
    pairs = inside[:, :, 1:] & inside[:, :, :-1]
    assert float(((ellipsoids[:, :, 1:] - ellipsoids[:, :, :-1])[pairs].abs() > 1e-4).float().mean()) < 0.2


def test_fine_high_contrast_structure_is_thin(volumes):
    """Bright voxels exist, and most touch a darker voxel: sheets, vessels and dots of one or two
    voxels, not large bright blobs (the shell aside, which is a few voxels thick too)."""
    for x in volumes:
        bright = x > 0.55
        assert int(bright.sum()) > 50
        core = bright[1:-1, 1:-1, 1:-1].clone()
        for axis in range(3):
            for shift in (1, -1):
                core &= torch.roll(bright, shift, axis)[1:-1, 1:-1, 1:-1]
        assert int(core.sum()) < 0.35 * int(bright.sum())


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 8"):
        textured_phantom((4, 16, 16), torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        textured_phantom(16, 0)
    with pytest.raises(ValueError, match="voxel grid"):
        PhantomDataset(2, 16, kind="textured").phantom(0)


def test_the_command_line_trains_on_textured_phantoms(tmp_path):
    from unrolled3d.cli import main
    from unrolled3d.io import load_model

    (tmp_path / "c.toml").write_text("[geometry]\nsize = 16\nviews = 8\n[phantoms]\nkind = \"textured\"\n"
                                     "[model]\nn_iter = 1\nbase = 2\ndepth = 1\n[partition]\npatch = 8\n"
                                     "[train]\nsteps = 1\n")
    assert main(["train", str(tmp_path / "c.toml"), "--out-dir", str(tmp_path / "run"), "--quiet"]) == 0
    _, config = load_model(tmp_path / "run" / "model.pt")
    assert config["phantoms"]["kind"] == "textured" and config["normalization"] == {"kind": "attenuation"}
