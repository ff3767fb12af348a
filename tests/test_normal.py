"""The diagonal-circulant H (DiagCirculantNormal) and the paper's DiagCirculantWrapper: fitting, variants,
patch restriction, files, the wrapper as an exact physics carrying H, bad input."""
from __future__ import annotations

import pytest
import torch
from deepinv.physics import LinearPhysics

from unrolled3d.errors import FileFormatError
from unrolled3d.normal import (
    FILE_FORMAT, DiagCirculantNormal, DiagCirculantPatch, DiagCirculantWrapper, apply_diag_circulant, fit_normal,
    init_from_psf, load_normal, relative_error, save_normal,
)
from unrolled3d.partition import NormalPatchBatch
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry
from unrolled3d.protocols import CarriesNormal, NormalApproximation, NormalEquationPhysics, ParametrizedNormal

F64 = torch.float64


class ExactlyDiagCirculant(LinearPhysics):
    """A = C_g P diag(m): masked, zero-padded, circularly convolved on the doubled grid, so that
    A^T A = diag(m) F^-1 |G|^2 F diag(m) is exactly of the form H (lam = |G|^2)."""

    def __init__(self, m: torch.Tensor, g_spec: torch.Tensor):
        super().__init__(img_size=(1, *m.shape))
        self.m, self.g_spec = m, g_spec
        self.shape, self.pad = tuple(m.shape), tuple(2 * s for s in m.shape)

    def A(self, x, **kw):
        buf = torch.zeros((*x.shape[:2], *self.pad), dtype=x.dtype)
        buf[..., : self.shape[0], : self.shape[1], : self.shape[2]] = x * self.m
        return torch.fft.irfftn(torch.fft.rfftn(buf, dim=(-3, -2, -1)) * self.g_spec, s=self.pad, dim=(-3, -2, -1))

    def A_adjoint(self, y, **kw):
        out = torch.fft.irfftn(torch.fft.rfftn(y, dim=(-3, -2, -1)) * self.g_spec.conj(), s=self.pad,
                               dim=(-3, -2, -1))
        return out[..., : self.shape[0], : self.shape[1], : self.shape[2]] * self.m


