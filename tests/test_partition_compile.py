"""torch.compile of the partitioned reconstruction: forward with fullgraph (exact and H modes, x_init
given), the whole reconstruction in default mode (FDK start inside: graph breaks allowed), and
training_loss (graph breaks allowed), each equal to eager.

The backend is "aot_eager": Dynamo tracing (where fullgraph fails: NumPy, module construction,
progress bars) and AOTAutograd's functionalisation run as with inductor, without inductor's
code generation, which costs about 100 s per graph on these 2 shared cores and is exercised by
bench/test_bench_partition_speed.py instead.
"""
from __future__ import annotations

import pytest
import torch

from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

SHAPE = (12, 12, 12)
PATCH, STRIDE = (8, 8, 12), (4, 4, 4)  # four patches: every graph below unrolls each of them
BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _problem(mode: str):
    g = ConeBeamGeometry.circular(12, 60.0, 30.0, (18, 20), 1.3, SHAPE, voxel_size=1.0)
    physics = ConeBeamCT(g, normalize=True)
    x = torch.rand((1, 1, *SHAPE), generator=torch.Generator().manual_seed(0))
    y = physics.A(x)
    if mode == "H":
        physics = DiagCirculantWrapper(physics, SHAPE).init_from_psf()
    torch.manual_seed(0)
    base = UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1)
    return physics, x, y, base


@pytest.mark.parametrize("patch_batch_size", [1, 3])  # 3: groups of 3 and 1
@pytest.mark.parametrize("mode", ["exact", "H"])
def test_fullgraph_forward_with_x_init_equals_eager(mode, patch_batch_size):
    physics, x, y, base = _problem(mode)
    x0 = (physics.physics if mode == "H" else physics).A_dagger(y)
    rec = PartitionedReconstructor(base, SHAPE, PATCH, stride=STRIDE, patch_batch_size=patch_batch_size,
                                   progress=True)  # the bar must stay out of the graph
    rec.prepare(physics)  # the plan is built outside the graph: fullgraph cannot build it
    compiled = torch.compile(rec.forward, fullgraph=True, backend=BACKEND)
    with torch.no_grad():
        out = compiled(y, physics, x_init=x0)
        eager = rec(y, physics, x_init=x0)
    # same operations in the same order: equal up to float32 rounding of a different scheduling
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    assert float((out - x0).abs().max()) > 1e-3


@pytest.mark.parametrize("mode", ["exact", "H"])
def test_default_compile_of_the_whole_reconstruction_equals_eager(mode):
    physics, x, y, base = _problem(mode)
    rec = PartitionedReconstructor(base, SHAPE, PATCH, stride=STRIDE)
    compiled = torch.compile(rec, backend=BACKEND)  # FDK start inside, plan built on first use: breaks
    with torch.no_grad():
        out = compiled(y, physics)
        again = compiled(y, physics)  # the cached plan: the guards hold, no rebuild
        eager = rec(y, physics)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, eager, rtol=1e-5, atol=1e-6)
    assert len(rec._plans) == 1


@pytest.mark.parametrize("mode", ["exact", "H"])
def test_compiled_training_loss_equals_eager_with_its_gradients(mode):
    physics, x, y, base = _problem(mode)
    rec = PartitionedReconstructor(base, SHAPE, PATCH, stride=STRIDE)

    def step(fn):
        rec.zero_grad(set_to_none=True)
        loss = fn(y, physics, x, generator=torch.Generator().manual_seed(3))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in rec.parameters()]

    loss_e, grads_e = step(rec.training_loss)
    loss_c, grads_c = step(torch.compile(rec.training_loss, backend=BACKEND))
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-7)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)
    assert float(loss_e) > 0
