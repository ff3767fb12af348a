"""Domain partitioning: patch measurements, blending, sweeps, the H mode, distributed inference."""
from __future__ import annotations


import pytest
import torch
import torch.multiprocessing as mp
from deepinv.models import Reconstructor

from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantNormal, DiagCirculantWrapper, apply_diag_circulant, init_from_psf
from unrolled3d.partition import (
    PartitionedReconstructor, blend_window, patch_grid, patch_measurement,
)
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry, ZeroPaddedPatchPhysics
from conftest import PlainPhysics

F64 = torch.float64
SHAPE = (10, 12, 11)


def ct(shape=SHAPE, views=24) -> ConeBeamCT:
    g = ConeBeamGeometry.circular(views, 60.0, 30.0, (16, 20), 1.3, shape, voxel_size=1.0)
    return ConeBeamCT(g)


class IdentityBase(Reconstructor):
    def forward(self, y, physics, x_init=None, **kwargs):
        return x_init


class GradientStepBase(Reconstructor):
    """One gradient step of the patch data term from the context: deterministic, non-trivial."""

    def forward(self, y, physics, x_init=None, **kwargs):
        if hasattr(physics, "data_gradient"):
            return x_init - 0.01 * physics.data_gradient(x_init, y)
        return x_init - 0.01 * physics.A_adjoint(physics.A(x_init) - y)


class LeastSquaresBase(Reconstructor):
    """Solves the patch least-squares problem min ||A_p x - y_p||^2 with CGLS from the context."""

    def __init__(self, n_iter=200):
        super().__init__()
        self.n_iter = n_iter

    def forward(self, y, physics, x_init=None, **kwargs):
        x = x_init.clone()
        r = y - physics.A(x)
        s = physics.A_adjoint(r)
        p, gamma = s.clone(), (s * s).sum()
        for _ in range(self.n_iter):
            if gamma < 1e-28:  # already solved (e.g. started from the exact patch)
                break
            q = physics.A(p)
            alpha = gamma / (q * q).sum()
            x, r = x + alpha * p, r - alpha * q
            s = physics.A_adjoint(r)
            gamma_new = (s * s).sum()
            p, gamma = s + (gamma_new / gamma) * p, gamma_new
        return x


def _volume(shape=SHAPE, seed=0, dtype=F64):
    return torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape, patch, stride", [((10, 12, 11), (4, 6, 5), (2, 3, 2)), ((9, 9, 9), (4, 4, 4), (3, 3, 3)),
                                                  ((8, 8, 8), (8, 8, 8), (8, 8, 8))])
def test_patch_grid_covers_the_volume(shape, patch, stride):
    covered = torch.zeros(shape, dtype=torch.int32)
    for o in patch_grid(shape, patch, stride):
        assert all(0 <= oi and oi + p <= n for oi, p, n in zip(o, patch, shape))
        covered[o[0]:o[0] + patch[0], o[1]:o[1] + patch[1], o[2]:o[2] + patch[2]] += 1
    assert int(covered.min()) >= 1


def test_blend_window_is_positive_and_tapers():
    w = blend_window((6, 8, 5), (3, 4, 5), dtype=F64)
    assert w.shape == (6, 8, 5) and float(w.min()) > 0
    assert float(w.max()) <= 1.0 and float(w[0, 0, 2]) < 0.1
    assert float(w[2:4, 3:5, 2].min()) > 0.8  # the centre of the patch weighs most
    torch.testing.assert_close(w[:, :, 0], w[:, :, 4])  # no overlap along W: flat there


@pytest.mark.parametrize("stride", [(3, 3, 3), (2, 4, 3), None])
def test_identity_base_blends_back_to_the_input(stride):
    physics = ct()
    x = _volume()
    y = physics.A(x)
    rec = PartitionedReconstructor(IdentityBase(), SHAPE, (6, 8, 6), stride=stride, n_sweeps=2)
    torch.testing.assert_close(rec(y, physics, x_init=x), x, rtol=1e-12, atol=1e-12)


