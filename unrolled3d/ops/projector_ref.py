"""Pure-PyTorch reference twin of the C++/CUDA cone-beam projector pair.

The same Joseph discretisation as ``csrc/cone_beam.h`` (same driving-axis rule, same plane
weights, same bilinear interpolation with zeros outside), vectorised over rays with plain tensor
indexing. Slow and memory hungry: it is the truth the compiled kernels are tested against and the
baseline of ``bench/test_bench_projector.py``.
"""
from __future__ import annotations

import torch

from ..geometry import ConeBeamGeometry
from ._joseph import backproject_raw, project_raw
from .projector import check_sinogram, check_volume

__all__ = ["cone_project_ref", "cone_backproject_ref"]


def cone_project_ref(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Reference forward projection. ``(B, C, D, H, W) -> (B, C, n_views, rows, cols)``."""
    check_volume(volume, geometry)
    return project_raw(volume, geometry.views_tensor(volume.device), geometry.vol_geom, *geometry.det_shape)


def cone_backproject_ref(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Reference backprojection (the transpose). ``(B, C, n_views, rows, cols) -> (B, C, D, H, W)``."""
    check_sinogram(sino, geometry)
    return backproject_raw(sino, geometry.views_tensor(sino.device), geometry.vol_geom, *geometry.vol_shape)