def _synthetic(shape=(6, 7, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    m = 0.5 + torch.rand(shape, generator=gen, dtype=F64)
    kernel = torch.zeros(tuple(2 * s for s in shape), dtype=F64)
    kernel[:3, :3, :3] = torch.rand((3, 3, 3), generator=gen, dtype=F64)  # a small blur
    return ExactlyDiagCirculant(m, torch.fft.rfftn(kernel))


def test_fit_recovers_an_exactly_diag_circulant_operator():
    physics = _synthetic()
    wrapper = DiagCirculantWrapper(physics, (6, 7, 5), dtype=F64)
    history = wrapper.fit(n_iter=1500, batch_size=2, lr=5e-2, progress=False)
    err = wrapper.relative_error(n_probes=3)
    print(f"synthetic H: relative error {history[0]:.3e} (PSF init) -> {err:.3e} after fit")
    assert err < 1e-3


def _ct(n=64, views=60):
    g = ConeBeamGeometry.circular(views, 4.0 * n, 2.0 * n, (n, int(1.25 * n)), 1.5, (n, n, n))
    return ConeBeamCT(g)


@pytest.mark.slow
def test_fit_on_cone_beam_beats_identity_and_unmasked_circulant():
    physics = _ct()
    scaling = float(physics.compute_sqnorm(torch.randn(1, 1, 64, 64, 64), max_iter=30, tol=1e-3, verbose=False))
    fitted = DiagCirculantWrapper(physics, (64, 64, 64), scaling=scaling)
    fitted.fit(n_iter=120, batch_size=1, lr=1e-2, progress=False)
    circulant = DiagCirculantWrapper(physics, (64, 64, 64), scaling=scaling)
    circulant.fit(n_iter=120, batch_size=1, lr=1e-2, fit_mask=False, progress=False)
    # best multiple of the identity, c = <A^T A x, x> / <x, x>, on fresh probes
    x = torch.randn((2, 1, 64, 64, 64), generator=torch.Generator().manual_seed(12345))
    t = torch.cat([fitted.exact_normal(x[i : i + 1]) for i in range(2)])
    c = float((t * x).sum() / (x * x).sum())
    err_id = float((t - c * x).norm() / t.norm())
    err_circ, err_fit = circulant.relative_error(), fitted.relative_error()
    print(f"cone beam 64^3, 60 views: relative error identity {err_id:.4f}, unmasked circulant "
          f"{err_circ:.4f}, masked diag-circulant {err_fit:.4f}")
    assert err_fit < err_circ < err_id


@pytest.mark.parametrize("variant", ["sandwich", "one_sided", "symmetric"])
def test_restricted_operator_equals_restriction_of_full_operator(variant):
    physics = _synthetic(shape=(9, 8, 10))
    gen = torch.Generator().manual_seed(1)
    wrapper = DiagCirculantWrapper(physics, (9, 8, 10), dtype=F64, variant=variant, scaling=2.5)
    kernel = torch.randn((18, 16, 20), generator=gen, dtype=F64)  # a kernel with every lag non-zero
    wrapper.set_parameters(1 + torch.rand((9, 8, 10), generator=gen, dtype=F64), torch.fft.rfftn(kernel))
    offset, shape = (2, 1, 3), (5, 4, 6)
    patch = wrapper.normal.restrict(offset, shape)
    xp = torch.randn((2, 1, *shape), generator=gen, dtype=F64)
    full = torch.zeros((2, 1, 9, 8, 10), dtype=F64)
    full[..., 2:7, 1:5, 3:9] = xp
    expected = wrapper.normal.apply(full)[..., 2:7, 1:5, 3:9]
    torch.testing.assert_close(patch.A_adjoint_A(xp), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(patch.data_gradient(xp, expected), torch.zeros_like(xp), rtol=0, atol=1e-12)


def test_symmetric_variant_is_self_adjoint_and_one_sided_is_not():
    physics = _synthetic()
    gen = torch.Generator().manual_seed(2)
    lam = torch.fft.rfftn(torch.randn((12, 14, 10), generator=gen, dtype=F64))
    m = 1 + torch.rand((6, 7, 5), generator=gen, dtype=F64)
    x, y = (torch.randn((1, 1, 6, 7, 5), generator=gen, dtype=F64) for _ in range(2))

    def gap(variant):
        hx, hy = (apply_diag_circulant(t, m, lam, variant) for t in (x, y))
        return abs(float((hx * y).sum() - (x * hy).sum())) / float(hx.norm() * y.norm())

    assert gap("symmetric") < 1e-13
    assert gap("one_sided") > 1e-3


def test_gradcheck_in_mask_and_filter():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((1, 1, 3, 2, 3), generator=gen, dtype=F64)
    m = (1 + torch.rand((3, 2, 3), generator=gen, dtype=F64)).requires_grad_()
    lam = torch.fft.rfftn(torch.randn((6, 4, 6), generator=gen, dtype=F64)).requires_grad_()
    for variant in ("sandwich", "symmetric"):
        assert torch.autograd.gradcheck(lambda mm, ll: apply_diag_circulant(x, mm, ll, variant), (m, lam))


def test_save_load_round_trip_and_geometry_check(tmp_path):
    physics = _ct(n=16, views=12)
    w = DiagCirculantWrapper(physics, (16, 16, 16))
    w.fit(n_iter=3, progress=False)
    path = tmp_path / "h.pt"
    w.save(path)
    other = DiagCirculantWrapper(physics, (16, 16, 16)).load(path)
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(other.normal.apply(x), w.normal.apply(x))
    moved = ConeBeamCT(ConeBeamGeometry.circular(12, 64.0, 32.0, (16, 20), 1.5, (16, 16, 16), det_offset=(0, 1)))
    with pytest.raises(ValueError, match="refit"):
        DiagCirculantWrapper(moved, (16, 16, 16)).load(path)
    with pytest.raises(ValueError, match="volume of"):
        DiagCirculantWrapper(_ct(n=16, views=12), (16, 16, 15)).load(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        DiagCirculantWrapper(physics, (16, 16, 16)).load(tmp_path / "junk.pt")


def test_bad_input():
    physics = _synthetic()
    with pytest.raises(TypeError, match="LinearPhysics"):
        DiagCirculantWrapper("physics", (6, 7, 5))
    with pytest.raises(ValueError, match="img_size"):
        DiagCirculantWrapper(physics, (6, 7))
    with pytest.raises(ValueError, match="variant"):
        DiagCirculantWrapper(physics, (6, 7, 5), variant="two_sided")
    with pytest.raises(ValueError, match="scaling"):
        DiagCirculantWrapper(physics, (6, 7, 5), scaling=0.0)
    w = DiagCirculantWrapper(physics, (6, 7, 5), dtype=F64)
    with pytest.raises(RuntimeError, match="no parameters yet"):
        w.normal.apply(torch.zeros(1, 1, 6, 7, 5, dtype=F64))
    with pytest.raises(ValueError, match="fourier_filter must be a tensor of shape"):
        w.set_parameters(fourier_filter=torch.zeros(12, 14, 5))
    with pytest.raises(ValueError, match="spatial_mask must be a tensor of shape"):
        w.set_parameters(spatial_mask=torch.zeros(6, 7))
    w.init_from_psf()
    with pytest.raises(ValueError, match="spatial shape"):
        w.normal.apply(torch.zeros(1, 1, 6, 7, 6, dtype=F64))
    with pytest.raises(TypeError, match="float32"):
        w.normal.apply(torch.zeros(1, 1, 6, 7, 5, dtype=torch.float32))
    with pytest.raises(ValueError, match="outside the volume"):
        w.normal.restrict((4, 0, 0), (3, 3, 3))
    with pytest.raises(ValueError, match="n_probes"):
        w.fit(n_iter=1, n_probes=1, batch_size=2, progress=False)


# ----------------------------------------------------------------------------- H apart from the physics
def test_the_wrapper_is_an_exact_physics_carrying_H():
    physics = _ct(n=12, views=10)
    w = DiagCirculantWrapper(physics, (12, 12, 12), dtype=F64).init_from_psf()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn((1, 1, 12, 12, 12), generator=gen, dtype=F64)
    y = torch.randn(physics.A(x).shape, generator=gen, dtype=F64)
    # every operator method is the physics' own: a solver sees one operator whichever it calls
    assert torch.equal(w.A(x), physics.A(x)) and torch.equal(w.A_adjoint(y), physics.A_adjoint(y))
    assert torch.equal(w.A_adjoint_A(x), physics.A_adjoint(physics.A(x)))
    assert torch.equal(w.A_dagger(y), physics.A_dagger(y))
    gap = abs(float((w.A(x) * y).sum() - (x * w.A_adjoint(y)).sum())) / float(w.A(x).norm() * y.norm())
    assert gap < 1e-10
    # H is carried beside it (an approximation: not A^T A), found through the protocols
    assert isinstance(w, CarriesNormal) and w.physics is physics and isinstance(w.normal, DiagCirculantNormal)
    assert isinstance(w.normal, ParametrizedNormal) and not isinstance(w, NormalApproximation)
    hx, exact = w.normal.apply(x), w.A_adjoint_A(x)
    assert 1e-3 < float((hx - exact).norm() / exact.norm()) < 1
    # the wrapper reads H's parameters and settings through; around() shares a given H
    assert w.fourier_filter is w.normal.fourier_filter and w.img_shape == (12, 12, 12) and w.fitted
    assert DiagCirculantWrapper.around(physics, w.normal).normal is w.normal
    with pytest.raises(TypeError, match="DiagCirculantNormal"):
        DiagCirculantWrapper.around(physics, w)


def test_the_fit_front_gives_the_wrapper_fit_and_names_the_acquisition():
    physics = _ct(n=16, views=12)
    H = DiagCirculantNormal.for_physics(physics, (16, 16, 16))
    assert H.img_shape == (16, 16, 16) and not H.complex_images and not H.fitted
    history = fit_normal(H, physics, n_iter=4, progress=False)
    w = DiagCirculantWrapper(physics, (16, 16, 16))
    assert w.fit(n_iter=4, progress=False) == history  # the same computation, bit for bit
    assert torch.equal(w.spatial_mask, H.spatial_mask) and torch.equal(w.fourier_filter, H.fourier_filter)
    assert relative_error(H, physics) == w.relative_error()
    assert H.acquisition == physics.fingerprint()
    # the fit reads and writes H through its public interface only: a fresh H given its parameters
    # by set_parameters applies the same operator
    copy = DiagCirculantNormal((16, 16, 16), spatial_mask=H.spatial_mask, fourier_filter=H.fourier_filter)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.equal(copy.apply(x), H.apply(x))
    with pytest.raises(TypeError, match="LinearPhysics"):
        fit_normal(H, "physics", n_iter=1)
    with pytest.raises(TypeError, match="DiagCirculantNormal"):
        fit_normal(w, physics, n_iter=1)


def test_files_are_the_state_dict_plus_metadata(tmp_path):
    physics = _ct(n=16, views=12)
    H = DiagCirculantNormal((16, 16, 16), kernel_radius=5, scaling=2.0, variant="one_sided")
    fit_normal(H, physics, n_iter=2, progress=False)
    path = tmp_path / "h.pt"
    save_normal(H, path)
    raw = torch.load(path, weights_only=True)
    tensors = {k for k, v in raw.items() if isinstance(v, torch.Tensor)}
    assert tensors == set(H.state_dict())
    assert set(raw) - tensors == {"format", "img_shape", "scaling", "variant", "complex_images", "kernel_radius",
                                  "geometry_fingerprint"}
    assert raw["geometry_fingerprint"] == physics.fingerprint() and raw["kernel_radius"] == [5, 5, 5]
    back = load_normal(path, physics)
    assert back.settings() == H.settings() and back.acquisition == H.acquisition
    x = torch.randn(1, 1, 16, 16, 16)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    # the file holds the spectrum of the cut kernel; applying it cuts it again (inverse FFT, lag
    # box, FFT): the same operator up to float32 rounding of those FFTs
    assert rel(back.apply(x), H.apply(x)) < 1e-6
    # the wrapper writes and reads the same files
    w = DiagCirculantWrapper(physics, (16, 16, 16), kernel_radius=5, scaling=2.0, variant="one_sided").load(path)
    assert torch.equal(w.fourier_filter, back.fourier_filter) and torch.equal(w.spatial_mask, back.spatial_mask)
    w.save(tmp_path / "w.pt")
    assert rel(load_normal(tmp_path / "w.pt").apply(x), H.apply(x)) < 1e-6
    # for another geometry: refused
    moved = ConeBeamCT(ConeBeamGeometry.circular(12, 64.0, 32.0, (16, 20), 1.5, (16, 16, 16), det_offset=(0, 1)))
    with pytest.raises(FileFormatError, match="refit"):
        load_normal(path, moved)


def test_old_files_load_and_foreign_files_are_refused_with_a_clear_message(tmp_path):
    physics = _ct(n=16, views=12)
    H = init_from_psf(DiagCirculantNormal((16, 16, 16)), physics)
    # a file written before complex images and kernel radii: neither entry
    old = {"format": FILE_FORMAT, "spatial_mask": H.spatial_mask.detach().clone(),
           "fourier_filter": H.fourier_filter.detach().clone(), "img_shape": [16, 16, 16], "scaling": 1.0,
           "variant": "sandwich", "geometry_fingerprint": physics.fingerprint()}
    torch.save(old, tmp_path / "old.pt")
    back = load_normal(tmp_path / "old.pt", physics)
    assert not back.complex_images and back.kernel_radius is None
    assert torch.equal(back.fourier_filter, H.fourier_filter)
    assert DiagCirculantWrapper.from_file(tmp_path / "old.pt", physics).fitted
    import fractions

    torch.save({**old, "extra": fractions.Fraction(1, 3)}, tmp_path / "pickle.pt")  # weights_only refuses it
    torch.save({**old, "format": "unrolled3d.DiagCirculant/9"}, tmp_path / "future.pt")
    torch.save({**old, "spatial_mask": torch.ones(16, 16, 15)}, tmp_path / "shape.pt")
    torch.save({**old, "variant": "two_sided"}, tmp_path / "variant.pt")
    for name, message in (("pickle.pt", "not a readable"), ("future.pt", "format 'unrolled3d.DiagCirculant/1'"),
                          ("shape.pt", "spatial_mask must be a tensor of shape"), ("variant.pt", "invalid operator")):
        with pytest.raises(FileFormatError, match=f"{name}.*{message}"):
            load_normal(tmp_path / name)
    with pytest.raises(RuntimeError, match="no parameters yet"):
        save_normal(DiagCirculantNormal((4, 4, 4)), tmp_path / "blank.pt")
    with torch.no_grad():
        H.fourier_filter[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_normal(H, tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()


def test_the_patch_operators_declare_the_normal_equation_protocol():
    assert NormalEquationPhysics in DiagCirculantPatch.__mro__  # declared, not only structural
    assert NormalEquationPhysics in NormalPatchBatch.__mro__
    H = DiagCirculantNormal((4, 4, 4), spatial_mask=torch.ones(4, 4, 4), fourier_filter=torch.ones(8, 8, 5))
    assert isinstance(H.restrict((0, 0, 0), (2, 2, 2)), NormalEquationPhysics)


def test_a_parent_modules_apply_reaches_h_as_module_apply():
    """``H.apply(x)`` is H x; a model holding an H keeps torch's ``model.apply(fn)`` (once a TypeError)."""
    H = DiagCirculantNormal((4, 4, 4), spatial_mask=torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(0)),
                            fourier_filter=torch.ones(8, 8, 5))
    parent = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3, padding=1), H)
    seen: list[torch.nn.Module] = []
    assert parent.apply(seen.append) is parent
    assert seen == [parent[0], H, parent]  # children first, as Module.apply visits them
    assert H.apply(seen.append) is H
    x = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(H.apply(x), H(x), rtol=0, atol=0)
    # with lam = 1 the circulant part is the identity (zero padding to 8^3 and cropping back): H x = m^2 x
    torch.testing.assert_close(H.apply(x), H.spatial_mask**2 * x, rtol=1e-6, atol=1e-7)


def test_bad_input_of_the_operator():
    with pytest.raises(ValueError, match="img_size"):
        DiagCirculantNormal((6, 7))
    with pytest.raises(ValueError, match="variant"):
        DiagCirculantNormal((6, 7, 5), variant="two_sided")
    with pytest.raises(ValueError, match="scaling"):
        DiagCirculantNormal((6, 7, 5), scaling=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        DiagCirculantNormal((6, 7, 5), dtype=torch.float16)
    with pytest.raises(ValueError, match="contradicts"):
        DiagCirculantNormal((1, 6, 7, 5), complex_images=True)
    H = DiagCirculantNormal((6, 7, 5))
    with pytest.raises(RuntimeError, match="no parameters yet"):
        H.restrict((0, 0, 0), (2, 2, 2))
    with pytest.raises(ValueError, match="img_size is needed"):
        DiagCirculantNormal.for_physics(LinearPhysics())