def test_patch_measurement_removes_the_context_exactly():
    physics = ct()
    x_true = _volume()
    y = physics.A(x_true)
    offset, shape = (2, 3, 4), (5, 6, 5)
    # context right outside the patch, garbage inside: y_p must not depend on the garbage
    x_ctx = x_true.clone()
    x_ctx[..., 2:7, 3:9, 4:9] = 100 * torch.randn((1, 1, 5, 6, 5), dtype=F64)
    patch_physics = physics.restrict(offset, shape)
    y_p = patch_measurement(y - physics.A(x_ctx), patch_physics, x_ctx[..., 2:7, 3:9, 4:9])
    torch.testing.assert_close(y_p, patch_physics.A(x_true[..., 2:7, 3:9, 4:9]), rtol=1e-9, atol=1e-9)


def test_generic_zero_padded_patch_operator_matches_restrict():
    physics = ct()
    generic = ZeroPaddedPatchPhysics(PlainPhysics(physics), SHAPE, (1, 2, 3), (4, 5, 6))
    fast = physics.restrict((1, 2, 3), (4, 5, 6))
    xp = torch.rand((1, 1, 4, 5, 6), dtype=F64)
    y = torch.rand((1, 1, *physics.geometry.sino_shape), dtype=F64)
    # the fast operator sees the patch's detector windows: the full-detector projection is its
    # embedding (zero outside the windows), and the adjoint reads only the windows
    torch.testing.assert_close(generic.A(xp), fast.embed_measurements(fast.A(xp)), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(generic.A_adjoint(y), fast.A_adjoint(fast.crop_measurements(y)), rtol=1e-10, atol=1e-10)
    x = _volume()
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), n_sweeps=1)
    x0 = physics.A_dagger(physics.A(x))
    torch.testing.assert_close(rec(physics.A(x), PlainPhysics(physics), x_init=x0),
                               rec(physics.A(x), physics, x_init=x0), rtol=1e-9, atol=1e-9)


def test_least_squares_patches_converge_to_the_full_solution_with_sweeps():
    physics = ct(shape=(8, 8, 8), views=30)
    x_true = _volume((8, 8, 8), seed=3)
    y = physics.A(x_true)  # noiseless; A has full column rank here: the LS solution is x_true
    rec = PartitionedReconstructor(LeastSquaresBase(), (8, 8, 8), (4, 8, 8), stride=(2, 4, 4))
    x = physics.A_dagger(y)
    errors = [float((x - x_true).norm() / x_true.norm())]
    for _ in range(4):
        x = rec(y, physics, x_init=x, n_sweeps=1)
        errors.append(float((x - x_true).norm() / x_true.norm()))
    print("relative error to the full least-squares solution per sweep:", ", ".join(f"{e:.2e}" for e in errors))
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.1 * errors[0]


class ExactNormal:
    """An approximation of A^T A (unrolled3d.protocols.NormalApproximation) whose patch operator is
    exactly S A^T A S^T (to test the H mode's bookkeeping independently of the approximation)."""

    def __init__(self, physics):
        self.physics = physics

    def restrict(self, offset, shape):
        exact = self.physics.restrict(offset, shape)

        class Exact:  # unrolled3d.protocols.NormalEquationPhysics, with the patch operator's x_start
            x_start = None

            def A_adjoint_A(_, x):
                return exact.A_adjoint(exact.A(x))

            def data_gradient(_, x, b):
                return _.A_adjoint_A(x) - b

            def A_dagger(_, b):
                return _.x_start

        return Exact()

    def refresh(self, patches):
        pass  # nothing to refresh: the patch operators hold no parameters


def test_normal_mode_gradient_equals_exact_patch_gradient_when_H_is_exact():
    physics = ct()
    x_true = _volume()
    y = physics.A(x_true) + 0.01 * torch.randn((1, 1, *physics.geometry.sino_shape), dtype=F64)
    x_ctx = physics.A_dagger(y)
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6))
    offset = (2, 2, 3)
    exact = rec.reconstruct_patch(y, physics, x_ctx, offset)
    normal = rec.reconstruct_patch(y, physics, x_ctx, offset, normal=ExactNormal(physics))
    torch.testing.assert_close(normal, exact, rtol=1e-9, atol=1e-9)
    # the whole reconstruction: H mode with an exact H is the exact mode
    torch.testing.assert_close(rec(y, physics, normal=ExactNormal(physics), x_init=x_ctx),
                               rec(y, physics, x_init=x_ctx), rtol=1e-9, atol=1e-9)


