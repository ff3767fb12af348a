"""Pictures of volumes: three orthogonal central slices per volume, on one stated display window,
with a colour bar in the volume's units and the index of every slice.

One function, :func:`plot_slices` (:func:`save_slices_png` writes it to a PNG), draws the demo's
figure, ``unrolled3d reconstruct --preview``, the quality benchmarks' slices and the
documentation's pictures, so that they all read the same way.

Examples
--------
>>> import torch, tempfile, pathlib
>>> from unrolled3d.figures import save_slices_png
>>> x = torch.zeros(16, 16, 16); x[4:12, 4:12, 4:12] = 0.02
>>> png = save_slices_png({"truth": x}, pathlib.Path(tempfile.mkdtemp()) / "x.png", units="1/mm")
>>> png.read_bytes()[:4] == b"\\x89PNG"
True
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from .io.atomic import atomic_path

__all__ = ["plot_slices", "save_slices_png", "display_window", "central_slices", "check_png_name", "BlockReader"]


def check_png_name(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`, refused unless it ends in ``.png`` (the figure is PNG
    bytes: a ``.txt`` or ``.npy`` name would lie about them)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"the figure {p} must end in .png (it is a PNG image), got {p.suffix or 'no ending'!r}")
    return p


def display_window(volume: torch.Tensor, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """A display window ``(low, high)`` for ``volume``: its ``percentiles`` (robust to a few hot
    voxels), widened to ``(min, max)`` when those coincide (a constant or binary volume).

    Parameters
    ----------
    volume : torch.Tensor
        Any shape, real.
    percentiles : (float, float)
        Lower and upper percentile in ``[0, 100]``.
    """
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    flat = volume.detach().float().flatten().cpu()
    if flat.numel() > 2**22:  # a regular sub-sample: quantile() refuses very large inputs
        flat = flat[:: flat.numel() // 2**22 + 1]
    q = torch.quantile(flat, torch.tensor([lo_p / 100, hi_p / 100]))
    lo, hi = float(q[0]), float(q[1])
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:  # constant: any window shows it; one unit wide around the value
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


class BlockReader(Protocol):
    """A volume read block by block (the package's array stores, :class:`unrolled3d.io.LazyVolume`):
    its ``shape`` and ``read(start, size)``, a NumPy block.

    Examples
    --------
    >>> import numpy as np
    >>> from unrolled3d.figures import central_slices
    >>> class Ramp:  # any object with shape and read() will do
    ...     shape = (4, 5, 6)
    ...     def read(self, start, size):
    ...         z, y, x = np.meshgrid(*[np.arange(a, a + n) for a, n in zip(start, size)], indexing="ij")
    ...         return (100 * z + 10 * y + x).astype(np.float32)
    >>> [(plane, i, tuple(s.shape)) for plane, i, s in central_slices(Ramp())]
    [('axial z', 2, (5, 6)), ('coronal y', 2, (4, 6)), ('sagittal x', 3, (4, 5))]
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    def read(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray: ...


def central_slices(volume: torch.Tensor | BlockReader) -> list[tuple[str, int, torch.Tensor]]:
    """The axial, coronal and sagittal central slices of a ``(D, H, W)`` = ``(z, y, x)`` volume:
    ``[(plane, index, slice), ...]`` with ``index`` the voxel index on the cut axis.

    ``volume`` is a tensor, or a volume read block by block (``read(start, size)``): then only
    the three planes are read, so that a volume larger than memory can be previewed."""
    shape = tuple(volume.shape)
    if len(shape) != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {shape}")
    d, h, w = shape
    if isinstance(volume, torch.Tensor):
        return [("axial z", d // 2, volume[d // 2]), ("coronal y", h // 2, volume[:, h // 2]),
                ("sagittal x", w // 2, volume[:, :, w // 2])]
    planes = [((d // 2, 0, 0), (1, h, w)), ((0, h // 2, 0), (d, 1, w)), ((0, 0, w // 2), (d, h, 1))]
    cut = [torch.from_numpy(np.asarray(volume.read(start, size))).reshape(
        [n for n, axis in zip(size, range(3)) if axis != i]) for i, (start, size) in enumerate(planes)]
    return [("axial z", d // 2, cut[0]), ("coronal y", h // 2, cut[1]), ("sagittal x", w // 2, cut[2])]


def plot_slices(volumes: Mapping[str, torch.Tensor | BlockReader], title: str = "",
                window: Sequence[float] | None = None, units: str = "a.u.", figure: Any = None) -> Any:
    """Draw three orthogonal central slices of each volume, one row per volume, on one window.

    Every panel is titled with its plane and slice index (``axial z = 24 (of 48)``); each row has a
    colour bar labelled with ``units``; the window is stated in the figure's title. Slices are
    drawn with ``origin="lower"`` (index 0 of the vertical axis at the bottom, as in the
    geometry's ``z`` and ``y``).

    Parameters
    ----------
    volumes : mapping of str to torch.Tensor or BlockReader
        ``label -> (D, H, W)`` volume (a tensor, or a store read block by block: only its three
        planes are read), the label printed at the left of its row. Every row shares one window,
        so that grey levels compare across rows.
    title : str
        The figure's title (the window is appended).
    window : (float, float), optional
        Display window ``(low, high)`` in ``units``; default :func:`display_window` of the first
        volume (its 0.5th and 99.5th percentiles; of its three planes, for a store).
    units : str
        The values' units, on the colour bars (``"1/mm"`` for attenuation, ``"HU"``, ...).
    figure : matplotlib.figure.Figure, optional
        Where to draw; default a new ``pyplot`` figure (shown by ``plt.show()``, captured by
        notebooks and the documentation's gallery).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not volumes:
        raise ValueError("volumes is empty: give at least one label -> (D, H, W) tensor")
    rows = {label: central_slices(v if not isinstance(v, torch.Tensor) else v.detach().float().cpu())
            for label, v in volumes.items()}
    shapes = {label: tuple(v.shape) for label, v in volumes.items()}
    if window is None:  # from the first volume (its three planes only, when it is read block by block)
        first = next(iter(volumes.values()))
        sample = first if isinstance(first, torch.Tensor) else torch.cat(
            [img.flatten() for _, _, img in next(iter(rows.values()))])
        lo, hi = display_window(sample)
    else:
        lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window}")
    size = (10.5, 3.2 * len(volumes))
    if figure is None:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size, layout="constrained")
    axes = figure.subplots(len(volumes), 3, squeeze=False)
    for row, (label, slices) in enumerate(rows.items()):
        shape = shapes[label]
        for col, (plane, index, img) in enumerate(slices):
            ax = axes[row, col]
            image = ax.imshow(img.float().numpy(), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{plane} = {index} (of {shape[col]})", fontsize=9)
            if col == 0:
                ax.set_ylabel(label)
        bar = figure.colorbar(image, ax=list(axes[row]), fraction=0.025, pad=0.02)
        bar.set_label(units)
    full_title = f"{title}\n" if title else ""
    figure.suptitle(f"{full_title}window [{lo:.4g}, {hi:.4g}] {units}", fontsize=10)
    return figure


def save_slices_png(volumes: Mapping[str, torch.Tensor | BlockReader], path: str | Path, title: str = "",
                    window: Sequence[float] | None = None, units: str = "a.u.", force: bool = False) -> Path:
    """:func:`plot_slices` written to a PNG file (atomically), without ``pyplot``'s global state.

    Parameters
    ----------
    volumes, title, window, units
        As in :func:`plot_slices`.
    path : str or Path
        The PNG; must end in ``.png``.
    force : bool
        Replace a read-only file.

    Returns
    -------
    Path
        ``path``.
    """
    check_png_name(path)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.2 * max(len(volumes), 1)), layout="constrained")
    plot_slices(volumes, title=title, window=window, units=units, figure=fig)
    with atomic_path(path, replace_read_only=force) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return Path(path)
