"""Shared fixtures: small geometries that exercise every convention (offsets, odd sizes,
anisotropic voxels, vector geometry), and the float64 dot-product adjointness measure."""
from __future__ import annotations

import os


def _nvidia_driver_present() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version"))


# Triton decides between compiling and interpreting a kernel when the kernel is decorated (when
# unrolled3d.kernels is first imported), so the CPU interpreter must be chosen before any import
# below. On a GPU machine the compiled kernels are tested instead. The interpreter is slow, so
# outside the fused-op tests (test_masked_gather.py, ..., which select the Triton path explicitly) the fused ops use
# their PyTorch twins on the CPU.
if not _nvidia_driver_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("UNROLLED3D_FUSED_BACKEND", "reference")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from deepinv.physics import LinearPhysics  # noqa: E402

from unrolled3d.physics import ConeBeamGeometry  # noqa: E402

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def circular_geometry(
    vol_shape=(7, 10, 9), det_shape=(11, 13), n_views=9, scan="full"
) -> ConeBeamGeometry:
    """Odd sizes, anisotropic voxels, volume and detector offsets."""
    return ConeBeamGeometry.circular(
        n_views, 60.0, 35.0, det_shape, (1.3, 1.1), vol_shape,
        voxel_size=(0.9, 1.2, 1.05), vol_offset=(0.6, -0.8, 0.4), det_offset=(0.9, -1.3), scan=scan,
    )


def wobbly_vector_geometry(vol_shape=(8, 9, 11), det_shape=(12, 10), n_views=7, seed=0) -> ConeBeamGeometry:
    """A per-view vector geometry with random source/detector jitter and detector tilt."""
    base = circular_geometry(vol_shape, det_shape, n_views)
    rng = np.random.default_rng(seed)
    vec = np.array(base.vectors)
    vec[:, 0:6] += rng.normal(scale=0.8, size=(n_views, 6))
    tilt = 0.05
    for p in range(n_views):  # rotate u and v by a small random rotation about the detector normal
        ang = rng.uniform(-tilt, tilt)
        u, v = vec[p, 6:9].copy(), vec[p, 9:12].copy()
        vec[p, 6:9] = math.cos(ang) * u + math.sin(ang) * v * np.linalg.norm(u) / np.linalg.norm(v)
        vec[p, 9:12] = -math.sin(ang) * u * np.linalg.norm(v) / np.linalg.norm(u) + math.cos(ang) * v
    return ConeBeamGeometry.from_vectors(vec, det_shape, vol_shape, (1.1, 0.95, 1.0), (0.3, 0.2, -0.5))


GEOMETRIES = {"circular": circular_geometry, "vector": wobbly_vector_geometry}


@pytest.fixture(params=sorted(GEOMETRIES))
def geometry(request) -> ConeBeamGeometry:
    return GEOMETRIES[request.param]()


def adjoint_gap(Ax: torch.Tensor, y: torch.Tensor, x: torch.Tensor, Aty: torch.Tensor) -> float:
    """|<Ax, y> - <x, A^T y>| / (|Ax| |y|), accumulated in float64."""
    lhs = (Ax.double() * y.double()).sum()
    rhs = (x.double() * Aty.double()).sum()
    return float((lhs - rhs).abs() / (Ax.double().norm() * y.double().norm()))


def _flushing_denormals() -> bool:
    """Whether the CPU currently flushes subnormal floats to zero (``torch.set_flush_denormal``)."""
    tiny = float("1e-310")  # parsed exactly; the multiply is what the FTZ/DAZ flags change
    return tiny * float("1.0") == 0.0


@pytest.fixture
def ieee_denormals():
    """Subnormal floats as IEEE 754 has them, for the test; the previous mode afterwards.

    The command line flushes denormals to zero for the whole process (``main`` calls
    ``torch.set_flush_denormal(True)``, for speed), and tests call it in process: then 1e-310
    compares as 0 and hypothesis refuses to draw floats.
    """
    was = _flushing_denormals()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(was)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP oversubscription on shared CPUs (100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PlainPhysics(LinearPhysics):
    """A physics without `restrict` (exercises the generic zero-padded patch operator)."""

    def __init__(self, inner):
        super().__init__(img_size=inner.img_size)
        self.inner = inner

    def A(self, x, **kw):
        return self.inner.A(x)

    def A_adjoint(self, y, **kw):
        return self.inner.A_adjoint(y)

    def A_dagger(self, y, **kw):
        return self.inner.A_dagger(y)
