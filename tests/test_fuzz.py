"""Fuzzing the geometry and the projector's arguments (hypothesis, bounded in time).

The property: *every* input either gives the result of the pure-PyTorch float64 reference
(:mod:`unrolled3d.ops.projector_ref`, on a contiguous copy) or raises a ``ValueError`` or
``TypeError``. No other exception, no crash, no silent NaN, no result that differs.

Arguments are drawn from a mix of sensible values and hostile ones: zero, negative, NaN and
infinite numbers, subnormal and huge magnitudes (1e-310, 1e200), floats and bools where integers
are meant, strings, empty and mis-shaped tensors, low-precision and integer dtypes, strided views.
Float64 data must match the reference to 1e-9 (relative to the largest value); float32 data to
float32 rounding of the traversal, whose size grows with how far the rays start from the volume
in voxel units (the projector works in index space in the data's precision).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unrolled3d.geometry import ConeBeamGeometry  # noqa: E402
from unrolled3d.ops import cone_backproject, cone_project  # noqa: E402
from unrolled3d.ops.projector_ref import cone_backproject_ref, cone_project_ref  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "ieee_denormals")  # fixtures in conftest.py

# CI: a fixed set of 150 examples per property (derandomized: reproducible, a few seconds).
# Explore more with UNROLLED3D_FUZZ_EXAMPLES=5000 (then random, a fresh draw every run).
_EXAMPLES = int(os.environ.get("UNROLLED3D_FUZZ_EXAMPLES", "150"))
# No per-example deadline: a loaded machine made one example exceed 2 s and fail a correct run (a hang
# is still caught by pytest-timeout); these tests check values, not speed.
FUZZ = settings(max_examples=_EXAMPLES, deadline=None, derandomize=_EXAMPLES <= 150, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

HOSTILE_REALS = [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-310, 1e-200, 1e-40, 1e36, 1e200, 1e308,
                 True, "1.5", None]
HOSTILE_INTS = [0, -1, 2.5, 3.0, True, "4", None, np.float64(3.0), 2**40, 2**62]
# argument -> (kind, sensible range); a geometry gets sensible values, then at most one is spoiled
CIRCULAR_ARGS = {"n_views": ("int", (1, 4)), "source_origin": ("real", (15.0, 60.0)),
                 "origin_detector": ("real", (5.0, 40.0)), "det_shape": ("int2", (1, 7)),
                 "det_spacing": ("real2", (0.5, 3.0)), "vol_shape": ("int3", (1, 6)),
                 "voxel_size": ("real3", (0.3, 2.0)), "vol_offset": ("real3", (-2.0, 2.0)),
                 "det_offset": ("real2", (-2.0, 2.0)), "start_angle": ("real", (-7.0, 7.0))}


def _good(kind: str, bounds):
    lo, hi = bounds
    one = st.integers(lo, hi) if kind.startswith("int") else st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    n = int(kind[-1]) if kind[-1].isdigit() else 1
    if n == 1:
        return st.one_of(one, st.just(np.int64(lo)) if kind == "int" else one)
    return st.one_of(st.tuples(*[one] * n), one, st.lists(one, min_size=n, max_size=n))


def _spoiled(kind: str, bounds):
    """A hostile value for an argument of this kind: alone, or inside an otherwise sensible tuple."""
    pool = st.sampled_from(HOSTILE_INTS if kind.startswith("int") else HOSTILE_REALS)
    n = int(kind[-1]) if kind[-1].isdigit() else 1
    if n == 1:
        return pool
    lo, hi = bounds
    one = st.integers(lo, hi) if kind.startswith("int") else st.floats(lo, hi, allow_nan=False)
    wrong_length = st.lists(one, min_size=0, max_size=5).filter(lambda v: len(v) != n)
    return st.one_of(pool, wrong_length, st.tuples(pool, *[one] * (n - 1)), st.tuples(*[one] * (n - 1), pool))


@st.composite
def geometries(draw):
    """A geometry maker: sensible arguments with (2 times in 3) exactly one of them spoiled."""
    kind = draw(st.sampled_from(["circular", "circular", "vectors"]))
    spoil = draw(st.sampled_from([None] + list(CIRCULAR_ARGS) * 2))
    kwargs = {}
    for name, (k, bounds) in CIRCULAR_ARGS.items():
        kwargs[name] = draw(_spoiled(k, bounds) if name == spoil else _good(k, bounds))
    kwargs["scan"] = draw(st.sampled_from(["full", "full", "short"] + (["half", 1] if spoil is None else [])))
    if kind == "circular":
        return lambda: ConeBeamGeometry.circular(**kwargs)
    n_views = draw(st.integers(1, 3))
    base = np.array(ConeBeamGeometry.circular(n_views, 40.0, 20.0, (4, 4), 1.5, (4, 4, 4)).vectors)
    jitter = np.array(draw(st.lists(st.floats(-1.5, 1.5), min_size=base.size, max_size=base.size))).reshape(base.shape)
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-3, 1e-30, 1e36, 1e200, float("nan"), -1.0]))
    vec = (base + jitter) * scale
    args = {k: kwargs[k] for k in ("det_shape", "vol_shape", "voxel_size", "vol_offset")}
    return lambda: ConeBeamGeometry(vec, **args)


@st.composite
def data_for(draw, shape: tuple[int, ...]):
    """A tensor for an op expecting ``(B, C, *shape)``, possibly wrong in one way."""
    batch, channels = draw(st.sampled_from([(1, 1), (2, 1), (1, 2), (0, 1), (1, 0)]))
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32, torch.float32, torch.float16,
                                  torch.int64, torch.complex64]))
    spatial = list(shape)
    wrong = draw(st.sampled_from(["none", "none", "none", "shape", "ndim", "list"]))
    if wrong == "shape":
        spatial[draw(st.integers(0, len(spatial) - 1))] += 1
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    strided = draw(st.booleans())
    full = [batch, channels, *spatial]

    def make(shape):
        t = torch.rand(shape, generator=gen, dtype=torch.float64)
        if dtype.is_complex or dtype.is_floating_point:
            return t.to(dtype)
        return (t * 10).to(dtype)

    if math.prod(full) > 10**6:  # a huge geometry: a zero-stride view of one number (no allocation)
        t = make(1).expand(full)
    elif strided:  # a non-contiguous view of a larger tensor
        t = make([*full[:-1], 2 * full[-1]])[..., ::2]
    else:
        t = make(full)
    if wrong == "ndim":
        t = t.flatten(0, 1)  # 4-D
    if wrong == "list" and t.numel() <= 10**6:
        return t.tolist()
    return t


def _extent(g: ConeBeamGeometry) -> float:
    """How far (in voxels) the rays' index coordinates reach: sets float32's rounding of the traversal."""
    vec = g.vectors
    inv = 1.0 / np.array(g.voxel_size[::-1])
    origin = 0.5 * (np.array(g.vol_shape[::-1]) - 1) - np.array(g.vol_offset[::-1]) * inv
    rows, cols = g.det_shape
    pts = [vec[:, 0:3]] + [vec[:, 3:6] + a * 0.5 * (cols - 1) * vec[:, 6:9] + b * 0.5 * (rows - 1) * vec[:, 9:12]
                           for a in (-1, 1) for b in (-1, 1)]
    return float(max(np.abs(p * inv + origin).max() for p in pts))


def _check_equal(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, g: ConeBeamGeometry, data_max: float):
    assert out.dtype == dtype and out.shape == ref.shape
    assert bool(torch.isfinite(out).all()), "finite input, finite geometry: the output must be finite"
    scale = max(float(ref.abs().max()), 1e-300)
    if dtype == torch.float64:
        tol = 1e-9 * scale
    else:  # float32 index arithmetic: rounding of the positions grows with the extent in voxels
        tol = (1e-5 + 4 * 2.0**-23 * (1 + _extent(g))) * max(scale, data_max * max(g.vol_shape) * max(g.voxel_size))
    err = float((out.double() - ref.double()).abs().max()) if out.numel() else 0.0
    assert err <= tol, f"differs from the float64 reference by {err:.3g} (tolerance {tol:.3g})"


@FUZZ
@given(make=geometries(), data=st.data())
def test_project_is_the_reference_or_a_clear_error(make, data):
    try:
        g = make()
    except (ValueError, TypeError):
        return
    x = data.draw(data_for(g.vol_shape), label="volume")
    try:
        out = cone_project(x, g)
    except (ValueError, TypeError):
        return
    ref = cone_project_ref(x.contiguous().double(), g)
    _check_equal(out, ref, x.dtype, g, float(x.abs().max()) if x.numel() else 0.0)


@FUZZ
@given(make=geometries(), data=st.data())
def test_backproject_is_the_reference_or_a_clear_error(make, data):
    try:
        g = make()
    except (ValueError, TypeError):
        return
    y = data.draw(data_for(g.sino_shape), label="sinogram")
    try:
        out = cone_backproject(y, g)
    except (ValueError, TypeError):
        return
    ref = cone_backproject_ref(y.contiguous().double(), g)
    _check_equal(out, ref, y.dtype, g, float(y.abs().max()) if y.numel() else 0.0)


@FUZZ
@given(make=geometries())
def test_an_accepted_geometry_is_finite_in_every_derived_quantity(make):
    """What the projector derives (inverse voxel sizes, index coordinates, detector normals) is
    finite for every geometry the constructor accepts, and the geometry survives a round trip."""
    try:
        g = make()
    except (ValueError, TypeError):
        return
    # an overflow (or 0 / 0) here would raise FloatingPointError and fail the test; underflow to 0 is harmless
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        inv = 1.0 / np.array(g.voxel_size)
        normal = np.cross(g.vectors[:, 6:9], g.vectors[:, 9:12])
        extent = _extent(g)
    assert np.isfinite(inv).all() and np.isfinite(normal).all() and math.isfinite(extent)
    assert ConeBeamGeometry.from_dict(g.to_dict()) == g
