r"""What a configured network costs before it is built: parameters and activations on one patch.

A model configuration is a handful of integers (``n_iter``, ``base``, ``depth``, the patch),
and small numbers make large networks: channels grow as ``base * 2**level``, so ``depth = 64``
asks for more parameters than there are atoms, and ``n_iter`` multiplies the memory of
training. :func:`check_model_memory` prices a configuration from formulas, allocating nothing,
and refuses one that cannot fit the machine (or a given budget), naming the key to change.

The estimate is a lower bound, so that only the impossible is refused:

- parameters: exact (:func:`unet_parameters`, tested against the built modules); training
  holds each four times in float32 (weight, gradient, Adam's two moments), inference once;
- activations: the outputs of the encoder's convolutions on the patch (padded to a multiple of
  ``2**depth``), each ``channels x voxels`` float32 values; training keeps them for every
  unrolled iteration (autograd saves them for the backward pass), inference holds the two
  largest of one level at a time.

Examples
--------
>>> from unrolled3d.models.cost import unet_parameters
>>> from unrolled3d.models import UNet3D
>>> unet_parameters(4, 1) == sum(p.numel() for p in UNet3D(base=4, depth=1).parameters())
True
"""
from __future__ import annotations

import math
from typing import Any

from .._validation import memory_of

__all__ = ["unet_parameters", "model_parameters", "activation_bytes", "model_bytes", "check_model_memory"]

_FLOAT = 4  # bytes of a float32


def unet_parameters(base: int, depth: int, channels: int = 1) -> int:
    """Parameters of ``UNet3D(channels, channels, base, depth)`` (no normalisation, transposed
    up-sampling: the defaults)."""
    ch = [base * 2**level for level in range(depth + 1)]

    def double_conv(c_in: int, c_out: int) -> int:  # two 3x3x3 convolutions with biases
        return 27 * c_in * c_out + c_out + 27 * c_out * c_out + c_out

    n = double_conv(channels, ch[0]) + sum(double_conv(ch[i - 1], ch[i]) for i in range(1, depth + 1))
    for i in range(depth, 0, -1):
        n += 8 * ch[i] * ch[i - 1] + ch[i - 1]  # 2x2x2 transposed convolution
        n += double_conv(2 * ch[i - 1], ch[i - 1])
    return n + ch[0] * channels + channels  # the 1x1x1 head


def model_parameters(model: Any) -> int:
    """Parameters of the network a :class:`~unrolled3d.models.ModelConfig` describes:
    ``n_iter`` step sizes and one UNet (``shared``) or one per iteration."""
    unets = 1 if model.shared else model.n_iter
    return unets * unet_parameters(model.base, model.depth) + model.n_iter


def activation_bytes(model: Any, patch: int, training: bool) -> int:
    """Lower bound of the activations of one patch of edge ``patch`` (module docstring)."""
    step = 2**model.depth
    padded = math.ceil(patch / step) * step
    levels = [(model.base * 2**level) * (padded // 2**level) ** 3 for level in range(model.depth + 1)]
    if training:  # two convolution outputs per encoder level, kept for every iteration
        return _FLOAT * 2 * sum(levels) * model.n_iter
    return _FLOAT * 2 * max(levels)


def model_bytes(model: Any, patch: int, training: bool) -> int:
    """Lower bound of the memory a network and one patch's activations need (module docstring)."""
    copies = 4 if training else 1  # weights (+ gradients and Adam's two moments)
    return _FLOAT * copies * model_parameters(model) + activation_bytes(model, patch, training)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB" if n < 1024**2 else f"10^{math.log10(n * 1024**6):.0f} B"


def check_model_memory(model: Any, patch: int, training: bool, limit: int | None = None,
                       limit_name: str | None = None) -> int:
    """Refuse a network (and patch) whose lower-bound memory exceeds ``limit`` (default: this
    machine's memory); return the bound in bytes.

    The error names the key to change: the first of ``[model] depth``, ``base``, ``n_iter`` and
    ``[partition] patch`` whose default alone brings the bound under the limit (else all of the
    keys above their defaults).

    Examples
    --------
    >>> from unrolled3d.models import ModelConfig
    >>> from unrolled3d.models.cost import check_model_memory
    >>> check_model_memory(ModelConfig(), 24, training=True) < 2**26
    True
    >>> check_model_memory(ModelConfig(depth=10, base=1024), 24, training=False)
    Traceback (most recent call last):
        ...
    ValueError: [model] depth = 10 (with base 1024, n_iter 5, shared True, patch 24) makes a network that needs at least ...
    """
    import dataclasses

    need = model_bytes(model, patch, training)
    total = memory_of("cpu") if limit is None else limit
    if total is None or need <= total:
        return need
    defaults = type(model)()
    culprits = [k for k in ("depth", "base", "n_iter") if getattr(model, k) != getattr(defaults, k)
                and model_bytes(dataclasses.replace(model, **{k: getattr(defaults, k)}), patch, training) <= total]
    if not culprits and patch > 24 and model_bytes(model, 24, training) <= total:
        culprits = ["patch"]
    if not culprits:
        culprits = [k for k in ("depth", "base", "n_iter") if getattr(model, k) > getattr(defaults, k)] or ["patch"]
    key = culprits[0]
    where = "[partition] patch" if key == "patch" else f"[model] {key}"
    values = {"base": model.base, "depth": model.depth, "n_iter": model.n_iter, "shared": model.shared, "patch": patch}
    context = ", ".join(f"{k} {v}" for k, v in values.items() if k != key)
    raise ValueError(f"{where} = {values[key]} (with {context}) makes a network that needs at least {_human(need)} "
                     f"for {'training' if training else 'inference'} (parameters and the activations of one "
                     f"patch), more than the {_human(total)} of {limit_name or 'this machine'}")
