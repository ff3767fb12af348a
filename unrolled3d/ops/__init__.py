"""Autograd-compatible, ``torch.library``-registered operators.

``projector``: the C++/CUDA cone-beam projector pair. ``fused``: Triton kernels of the normal
operator approximation (masked gather, spectral filter, masked scatter-add).
"""
from .projector import cone_backproject, cone_project

__all__ = ["cone_project", "cone_backproject"]
