"""Learned models: a small 3D UNet denoiser and unrolled proximal gradient descent."""
from .unet3d import UNet3D
from .unrolled import SigmaAdapter, UnrolledPGD, deepinv_denoiser

__all__ = ["UNet3D", "UnrolledPGD", "SigmaAdapter", "deepinv_denoiser"]
