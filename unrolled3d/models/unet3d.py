"""A small 3D UNet, the default learned denoiser of the unrolled networks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from deepinv.models import Denoiser
from torch import nn

from .._validation import boolean, integer

__all__ = ["UNet3D"]


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


class _DoubleConv(nn.Sequential):
    """``(Conv3d 3x3x3 -> [GroupNorm] -> ReLU) x 2``, size preserving."""

    def __init__(self, c_in: int, c_out: int, norm: str | None) -> None:
        layers: list[nn.Module] = []
        for a, b in ((c_in, c_out), (c_out, c_out)):
            layers.append(nn.Conv3d(a, b, 3, padding=1, bias=norm is None))
            if norm == "group":
                layers.append(nn.GroupNorm(_groups(b), b))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet3D(Denoiser):
    r"""A small 3D UNet: ``depth`` max-pool down-sampling levels with skip connections.

    Encoder level ``l`` (``l = 0 .. depth``) has ``base * 2**l`` channels and two 3x3x3
    convolutions; the decoder up-samples with a 2x2x2 transposed convolution (or trilinear
    interpolation followed by a 1x1x1 convolution, ``up="trilinear"``), concatenates the skip
    connection and applies two convolutions; a final 1x1x1 convolution maps to ``out_channels``.

    Any spatial size works: the input is padded (edge replication) to a multiple of ``2**depth``
    along each axis and the output is cropped back.

    A deepinv ``Denoiser`` (``D(x, sigma)``, ``sigma`` ignored), so deepinv's plug-and-play priors
    take it, and a partitioned reconstructor refuses it as a base (it cannot take ``(y, physics)``).

    Parameters
    ----------
    in_channels : int
        input channels ``C``.
    out_channels : int
        output channels (must equal ``in_channels`` when ``residual``).
    base : int
        channels of the first level.
    depth : int
        number of down-sampling steps (``0`` gives a plain conv net).
    residual : bool
        return ``x + net(x)`` (the net learns a correction).
    norm : str
        ``None`` (default: no normalisation, so a patch's output does not depend on
        statistics of the whole patch, which keeps overlapping patches consistent) or ``"group"``
        (GroupNorm).
    up : str
        ``"transpose"`` (default) or ``"trilinear"``.

    Shapes: ``x`` is ``[B, C_in, D, H, W]``, the output ``[B, C_out, D, H, W]``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import UNet3D
    >>> net = UNet3D(base=4, depth=1)
    >>> net(torch.zeros(1, 1, 5, 6, 7)).shape           # any size: odd sizes are padded inside
    torch.Size([1, 1, 5, 6, 7])
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 8, depth: int = 2,
                 residual: bool = True, norm: str | None = None, up: str = "transpose") -> None:
        super().__init__()
        self.in_channels = integer("in_channels", in_channels, 1)
        self.out_channels = integer("out_channels", out_channels, 1)
        self.base = integer("base", base, 1)
        self.depth = integer("depth", depth, 0)
        if norm not in (None, "group"):
            raise ValueError(f"norm must be None or 'group', got {norm!r}")
        if up not in ("transpose", "trilinear"):
            raise ValueError(f"up must be 'transpose' or 'trilinear', got {up!r}")
        self.residual = boolean("residual", residual)
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(f"residual=True needs in_channels == out_channels, got {in_channels} and {out_channels}")
        self.up_mode = up
        ch = [self.base * 2**level for level in range(self.depth + 1)]
        self.enc = nn.ModuleList([_DoubleConv(self.in_channels, ch[0], norm)]
                                 + [_DoubleConv(ch[i - 1], ch[i], norm) for i in range(1, self.depth + 1)])
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(self.depth, 0, -1):
            if up == "transpose":
                self.up.append(nn.ConvTranspose3d(ch[i], ch[i - 1], 2, stride=2))
            else:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                                             nn.Conv3d(ch[i], ch[i - 1], 1)))
            self.dec.append(_DoubleConv(2 * ch[i - 1], ch[i - 1], norm))
        self.head = nn.Conv3d(ch[0], self.out_channels, 1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Denoise ``x`` ``[B, C_in, D, H, W]`` -> ``[B, C_out, D, H, W]`` (extra arguments, e.g. a
        noise level passed by deepinv code, are ignored)."""
        if x.ndim != 5:
            raise ValueError(f"UNet3D expects a 5-D tensor [B, C, D, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D expects {self.in_channels} input channels, got {x.shape[1]}")
        size = x.shape[2:]
        m = 2**self.depth
        pad = [math.ceil(s / m) * m - s for s in size]
        h = x
        if any(pad):
            # F.pad lists the last axis first: (W_left, W_right, H_left, H_right, D_left, D_right)
            h = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips = []
        for level, block in enumerate(self.enc):
            if level > 0:
                h = self.pool(h)
            h = block(h)
            skips.append(h)
        skips.pop()
        for up, block in zip(self.up, self.dec):
            h = block(torch.cat([up(h), skips.pop()], dim=1))
        out = self.head(h)
        if any(pad):
            out = out[..., :size[0], :size[1], :size[2]]
        return x + out if self.residual else out
