"""Self-ensembles of the denoiser (``unrolled3d.models.ensemble``; ``reconstruct(self_ensemble=...)``,
``--self-ensemble``).

Independent truths: maps whose ensemble is known in closed form (a one-voxel circular shift along x
averages with its mirror image, the shift the other way; a constant added to the imaginary part
cancels against its conjugate), flip-equivariance of the ensembled UNet (which the plain UNet lacks,
so the check can fail), and the API's result against the reconstructor run by hand.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

import unrolled3d
from unrolled3d.cli import main
from unrolled3d.cli.main import SELF_ENSEMBLES as CLI_ENSEMBLES
from unrolled3d.data import PhantomDataset
from unrolled3d.io import save_model
from unrolled3d.models import UNet3D, UnrolledPGD, build_model
from unrolled3d.models.ensemble import (SELF_ENSEMBLES, Symmetry, ensembled, self_ensemble, symmetries,
                                        with_self_ensemble)
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

FLIP_SETS = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]


def test_the_groups_are_the_flips_and_their_conjugates_each_its_own_inverse():
    z = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64)
    flips = symmetries("flips", channels=1)
    assert sorted(g.flip_dims for g in flips) == sorted(FLIP_SETS) and not any(g.conj for g in flips)
    both = symmetries("flips+conj", channels=2)
    assert len(both) == 16 and len({(g.flip_dims, g.conj) for g in both}) == 16
    assert symmetries("none", channels=1) == [Symmetry()]
    images = [g(z) for g in both]
    for g, gz in zip(both, images):
        torch.testing.assert_close(g(gz), z, rtol=0, atol=0)
    assert all(not torch.equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])  # 16 distinct images
    torch.testing.assert_close(Symmetry((), True)(z)[:, 1], -z[:, 1], rtol=0, atol=0)


def test_a_shift_averages_with_its_mirror_image():
    """f = circular shift by one voxel along x: its flip-ensemble is the mean of the shifts +1 and -1 along x
    (a flip along x turns the shift around; flips along z and y commute with it)."""
    z = torch.randn(2, 1, 4, 5, 6, dtype=torch.float64)
    out = self_ensemble(lambda v: torch.roll(v, 1, dims=4), z, symmetries("flips", channels=1))
    expected = (torch.roll(z, 1, dims=4) + torch.roll(z, -1, dims=4)) / 2
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_conjugation_cancels_an_imaginary_offset():
    """f = z + i (channel 1 plus one): conj(conj(z) + i) = z - i, so the 16-element ensemble is z."""
    z = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    offset = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 2, 1, 1, 1)
    out = self_ensemble(lambda v: v + offset, z, symmetries("flips+conj", channels=2))
    torch.testing.assert_close(out, z, rtol=1e-12, atol=1e-12)
    flips_only = self_ensemble(lambda v: v + offset, z, symmetries("flips", channels=2))
    torch.testing.assert_close(flips_only, z + offset, rtol=1e-12, atol=1e-12)  # flips leave a constant alone


def test_the_ensembled_denoiser_is_flip_equivariant_and_the_plain_one_is_not():
    torch.manual_seed(0)
    net = UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1).double().eval()
    z = torch.randn(1, 1, 8, 8, 8, dtype=torch.float64)
    g = Symmetry((2, 4))
    with torch.no_grad():
        plain_gap = (net._denoise(0, g(z)) - g(net._denoise(0, z))).abs().max()
        ens = with_self_ensemble(net, "flips")
        torch.testing.assert_close(ens._denoise(0, g(z)), g(ens._denoise(0, z)), rtol=1e-10, atol=1e-10)
    assert plain_gap > 1e-3  # the check above could fail: the plain UNet is not equivariant


def test_with_self_ensemble_copies_shallowly_and_leaves_the_model_alone():
    net = UnrolledPGD(UNet3D(base=2, depth=1), n_iter=2)
    ens = with_self_ensemble(net, "flips")
    assert ens is not net and net.self_ensemble == "none" and ens.self_ensemble == "flips"
    assert all(a is b for a, b in zip(ens.parameters(), net.parameters()))  # the same weights, not copies
    assert with_self_ensemble(net, "none") is net
    assert ensembled(net, "none") is net  # no reconstructor is rebuilt for "none"
    assert set(ens.state_dict()) == set(net.state_dict())  # an inference setting, not saved with the weights


@pytest.mark.parametrize("call, error, match", [
    (lambda: symmetries("rot90", 1), ValueError, "self_ensemble must be one of"),
    (lambda: symmetries("flips+conj", 1), ValueError, "needs complex images"),
    (lambda: symmetries(None, 1), TypeError, "self_ensemble must be one of"),
    (lambda: UnrolledPGD(UNet3D(base=2, depth=1), self_ensemble="all"), ValueError, "self_ensemble must be one of"),
    (lambda: with_self_ensemble(torch.nn.Identity(), "flips"), ValueError, "needs an UnrolledPGD"),
    (lambda: ensembled(None, "all"), ValueError, "self_ensemble must be one of"),
])
def test_bad_settings_are_refused_naming_the_option(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_command_line_lists_the_library_s_ensembles():
    assert CLI_ENSEMBLES == SELF_ENSEMBLES


# ---------------------------------------------------------------------------------- reconstruct
S, VIEWS = 16, 8


@pytest.fixture(scope="module")
def scan_and_model(tmp_path_factory):
    g = standard_cone_beam(S, VIEWS)
    y = ConeBeamCT(g, progress=False).A(PhantomDataset(1, S, seed=5)[0][None])
    # random weights of base 4 (at base 2 most ReLUs are dead and the output is nearly constant,
    # which no ensemble changes)
    cfg = {"geometry": {"size": S, "views": VIEWS}, "phantoms": {"kind": "ellipsoids", "seed": 0},
           "model": {"n_iter": 2, "base": 4, "depth": 1, "shared": True}, "partition": {"patch": 8},
           "train": {"noise_std": 0.02}}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ens") / "m.pt"
    save_model(path, build_model(cfg, (S, S, S)), cfg)
    return g, y, path


def test_reconstruct_with_flips_is_the_ensembled_reconstructor_by_hand(scan_and_model):
    g, y, path = scan_and_model
    opts = {"model": path, "patch_size": 8, "n_sweeps": 1, "precision": "float32", "progress": False,
            "scale_check": "ignore"}
    plain = unrolled3d.reconstruct(y, g, **opts)
    got = unrolled3d.reconstruct(y, g, self_ensemble="flips", **opts)
    model = unrolled3d.load_pretrained(path)
    rec = model.reconstructor(g.vol_shape, 8).with_patch_size(8, 6, 1)
    base = copy.copy(rec.base)
    base.amp = False
    calls = []
    base.denoisers[0].register_forward_hook(lambda *a: calls.append(1))
    physics = ConeBeamCT(g, normalize=True, progress=False)
    y_n = physics.normalize_measurements(y)
    with torch.no_grad():
        x0 = physics.A_dagger(y_n)
        scale = model.normalization.measurement_scale(x0)
        expected = rec.with_base(with_self_ensemble(base, "flips"))(y_n * scale, physics, x_init=x0 * scale) / scale
    assert len(calls) == 8 * 2 * len(rec.patches())  # 8 flips, 2 iterations, each patch once
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert float((got - plain).abs().max()) > 1e-3  # the option is not ignored


def test_a_streamed_reconstruction_takes_the_ensemble_too(scan_and_model, tmp_path):
    from unrolled3d.io.stores import ArrayStore

    g, y, path = scan_and_model
    opts = {"model": path, "patch_size": 8, "precision": "float32", "progress": False, "scale_check": "ignore",
            "self_ensemble": "flips"}
    expected = unrolled3d.reconstruct(y, g, **opts)
    out = unrolled3d.reconstruct(ArrayStore(y[0, 0].numpy()), g, out=tmp_path / "x.zarr", memory_budget="1G", **opts)
    torch.testing.assert_close(torch.from_numpy(out.read((0, 0, 0), g.vol_shape)), expected[0, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"self_ensemble": "rot90"}, "self_ensemble must be one of"),
    ({"self_ensemble": "flips+conj"}, "for complex \\(MRI\\) images"),
    ({"model": None, "method": "fdk", "self_ensemble": "flips"}, "^self_ensemble apply to method='unrolled'"),
])
def test_reconstruct_refuses_bad_ensembles(scan_and_model, kwargs, match):
    g, y, path = scan_and_model
    with pytest.raises(ValueError, match=match):
        unrolled3d.reconstruct(y, g, **{"model": path, "progress": False, **kwargs})


def test_the_command_line_runs_and_reports_the_ensemble(scan_and_model, tmp_path, capsys):
    _, _, path = scan_and_model
    assert main(["simulate", "--size", str(S), "--views", str(VIEWS), "--output", str(tmp_path / "y.pt"),
                 "--quiet"]) == 0
    argv = ["reconstruct", str(tmp_path / "y.pt"), "--method", "unrolled", "--weights", str(path),
            "--scale-check", "ignore", "--self-ensemble", "flips", "--output", str(tmp_path / "x.npy"), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["self_ensemble"] == "flips"
    assert main(["reconstruct", str(tmp_path / "y.pt"), "--self-ensemble", "flips", "--output",
                 str(tmp_path / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert "--self-ensemble apply to --method unrolled, not to FDK" in err and not (tmp_path / "f.npy").exists()
