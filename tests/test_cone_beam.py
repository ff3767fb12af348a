"""ConeBeamCT as a deepinv LinearPhysics: deepinv's own expectations of a linear operator."""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry, from_astra_layout, to_astra_layout
from conftest import circular_geometry


@pytest.fixture
def physics() -> ConeBeamCT:
    g = ConeBeamGeometry.circular(24, 120.0, 60.0, (20, 24), 1.4, (12, 16, 16), voxel_size=1.0)
    return ConeBeamCT(g)


def _x(physics, seed=0, dtype=torch.float32):
    return torch.rand((1, *physics.img_size), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_call_and_shapes(physics):
    x = _x(physics)
    y = physics(x)
    assert y.shape == (1, 1, 24, 20, 24)
    assert physics.A_adjoint(y).shape == x.shape
    assert physics.A_dagger(y).shape == x.shape
    assert to_astra_layout(y).shape == (1, 1, 20, 24, 24)
    torch.testing.assert_close(from_astra_layout(to_astra_layout(y)), y)


def test_deepinv_adjointness_test(physics):
    err = physics.adjointness_test(_x(physics, dtype=torch.float64), num_samples=3)
    assert float(err) < 1e-10


def test_compute_norm_matches_explicit_power_iteration(physics):
    x0 = _x(physics, 1, torch.float64)
    sq = float(physics.compute_sqnorm(x0, max_iter=300, tol=1e-7, verbose=False))
    v = x0 / x0.norm()
    for _ in range(300):
        w = physics.A_adjoint(physics.A(v))
        lam = float((v * w).sum())
        v = w / w.norm()
    assert sq == pytest.approx(lam, rel=1e-3)


def test_normalize_gives_unit_norm_and_consistent_dagger():
    g = ConeBeamGeometry.circular(24, 120.0, 60.0, (20, 24), 1.4, (12, 16, 16))
    raw, norm = ConeBeamCT(g), ConeBeamCT(g, normalize=True)
    x = _x(raw, 2, torch.float64)
    assert float(norm.compute_sqnorm(x, max_iter=200, tol=1e-6, verbose=False)) == pytest.approx(1.0, rel=2e-3)
    torch.testing.assert_close(norm.A(x) * norm.operator_norm, raw.A(x))
    # A_dagger inverts the normalised operator: FDK of normalised data equals FDK of raw data
    torch.testing.assert_close(norm.A_dagger(norm.A(x)), raw.A_dagger(raw.A(x)))


def test_operator_norm_is_the_dense_matrix_spectral_norm_and_reproducible():
    # truth: the largest singular value of A built column by column (8*10*10 = 800 columns),
    # on a sparse-view scan whose top eigenvalues cluster (power iteration is slow there)
    g = ConeBeamGeometry.circular(6, 80.0, 40.0, (10, 12), 1.6, (8, 10, 10))
    raw = ConeBeamCT(g)
    eye = torch.eye(8 * 10 * 10, dtype=torch.float32).reshape(-1, 1, 8, 10, 10)
    dense = torch.cat([raw.A(eye[i:i + 200]).reshape(200, -1) for i in range(0, 800, 200)]).T.double()
    truth = float(torch.linalg.matrix_norm(dense, ord=2))
    a = ConeBeamCT(g, normalize=True)
    torch.randn(3)  # moves the global RNG, which must not matter
    b = ConeBeamCT(g, normalize=True)
    # float32 products through the projector: the Ritz value is good to ~1e-6 relative
    assert float(a.operator_norm) == pytest.approx(truth, rel=1e-5)
    assert float(a.operator_norm) == float(b.operator_norm)


def test_pseudo_inverse_lsqr_like_deepinv(physics):
    # deepinv/tests/test_physics.py::test_pseudo_inverse, on our operator
    x = torch.randn((1, *physics.img_size), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = physics.A_adjoint(physics.A(x))
    y = physics.A(r)
    err = (physics.A_dagger(y, solver="lsqr", tol=1e-4, max_iter=50) - r).norm() / r.norm()
    assert float(err) < 0.05


def test_vjp_matches_autograd_like_deepinv(physics):
    # deepinv/tests/test_physics.py::test_linear_physics_Avjp and ::test_adjoint_autograd
    x = _x(physics, 4, torch.float64).requires_grad_()
    loss = dinv.optim.L2()
    y = torch.ones_like(physics(x))
    grad_autograd = torch.func.grad(lambda t: loss(t, y, physics)[0])(x)
    torch.testing.assert_close(grad_autograd, loss.grad(x, y, physics), rtol=1e-7, atol=1e-10)
    adj = dinv.physics.adjoint_function(physics.A, x.shape, x.device, x.dtype)
    yy = physics.A(x.detach()).requires_grad_()
    z = torch.randn_like(x)
    (z * adj(yy)).sum().backward()
    torch.testing.assert_close(yy.grad, physics.A(z), rtol=1e-7, atol=1e-9)


def test_noise_model_applies_to_measurements(physics):
    physics.noise_model = dinv.physics.GaussianNoise(sigma=0.05, rng=torch.Generator().manual_seed(0))
    x = _x(physics)
    noisy, clean = physics(x), physics.A(x)
    assert 0.03 < float((noisy - clean).std()) < 0.07


def test_runs_inside_deepinv_optimisation(physics):
    # deepinv's own PGD with a TV prior, started from FDK (our A_dagger), improves on FDK.
    x = torch.zeros((1, *physics.img_size))
    x[..., 3:9, 4:12, 4:12] = 1.0
    y = physics(x)
    lip = float(physics.compute_sqnorm(x, max_iter=200, tol=1e-6, verbose=False))
    model = dinv.optim.optim_builder(
        iteration="PGD", prior=dinv.optim.TVPrior(n_it_max=5), data_fidelity=dinv.optim.L2(),
        params_algo={"stepsize": 1.0 / lip, "lambda": 1e-4}, max_iter=20, early_stop=False,
        custom_init=lambda y, physics: {"est": (physics.A_dagger(y),)},
    )
    x_hat, x0 = model(y, physics), physics.A_dagger(y)
    # measured: misfit 15.1 vs 29.3, error 3.87 vs 4.56
    assert float((physics.A(x_hat) - y).norm()) < 0.7 * float((physics.A(x0) - y).norm())
    assert float((x_hat - x).norm()) < 0.9 * float((x0 - x).norm())


def test_restrict_equals_projection_of_zero_padded_patch():
    g = circular_geometry(vol_shape=(9, 10, 11))
    physics = ConeBeamCT(g)
    offset, shape = (2, 1, 4), (4, 6, 5)
    patch = physics.restrict(offset, shape)
    xp = torch.rand((2, 1, *shape), dtype=torch.float64)
    full = torch.zeros((2, 1, *g.vol_shape), dtype=torch.float64)
    full[..., 2:6, 1:7, 4:9] = xp
    # the patch operator sees its detector windows: the full projection is their zero-filled embedding
    torch.testing.assert_close(patch.embed_measurements(patch.A(xp)), physics.A(full), rtol=1e-10, atol=1e-12)
    y = torch.rand((2, 1, *g.sino_shape), dtype=torch.float64)
    torch.testing.assert_close(patch.A_adjoint(patch.crop_measurements(y)), physics.A_adjoint(y)[..., 2:6, 1:7, 4:9],
                               rtol=1e-10, atol=1e-12)


def test_clone_and_state_dict(physics):
    clone = physics.clone()
    assert type(clone) is ConeBeamCT
    x = _x(physics)
    torch.testing.assert_close(clone.A(x), physics.A(x))
    assert "operator_norm" in physics.state_dict()


def test_bad_geometry_type():
    with pytest.raises(TypeError, match="ConeBeamGeometry"):
        ConeBeamCT({"vol_shape": (4, 4, 4)})


# ----------------------------------------------------------------------------- torch.export / compile
def test_export_of_the_normalised_forward_equals_eager():
    """torch.export of a module calling A with normalize=True: the operator norm is used as the
    0-d buffer it is (float() of it was a data-dependent read that stopped export)."""
    physics = ConeBeamCT(circular_geometry(vol_shape=(6, 8, 7), det_shape=(9, 10), n_views=5), normalize=True)

    class Forward(torch.nn.Module):
        def __init__(self, physics):
            super().__init__()
            self.physics = physics

        def forward(self, x):
            return self.physics.A(x)

    x = torch.rand(2, 1, 6, 8, 7, generator=torch.Generator().manual_seed(0))
    exported = torch.export.export(Forward(physics), (x,))
    assert any("operator_norm" in name for name in exported.state_dict)  # the buffer, not a constant
    torch.testing.assert_close(exported.module()(x), physics.A(x), rtol=0, atol=0)
    x2 = torch.rand(2, 1, 6, 8, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(exported.module()(x2), physics.A(x2), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["short-scan circular", "vector"])
def test_compiled_fdk_pseudo_inverse_fullgraph_equals_eager(kind):
    """torch.compile(fullgraph=True) of A_dagger (FDK): the geometry's tables come from the
    scan cache, the rest is tensor arithmetic with no numpy and no data-dependent branch. Built
    from a fresh operator, compiled before any eager call."""
    from conftest import wobbly_vector_geometry

    torch._dynamo.reset()
    g = circular_geometry(vol_shape=(6, 8, 7), det_shape=(9, 10), n_views=12, scan="short") \
        if kind == "short-scan circular" else wobbly_vector_geometry(vol_shape=(6, 8, 7), det_shape=(9, 10), n_views=12)
    physics = ConeBeamCT(g, normalize=True)
    y = torch.rand(2, 1, *g.sino_shape, generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(physics.A_dagger, fullgraph=True, backend="aot_eager")
    out = compiled(y)
    # aot_eager runs the very aten ops eager runs: equal to the bit
    torch.testing.assert_close(out, physics.A_dagger(y), rtol=0, atol=0)
    torch.testing.assert_close(compiled(2 * y), physics.A_dagger(2 * y), rtol=0, atol=0)