def test_normal_mode_with_fourier_filter_and_spatial_mask_runs_end_to_end():
    physics = ct()
    x = _volume(dtype=torch.float32)
    y = physics.A(x)
    w = DiagCirculantWrapper(physics, SHAPE).init_from_psf()
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6))
    out = rec(y, w, fourier_filter=w.fourier_filter.detach(), spatial_mask=w.spatial_mask.detach())
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the paper's API: an unfitted wrapper plus the parameters per call gives the same volume, and
    # the per-call parameters do not overwrite the caller's wrapper
    blank = DiagCirculantWrapper(physics, SHAPE)
    out2 = rec(y, blank, fourier_filter=w.fourier_filter.detach(), spatial_mask=w.spatial_mask.detach())
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    assert not blank.fitted and float(blank.fourier_filter.abs().max()) == 0.0
    # the parameters of H need an H to take their settings from: a bare physics is refused, not
    # silently wrapped; with normal= the same call works on the bare physics
    with pytest.raises(TypeError, match="DiagCirculantWrapper"):
        rec(y, physics, fourier_filter=w.fourier_filter.detach())
    out3 = rec(y, physics, normal=blank.normal, fourier_filter=w.fourier_filter.detach(),
               spatial_mask=w.spatial_mask.detach())
    torch.testing.assert_close(out3, out, rtol=0, atol=0)
    # H given explicitly to the exact physics: the same reconstruction as the wrapper carrying it
    torch.testing.assert_close(rec(y, physics, normal=w.normal), rec(y, w), rtol=0, atol=0)
    with pytest.raises(TypeError, match="NormalApproximation"):
        rec(y, physics, normal=w)  # a wrapper is a physics, not an approximation
    xp = x[..., :6, :8, :6]
    physics_p = w.normal.restrict((0, 0, 0), (6, 8, 6)).with_start(xp)
    assert physics_p.A_dagger(None) is xp
    # normal-equation form: A = H_p (the backprojected measurement), A^T = identity on b
    torch.testing.assert_close(physics_p.A(xp), physics_p.A_adjoint_A(xp), rtol=0, atol=0)
    assert physics_p.A_adjoint(xp) is xp


def _h_mode_by_hand(y, physics, m, lam, patch, stride, n_sweeps, step):
    """The H mode written out from the functional form H = apply_diag_circulant(., m, lam), apart
    from the reconstructor: per sweep r = A^T (y - A x); per patch b = S r + S H S^T x[p], whose
    base (GradientStepBase) takes one step x0[p] - step (S H S^T x0[p] - b) from the first sweep's
    start x0 = A_dagger(y); the patches blended with the window (sum w x / sum w)."""
    x = first = physics.A_dagger(y)
    window = blend_window(patch, stride, dtype=x.dtype)
    for _ in range(n_sweeps):
        r = physics.A_adjoint(y - physics.A(x))
        out, weight = torch.zeros_like(x), torch.zeros(SHAPE, dtype=x.dtype)
        for o in patch_grid(SHAPE, patch, stride):
            sl = tuple(slice(oi, oi + p) for oi, p in zip(o, patch))

            def h_p(v, sl=sl):  # S H S^T: the whole-volume H of the patch embedded in zeros, cropped
                full = torch.zeros_like(x)
                full[(..., *sl)] = v
                return apply_diag_circulant(full, m, lam)[(..., *sl)]

            b = r[(..., *sl)] + h_p(x[(..., *sl)])
            x_p = first[(..., *sl)] - step * (h_p(first[(..., *sl)]) - b)
            out[(..., *sl)] += window * x_p
            weight[sl] += window
        x = out / weight
    return x


def test_the_papers_call_gives_the_h_mode_written_out_from_the_functional_form():
    # rec(y, DiagCirculantWrapper(physics, img_size, scaling=1., device=...), fourier_filter=..., spatial_mask=...)
    # as the paper writes it, against the method computed by hand from apply_diag_circulant
    physics = ct()
    x_true = _volume(seed=7)
    y = physics.A(x_true)
    fitted = init_from_psf(DiagCirculantNormal(SHAPE, dtype=F64), physics)
    jitter = torch.rand(SHAPE, generator=torch.Generator().manual_seed(8), dtype=F64)
    spatial_mask = fitted.spatial_mask.detach() * (0.8 + 0.4 * jitter)  # a mask that is not all ones
    fourier_filter = fitted.fourier_filter.detach()
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), n_sweeps=2)
    wrapped_physics = DiagCirculantWrapper(physics=physics, img_size=physics.img_size, scaling=1., device="cpu",
                                           dtype=F64)
    x_hat = rec(y, wrapped_physics, fourier_filter=fourier_filter, spatial_mask=spatial_mask)
    expected = _h_mode_by_hand(y, physics, spatial_mask, fourier_filter, (6, 8, 6), rec.stride, 2, 0.01)
    # float64; the reconstructor's patch operator filters on the patch's own grid, the reference on
    # the doubled volume grid: the same operator up to rounding
    torch.testing.assert_close(x_hat, expected, rtol=1e-10, atol=1e-12)
    assert float((x_hat - physics.A_dagger(y)).abs().max()) > 1e-3  # H did something
    # the explicit form gives the same volume, and the wrapper was left without parameters
    H = DiagCirculantNormal(SHAPE, dtype=F64, spatial_mask=spatial_mask, fourier_filter=fourier_filter)
    torch.testing.assert_close(rec(y, physics, normal=H), x_hat, rtol=0, atol=0)
    assert not wrapped_physics.fitted


