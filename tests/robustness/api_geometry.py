"""Python API, arguments of the scan, the projector, the physics and FDK: NaN, inf, overflow,
shapes, dtypes, devices; the projector's results across thread counts and memory layouts."""
from __future__ import annotations

import numpy as np
import torch

from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.ops import cone_backproject, cone_project
from unrolled3d.physics import ConeBeamCT, fdk

from .catalogue import Case, Catalogue
from .inputs import CIRC, g8


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    A = c.api

    # ------------------------------------------------------------------ 5. geometry: NaN, inf, overflow
    def geo_vec(scale=1.0, put=None):
        def f(d):
            g = ConeBeamGeometry.circular(**CIRC)
            vec = np.array(g.vectors) * scale
            if put is not None:
                vec[put[0], put[1]] = put[2]
            return ConeBeamGeometry(vec, (8, 10), (6, 6, 6), 1.0)
        return f

    for name, scale, put, needle in [("vectors_nan", 1.0, (1, 2, float("nan")), "vectors"),
                                     ("vectors_inf", 1.0, (0, 0, float("inf")), "vectors"),
                                     ("vectors_x1e200", 1e200, None, "overflow"),
                                     ("vectors_x1e36", 1e36, None, "overflow"),
                                     ("vectors_x1e-300", 1e-300, None, "vectors"),
                                     ("vectors_zero_u", 1.0, (0, 6, 0.0), "vectors"),
                                     ]:
        if name == "vectors_zero_u":
            def f(d):
                g = ConeBeamGeometry.circular(**CIRC)
                vec = np.array(g.vectors)
                vec[0, 6:9] = 0.0  # detector u vector of view 0 is zero: a degenerate detector
                return ConeBeamGeometry(vec, (8, 10), (6, 6, 6), 1.0)
            A(f"geometry.{name}", 5, "error", "u", f)
        else:
            A(f"geometry.{name}", 5, "error", needle, geo_vec(scale, put))
    A("geometry.vectors_source_on_detector", 5, "error", "",
      lambda d: ConeBeamGeometry(np.tile(np.array([0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1.0]), (2, 1)), (8, 10), (6, 6, 6)))
    A("geometry.vectors_wrong_columns", 8, "error", "vectors", lambda d: ConeBeamGeometry(np.zeros((4, 11)), (8, 10), 6))
    A("geometry.vectors_empty", 8, "error", "vectors", lambda d: ConeBeamGeometry(np.zeros((0, 12)), (8, 10), 6))
    A("geometry.vectors_string", 8, "error", "vectors", lambda d: ConeBeamGeometry("abc", (8, 10), 6))
    for v, needle in [(1e-310, "voxel_size"), (1e-40, "voxel_size"), (float("nan"), "voxel_size"),
                      (float("inf"), "voxel_size"), (0.0, "voxel_size"), (-1.0, "voxel_size"), (True, "voxel_size"),
                      ("1", "voxel_size"), ((1.0, 1.0), "voxel_size"), (1e300, "")]:
        A(f"geometry.voxel_size={v!r}", 5 if isinstance(v, float) else 8, "error", needle,
          lambda d, v=v: ConeBeamGeometry.circular(**{**CIRC, "voxel_size": v}))
    for key, v in [("vol_offset", (float("nan"), 0, 0)), ("vol_offset", (0, float("inf"), 0)),
                   ("vol_offset", (1e308, 1e308, 1e308)),
                   ("det_spacing", float("nan")), ("det_spacing", 0.0), ("det_spacing", -1.5),
                   ("source_origin", float("nan")), ("source_origin", float("inf")), ("source_origin", 0.0),
                   ("source_origin", -40.0), ("origin_detector", float("nan")), ("det_offset", (float("nan"), 0.0)),
                   ("angles", [0.0, float("nan"), 1.0, 2.0]), ("angles", [0.0, 1.0]), ("start_angle", float("inf")),
                   ("scan", "half")]:
        A(f"geometry.{key}={v!r}", 5 if key != "scan" and key != "angles" or "nan" in repr(v) else 8, "error", key,
          lambda d, key=key, v=v: ConeBeamGeometry.circular(**{**CIRC, key: v}))
    for key, v in [("n_views", 0), ("n_views", -3), ("n_views", 2.5), ("n_views", True), ("det_shape", (0, 10)),
                   ("det_shape", (8,)), ("det_shape", (8.5, 10)), ("vol_shape", (6, 6)), ("vol_shape", (0, 6, 6)),
                   ("vol_shape", 6.0), ("vol_shape", (True, True, True)), ("vol_shape", (6, 6, -6))]:
        A(f"geometry.{key}={v!r}", 8, "error", key, lambda d, key=key, v=v: ConeBeamGeometry.circular(**{**CIRC, key: v}))
    A("geometry.int_vol_shape_is_a_cube", 8, "ok", "", lambda d: ConeBeamGeometry.circular(**{**CIRC, "vol_shape": 6}),
      check=lambda d, g: g.vol_shape == (6, 6, 6))
    A("geometry.from_dict_missing_key", 4, "error", "vectors",
      lambda d: ConeBeamGeometry.from_dict({k: v for k, v in g8().to_dict().items() if k != "vectors"}))
    A("geometry.restrict_outside", 8, "error", "outside", lambda d: g8().restrict((6, 0, 0), (4, 4, 4)))
    A("geometry.restrict_float_offset", 8, "error", "offset", lambda d: g8().restrict((1.5, 0, 0), (4, 4, 4)))

    # ------------------------------------------------------------------ projector / physics: shapes, dtypes, NaN

    def nan_views(d):
        g = ConeBeamGeometry.circular(**CIRC)
        g.views_tensor("cpu")[2, 4] = float("nan")
        return cone_project(torch.rand(1, 1, 6, 6, 6), g)
    A("project.nan_views", 5, "error", "NaN", nan_views)
    for name, make, needle in [
        ("4d_input", lambda: torch.rand(1, 8, 8, 8), "5-D"), ("int_dtype", lambda: torch.ones(1, 1, 8, 8, 8, dtype=torch.int64), "float32"),
        ("complex", lambda: torch.ones(1, 1, 8, 8, 8, dtype=torch.complex64), "float32"),
        ("wrong_volume", lambda: torch.rand(1, 1, 8, 8, 9), "8, 8, 8"), ("list", lambda: [[1.0]], "Tensor"),
        ("empty_batch", lambda: torch.rand(0, 1, 8, 8, 8), "empty"), ("numpy", lambda: np.zeros((1, 1, 8, 8, 8), np.float32), "Tensor"),
    ]:
        A(f"physics.A.{name}", 8, "error", needle, lambda d, make=make: ConeBeamCT(g8()).A(make()))
    A("physics.A_adjoint.wrong_sino", 8, "error", "", lambda d: ConeBeamCT(g8()).A_adjoint(torch.rand(1, 1, 4, 9, 9)))
    A("physics.A_dagger.empty", 8, "error", "empty", lambda d: ConeBeamCT(g8()).A_dagger(torch.rand(0, 1, *g8().sino_shape)))
    A("physics.nan_x_propagates", 5, "ok", "", lambda d: ConeBeamCT(g8()).A(torch.full((1, 1, 8, 8, 8), float("nan"))),
      check=lambda d, y: bool(torch.isnan(y).any()), what="NaN in the volume must show in A x, not vanish")
    for key, v, needle in [("fdk_window", "boxcar", "fdk_window"), ("normalize", "yes", "normalize"),
                           ("layout", "zyx", "layout"), ("device", "tpu", "device"), ("geometry", "g", "geometry")]:
        A(f"physics.ctor.{key}={v!r}", 8, "error", needle,
          lambda d, key=key, v=v: ConeBeamCT(v) if key == "geometry" else ConeBeamCT(g8(), **{key: v}))
    A("physics.ctor.device=3.5", 8, "error", "device", lambda d: ConeBeamCT(g8(), device=3.5))
    if not torch.cuda.is_available():
        A("physics.ctor.device=cuda_without_cuda", 8, "error", ("device", "cuda"), lambda d: ConeBeamCT(g8(), device="cuda"))
    A("physics.backproject_wrong_geometry", 8, "error", "", lambda d: cone_backproject(torch.rand(1, 1, 3, 10, 12), g8()))

    def noncontig(d):
        g = g8()
        x = torch.rand(1, 1, 8, 8, 16, dtype=torch.float64)[..., ::2]
        return cone_project(x, g), cone_project(x.contiguous(), g)
    A("project.non_contiguous_equals_contiguous", 8, "ok", "", noncontig, check=lambda d, r: torch.equal(*r))

    def threads(fn):
        def f(d):
            old = torch.get_num_threads()
            try:
                torch.set_num_threads(1)
                a = fn()
                torch.set_num_threads(2)
                b = fn()
            finally:
                torch.set_num_threads(old)
            return a, b
        return f
    xg = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    A("threads.project_1_vs_2", 8, "ok", "", threads(lambda: cone_project(xg, g8())), check=lambda d, r: torch.equal(*r))
    A("threads.backproject_1_vs_2", 8, "ok", "", threads(lambda: cone_backproject(cone_project(xg, g8()), g8())),
      check=lambda d, r: torch.equal(*r))
    # FDK's ramp filter is torch.fft, which (MKL or pocketfft) splits its batch by thread count: the
    # sums are taken in another order, so the results agree to float32 rounding, not bit for bit
    A("threads.fdk_1_vs_2", 8, "ok", "", threads(lambda: ConeBeamCT(g8()).A_dagger(cone_project(xg, g8()))),
      check=lambda d, r: bool((r[0] - r[1]).abs().max() <= 4 * torch.finfo(torch.float32).eps * r[0].abs().max()))

    # fdk
    for name, kw, needle in [("window_boxcar", {"window": "boxcar"}, "window"), ("scan_bad", {"scan": "third"}, "scan"),
                             ("slab_voxels_0", {"slab_voxels": 0}, "slab_voxels"),
                             ("slab_voxels_float", {"slab_voxels": 2.5}, "slab_voxels"),
                             ("padding_str", {"padding": "yes"}, "padding"), ("progress_str", {"progress": "no"}, "progress")]:
        A(f"fdk.{name}", 8, "error", needle, lambda d, kw=kw: fdk(torch.rand(1, 1, *g8().sino_shape), g8(), **kw))
    return c.cases
