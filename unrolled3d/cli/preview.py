"""``reconstruct --preview out.png``: the output's three orthogonal central slices, drawn by
:func:`unrolled3d.figures.save_slices_png` (the demo's figure)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["check_preview", "write_preview"]


def check_preview(args: argparse.Namespace) -> None:
    """``--preview``: a ``.png`` that is none of the inputs and may be replaced, checked before the work."""
    if getattr(args, "preview", None) is None:
        return
    from ..figures import check_png_name
    from ..io import check_not_input, resolve_output

    png = check_png_name(args.preview)
    check_not_input([png], [args.measurements, args.weights, args.normal, args.out])
    resolve_output(png, args.force)


def write_preview(args: argparse.Namespace, volume: Any, vol_shape: Any, units: str) -> Path | None:
    """``--preview``: the output's three central slices (window: its 0.5th-99.5th percentiles),
    a colour bar in ``units``; ``volume`` a ``(D, H, W)`` tensor or a store read plane by plane."""
    if getattr(args, "preview", None) is None:
        return None
    from ..figures import save_slices_png

    title = f"{Path(args.out).name} ({args.method}), {' x '.join(str(n) for n in vol_shape)} voxels"
    return save_slices_png({args.method: volume}, args.preview, title=title, units=units, force=args.force)