def _graph_of(call):
    """``call()``'s output and the number of tensors autograd saved for a backward pass meanwhile."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = call()
    return out, len(saved)


def test_inference_records_no_graph_when_nothing_asks_for_gradients(one_thread):
    # issue 30: applying H in an inference records no autograd graph when no parameter (of the
    # base, the physics or H) and no input needs gradients, whatever the grad mode
    physics = ConeBeamCT(ct().geometry, normalize=True)
    x = _volume(dtype=torch.float32)
    y = physics.A(x)
    w = DiagCirculantWrapper(physics, SHAPE).init_from_psf()
    torch.manual_seed(0)
    rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), SHAPE, (6, 8, 6), stride=(6, 8, 6),
                                   n_sweeps=1).eval()  # 8 patches, one sweep: enough for a graph
    rec.requires_grad_(False)  # a model used for inference only
    calls = {"carried": lambda: rec(y, w), "explicit": lambda: rec(y, physics, normal=w.normal),
             "paper": lambda: rec(y, w, fourier_filter=w.fourier_filter, spatial_mask=w.spatial_mask)}
    outs = {}
    for name, call in calls.items():
        outs[name], n_saved = _graph_of(call)
        assert outs[name].grad_fn is None and not outs[name].requires_grad, name
        assert n_saved == 0, (name, n_saved)
    torch.testing.assert_close(outs["explicit"], outs["carried"], rtol=0, atol=0)
    # the measure sees a graph where one is asked for: a trainable base, or a trainable H (whose
    # gradient then arrives), and none under torch.no_grad()
    rec.requires_grad_(True)
    out, n_saved = _graph_of(calls["carried"])
    assert out.grad_fn is not None and n_saved > 0
    torch.testing.assert_close(out, outs["carried"], rtol=0, atol=0)
    with torch.no_grad():
        assert _graph_of(calls["carried"])[1] == 0
    rec.requires_grad_(False)
    w.normal.requires_grad_(True)
    out, n_saved = _graph_of(calls["explicit"])
    assert out.grad_fn is not None and n_saved > 0
    out.square().sum().backward()
    assert float(w.normal.fourier_filter.grad.abs().max()) > 0


def test_training_loss_uses_ground_truth_context():
    physics = ct()
    x_true = _volume()
    y = physics.A(x_true)
    rec = PartitionedReconstructor(LeastSquaresBase(n_iter=300), SHAPE, (5, 6, 5))
    # noiseless data, exact context: the patch least-squares solution is the true patch
    loss = rec.training_loss(y, physics, x_true, generator=torch.Generator().manual_seed(0))
    assert float(loss) < 1e-8
    assert rec.training_loss(y, physics, x_true, offset=(0, 0, 0)).requires_grad is False


def _distributed_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    physics = ct()
    x = _volume()
    y = physics.A(x)
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6))
    out = rec(y, physics)
    if rank == 0:
        torch.save(out, out_file)
    dist.destroy_process_group()


def test_two_process_gloo_inference_equals_one_process(tmp_path):
    physics = ct()
    x = _volume()
    y = physics.A(x)
    single = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6))(y, physics)
    out_file = tmp_path / "out.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    torch.testing.assert_close(torch.load(out_file, weights_only=True), single, rtol=1e-10, atol=1e-12)


def test_bad_input():
    physics = ct()
    with pytest.raises(ValueError, match="larger than the volume"):
        PartitionedReconstructor(IdentityBase(), SHAPE, (11, 4, 4))
    with pytest.raises(ValueError, match="stride"):
        PartitionedReconstructor(IdentityBase(), SHAPE, (4, 4, 4), stride=(0, 2, 2))
    with pytest.raises(ValueError, match="must not exceed"):
        PartitionedReconstructor(IdentityBase(), SHAPE, (4, 4, 4), stride=(5, 2, 2))
    with pytest.raises(TypeError, match="base_reconstructor"):
        PartitionedReconstructor("base", SHAPE, (4, 4, 4))
    rec = PartitionedReconstructor(IdentityBase(), (10, 12, 12), (4, 4, 4))
    with pytest.raises(ValueError, match="physics acts on volumes"):
        rec(torch.zeros(1, 1, *physics.geometry.sino_shape), physics)
    with pytest.raises(TypeError, match="LinearPhysics"):
        rec(torch.zeros(3), "physics")

    class ExactPatches(ExactNormal):  # restrict gives A S^T itself, not a normal-equation operator
        def restrict(self, offset, shape):
            return self.physics.restrict(offset, shape)

    y = physics.A(_volume())
    with pytest.raises(TypeError, match="normal-equation form"):
        PartitionedReconstructor(IdentityBase(), SHAPE, (4, 4, 4))(y, physics, normal=ExactPatches(physics))


def test_training_start_point_is_fdk_not_the_true_patch():
    # With an identity base the loss is the error of the start point: it must be FDK's (> 0),
    # or training would hand the network the answer.
    physics = ct()
    x_true = _volume()
    y = physics.A(x_true)
    rec = PartitionedReconstructor(IdentityBase(), SHAPE, (5, 6, 5))
    loss = rec.training_loss(y, physics, x_true, offset=(2, 3, 3))
    fdk_patch = physics.A_dagger(y)[..., 2:7, 3:9, 3:8]
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(fdk_patch, x_true[..., 2:7, 3:9, 3:8]))
    assert float(loss) > 1e-4


@pytest.mark.parametrize("scan", ["full", "short"])
def test_patch_pseudo_inverse_is_the_crop_of_the_full_one(scan):
    # FDK on the patch's geometry (patch-sized temporaries) vs the crop of the whole-volume FDK
    if scan == "full":
        physics = ct()
    else:  # 200 deg: Parker weights, which depend on the views only, not on the voxels
        g = ConeBeamGeometry.circular(24, 60.0, 30.0, (16, 20), 1.3, SHAPE, voxel_size=1.0,
                                      angles=torch.linspace(0, 200, 24).deg2rad().tolist(), scan="short")
        physics = ConeBeamCT(g)
    y = physics.A(_volume())
    for offset, shape in (((2, 3, 3), (5, 6, 5)), ((0, 0, 0), SHAPE), ((9, 0, 10), (1, 12, 1))):
        sl = tuple(slice(o, o + p) for o, p in zip(offset, shape))
        torch.testing.assert_close(physics.A_dagger_patch(y, offset, shape), physics.A_dagger(y)[(..., *sl)],
                                   rtol=1e-10, atol=1e-12)


def test_training_loss_in_H_mode_equals_the_inference_patch_solve():
    # training forms only patch-sized images (S A^T r by the restricted backprojection, FDK on the
    # patch); the inference path backprojects the whole residual and crops: the same loss
    physics = ct()
    x_true = _volume()
    y = physics.A(x_true) + 0.01 * torch.randn(physics.A(x_true).shape, generator=torch.Generator().manual_seed(5),
                                               dtype=F64)
    w = DiagCirculantWrapper(physics, SHAPE, dtype=F64).init_from_psf()
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (5, 6, 5))
    offset, sl = (2, 3, 3), (slice(2, 7), slice(3, 9), slice(3, 8))
    residual_full = w.A_adjoint(y - w.A(x_true))
    expected_p = rec.reconstruct_patch(y, w, x_true, offset, residual_full, w.normal,
                                       x_start=physics.A_dagger(y)[(..., *sl)])
    expected = torch.nn.functional.mse_loss(expected_p, x_true[(..., *sl)])
    torch.testing.assert_close(rec.training_loss(y, w, x_true, offset=offset), expected, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- batched patches
class BatchRecorder(Reconstructor):
    """An UnrolledPGD that records the batch each call receives."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, y, physics, x_init=None, **kwargs):
        self.batches.append(x_init.shape[0])
        return self.model(y, physics, x_init=x_init)


