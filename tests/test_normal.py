"""DiagCirculantWrapper: fitting, variants, patch restriction, persistence, bad input."""
from __future__ import annotations

import pytest
import torch
from deepinv.physics import LinearPhysics

from unrolled3d.normal import DiagCirculantWrapper, apply_diag_circulant
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

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
