"""Python API, arguments of the partitioned reconstructor, the networks, the phantoms, metrics and
budgets, the normal operator and MRI: integers, late checks, NaN, huge sizes."""
from __future__ import annotations

import torch

from unrolled3d.budget import parse_bytes
from unrolled3d.data import PhantomDataset, shepp_logan_3d, voxelize
from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.metrics import psnr, ssim
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, variable_density_mask
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

from .catalogue import Case, Catalogue
from .inputs import CIRC, g8


def prec(**kw) -> PartitionedReconstructor:
    """A tiny partitioned reconstructor (8^3 volume, 4^3 patches), with ``kw`` replaced."""
    args = {"img_size": (8, 8, 8), "patch_size": (4, 4, 4)}
    args.update(kw)
    return PartitionedReconstructor(UnrolledPGD(UNet3D(base=2, depth=1), n_iter=1), **args)


def wrapper() -> DiagCirculantWrapper:
    """The normal-operator approximation of the inputs' scan, not fitted."""
    return DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8))


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    A = c.api

    # ------------------------------------------------------------------ 8. partition / models: integers, late checks

    for key, v, needle in [("patch_size", 4.7, "patch_size"), ("patch_size", (True,) * 3, "patch_size"),
                           ("patch_size", 0, "patch_size"), ("patch_size", (16, 16, 16), "patch"),
                           ("patch_size", (4, 4), "patch_size"), ("stride", 2.5, "stride"), ("stride", 0, "stride"),
                           ("stride", (8, 8, 8), "stride"), ("img_size", 8.0, "img_size"), ("img_size", "8", "img_size"),
                           ("img_size", (8, 8, 0), "img_size"), ("n_sweeps", 0, "n_sweeps"), ("n_sweeps", 1.5, "n_sweeps"),
                           ("progress", "no", "progress"), ("sweep_start", "middle", "sweep_start"),
                           ("patch_batch_size", 0, "patch_batch_size")]:
        A(f"partition.{key}={v!r}", 8, "error", needle, lambda d, key=key, v=v: prec(**{key: v}))
    A("partition.int_img_size_is_a_cube", 8, "ok", "", lambda d: prec(img_size=8), check=lambda d, r: r.img_shape == (8, 8, 8))
    A("partition.empty_batch", 8, "error", "empty",
      lambda d: prec()(torch.rand(0, 1, *g8().sino_shape), ConeBeamCT(g8())))
    A("partition.wrong_measurements", 8, "error", "", lambda d: prec()(torch.rand(1, 1, 4, 9, 9), ConeBeamCT(g8())))
    A("partition.physics_volume_mismatch", 8, "error", "",
      lambda d: prec(img_size=(6, 6, 6))(torch.rand(1, 1, *g8().sino_shape), ConeBeamCT(g8())))
    A("partition.with_patch_size_0", 8, "error", "patch", lambda d: prec().with_patch_size(0))
    for key, v in [("base", 2.5), ("depth", -1), ("depth", True), ("in_channels", 0), ("norm", "layer"), ("up", "sideways")]:
        A(f"unet.{key}={v!r}", 8, "error", key, lambda d, key=key, v=v: UNet3D(**{key: v}))
    for key, v in [("n_iter", 0), ("n_iter", 1.5), ("step_size", float("nan")), ("step_size", -1.0), ("shared", "yes"),
                   ("amp", "fp8")]:
        A(f"unrolled.{key}={v!r}", 5 if key == "step_size" else 8, "error", key,
          lambda d, key=key, v=v: UnrolledPGD(UNet3D(base=2, depth=1), **{key: v}))
    A("unrolled.denoiser_not_module", 8, "error", "denoiser", lambda d: UnrolledPGD("unet"))

    # data
    for key, v in [("length", -1), ("length", 2.5), ("n_ellipsoids", 4.7), ("kind", "cube"), ("vol_shape", 8.5),
                   ("voxel_size", float("nan")), ("seed", 1.5), ("n_ellipsoids", (5, 2))]:
        A(f"phantoms.{key}={v!r}", 5 if key == "voxel_size" else 8, "error", key if key != "n_ellipsoids" or v == 4.7 else "n_ellipsoids",
          lambda d, key=key, v=v: PhantomDataset(**{"length": 2, "vol_shape": 8, key: v}))
    # IndexError is what the sequence protocol requires of an out-of-range index (iteration stops on it)
    A("phantoms.index_out_of_range", 8, "error", "out of range", lambda d: PhantomDataset(2, 8)[5], errors=(IndexError,))
    A("voxelize.huge", 8, "error", ("memory",), lambda d: voxelize(shepp_logan_3d(1.0), (100000,) * 3))
    A("voxelize.radius_nan", 5, "error", "", lambda d: voxelize(shepp_logan_3d(float("nan")), (8, 8, 8)))
    A("voxelize.supersample_0", 8, "error", "supersample", lambda d: voxelize(shepp_logan_3d(3.0), (8, 8, 8), supersample=0))
    A("phantoms.huge_item", 8, "error", "memory", lambda d: PhantomDataset(1, 100000)[0])
    A("standard_cone_beam.size_8.5", 8, "error", "size", lambda d: standard_cone_beam(8.5, 4))
    A("standard_cone_beam.views_0", 8, "error", "", lambda d: standard_cone_beam(8, 0))
    A("standard_cone_beam.scan_half", 8, "error", "scan", lambda d: standard_cone_beam(8, 4, scan="half"))
    A("project.huge_volume", 8, "error", "memory",
      lambda d: ConeBeamCT(ConeBeamGeometry.circular(**{**CIRC, "vol_shape": (4000, 4000, 4000), "voxel_size": 0.001})).A_adjoint(
          torch.rand(1, 1, 4, 8, 10)))

    # metrics, budget
    A("psnr.shape_mismatch", 8, "error", "", lambda d: psnr(torch.rand(8, 8, 8), torch.rand(8, 8, 9)))
    A("ssim.shape_mismatch", 8, "error", "", lambda d: ssim(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9)))
    A("psnr.data_range_0", 8, "error", "data_range", lambda d: psnr(torch.rand(8, 8, 8), torch.rand(8, 8, 8), data_range=0.0))
    for v in ["12Q", "-5G", "", "nanG", "infG", "1e400", True]:
        A(f"parse_bytes={v!r}", 8, "error", "", lambda d, v=v: parse_bytes(v))
    A("parse_bytes.512M", 8, "ok", "", lambda d: parse_bytes("512M"), check=lambda d, r: r == 512 * 2**20)

    # normal operator

    for key, v in [("lr", float("nan")), ("lr", float("inf")), ("lr", 1e30), ("lr", -1.0), ("n_iter", 0), ("n_iter", 2.5),
                   ("batch_size", 0)]:
        A(f"normal.fit.{key}={v!r}", 5 if key == "lr" else 8, "error", "lr" if key == "lr" and v == 1e30 else key,
          lambda d, key=key, v=v: wrapper().fit(**{"n_iter": 3, key: v}))
    A("normal.ctor.kernel_radius=-1", 8, "error", "kernel_radius",
      lambda d: DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8), kernel_radius=-1))
    A("normal.ctor.kernel_radius=2.5", 8, "error", "kernel_radius",
      lambda d: DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8), kernel_radius=2.5))
    A("normal.set_parameters.nan_mask", 5, "error", "spatial_mask",
      lambda d: wrapper().set_parameters(spatial_mask=torch.full((1, 1, 8, 8, 8), float("nan"))))
    A("normal.set_parameters.wrong_mask", 8, "error", "spatial_mask",
      lambda d: wrapper().set_parameters(spatial_mask=torch.ones(1, 1, 8, 8, 9)))

    # MRI

    def mri_maps(put=None):
        def f(d):
            maps = birdcage_maps(2, (8, 8, 8))
            if put is not None:
                maps[1, 2, 3, 4] = put
            return MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2), maps)
        return f
    A("mri.coil_maps_nan", 5, "error", "coil_maps", mri_maps(complex("nan")))
    A("mri.coil_maps_inf", 5, "error", "coil_maps", mri_maps(complex("inf")))

    def mri_mask(value):
        def f(d):
            m = variable_density_mask((8, 8, 8), acceleration=2)
            m[0, 0, 0] = value
            return MultiCoilMRI3D(m, birdcage_maps(2, (8, 8, 8)))
        return f
    A("mri.mask_nan", 5, "error", "mask", mri_mask(float("nan")))
    A("mri.mask_shape_mismatch", 8, "error", "", lambda d: MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2),
                                                                         birdcage_maps(2, (8, 8, 6))))
    for v in [0, 0.5, float("nan")]:
        A(f"mri.mask_acceleration={v!r}", 8, "error", "acceleration",
          lambda d, v=v: variable_density_mask((8, 8, 8), acceleration=v))
    A("mri.birdcage_n_coils_2.5", 8, "error", "n_coils", lambda d: birdcage_maps(2.5, (8, 8, 8)))
    A("mri.empty_batch", 8, "error", "empty",
      lambda d: MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2), birdcage_maps(2, (8, 8, 8))).A(
          torch.rand(0, 2, 8, 8, 8)))
    A("mri.float16_computed", 8, "ok", "",
      lambda d: MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2), birdcage_maps(2, (8, 8, 8))).A(
          torch.rand(1, 2, 8, 8, 8).half()), check=lambda d, y: y.dtype == torch.float16 and bool(torch.isfinite(y).all()))
    return c.cases