def _network_base(seed=0):
    torch.manual_seed(seed)
    return UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2, step_size=0.5).double()


@pytest.mark.parametrize("mode", ["exact", "H"])
def test_patch_batch_size_gives_the_same_volume(mode):
    physics = ct()
    x = _volume(seed=4).repeat(2, 1, 1, 1, 1)  # B = 2: items of a patch stay together in the batch
    x[1] = x[1].flip(-1)
    y = physics.A(x)
    phys = physics if mode == "exact" else DiagCirculantWrapper(physics, SHAPE, dtype=F64).init_from_psf()
    base = BatchRecorder(_network_base())
    outs = {}
    for g in (1, 4):
        base.batches.clear()
        rec = PartitionedReconstructor(base, SHAPE, (6, 8, 6), patch_batch_size=g)
        with torch.no_grad():
            outs[g] = rec(y, phys)
        n = len(rec.patches())
        groups = [min(g, n - i) for i in range(0, n, g)]
        assert base.batches == [2 * k for k in groups] * 2  # two sweeps of groups of g patches
    # float64: the network and the data steps run per item; only the convolution's batching differs
    torch.testing.assert_close(outs[4], outs[1], rtol=1e-12, atol=1e-12)
    assert float((outs[1] - x).abs().max()) > 1e-3  # a real reconstruction, not the input handed back


