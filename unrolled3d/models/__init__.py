"""Learned models: a small 3D UNet denoiser, unrolled proximal gradient descent, the
post-processing baseline, and the model a training configuration describes."""
from .config import ModelConfig, PartitionConfig, build_model
from .post import PostProcessing
from .unet3d import UNet3D
from .unrolled import SigmaAdapter, UnrolledPGD, deepinv_denoiser

__all__ = ["UNet3D", "UnrolledPGD", "SigmaAdapter", "deepinv_denoiser", "build_model", "ModelConfig", "PartitionConfig",
           "PostProcessing"]