def test_plan_is_built_once_and_follows_the_operator_parameters():
    physics = ct()
    calls = []

    class CountingCT(ConeBeamCT):
        def restrict(self, offset, shape):
            calls.append(tuple(offset))
            return super().restrict(offset, shape)

    counted = CountingCT(physics.geometry)
    x = _volume()
    y = counted.A(x)
    rec = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), patch_batch_size=3)
    first = rec(y, counted, x_init=x)
    n = len(rec.patches())
    assert len(calls) == n  # one operator per patch position, shared by both sweeps
    torch.testing.assert_close(rec(y, counted, x_init=x), first, rtol=0, atol=0)
    assert len(calls) == n  # and by the next call
    # H mode: the plan's patch operators see parameter changes made in place (set_parameters)
    w = DiagCirculantWrapper(physics, SHAPE, dtype=F64).init_from_psf()
    x0 = physics.A_dagger(y)  # not the truth: the data step, which H shapes, must not vanish
    before = rec(y, w, x_init=x0)
    w.set_parameters(spatial_mask=0.5 * w.spatial_mask.detach(), fourier_filter=2.0 * w.fourier_filter.detach())
    after = rec(y, w, x_init=x0)
    fresh = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), patch_batch_size=3)(y, w, x_init=x0)
    torch.testing.assert_close(after, fresh, rtol=1e-12, atol=1e-12)
    assert float((after - before).abs().max()) > 1e-6
    # ... and parameters replaced by new tensors (not changed in place) too: the plan is kept, H
    # points its patch operators at what it holds now
    plans = list(rec._plans)
    w.normal.spatial_mask = torch.nn.Parameter(2.0 * w.spatial_mask.detach(), requires_grad=False)
    replaced = rec(y, w, x_init=x0)
    assert rec._plans[0] is plans[0]
    fresh = PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), patch_batch_size=3)(y, w, x_init=x0)
    torch.testing.assert_close(replaced, fresh, rtol=1e-12, atol=1e-12)
    assert float((replaced - after).abs().max()) > 1e-6


def test_reconstruct_patches_solves_a_group_like_single_patches():
    physics = ct()
    x = _volume()
    y = physics.A(x)
    rec = PartitionedReconstructor(_network_base(), SHAPE, (6, 8, 6))
    offsets = rec.patches()[:3]
    x_ctx = physics.A_dagger(y)
    with torch.no_grad():
        group = rec.reconstruct_patches(y, physics, x_ctx, offsets)
        single = torch.cat([rec.reconstruct_patch(y, physics, x_ctx, o) for o in offsets])
    torch.testing.assert_close(group, single, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="offsets"):
        rec.reconstruct_patches(y, physics, x_ctx, [])
    with pytest.raises(ValueError, match="patch_batch_size"):
        PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), patch_batch_size=0)
    with pytest.raises(TypeError, match="patch_batch_size"):
        PartitionedReconstructor(GradientStepBase(), SHAPE, (6, 8, 6), patch_batch_size=2.0)
