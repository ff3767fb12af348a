"""Files of a fitted ``H``: its state dict plus the metadata that define it.

A file is one ``torch.save`` dictionary: the entries of
:meth:`DiagCirculantNormal.state_dict() <torch.nn.Module.state_dict>` (``spatial_mask``,
``fourier_filter``: the spectrum with the kernel cut applied) beside the metadata ``format``,
``img_shape``, ``scaling``, ``variant``, ``complex_images``, ``kernel_radius`` and
``geometry_fingerprint`` (the acquisition ``H`` was fitted for). That is the layout every
version of the package wrote (format ``unrolled3d.DiagCirculant/1``), so old files load as they
are; files from before complex images and kernel radii lack those two entries and load as real
images without a radius. Files are written atomically (:func:`unrolled3d.io.atomic.atomic_path`)
and read with ``torch.load(weights_only=True)``; every problem is a
:class:`~unrolled3d.errors.FileFormatError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError, first_line
from ..io.atomic import atomic_path
from .layout import acquisition_of
from .operator import DiagCirculantNormal

__all__ = ["FILE_FORMAT", "save_normal", "load_normal", "load_parameters", "read_normal_file"]

#: the ``format`` entry of a saved operator file
FILE_FORMAT = "unrolled3d.DiagCirculant/1"

_STATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "spatial_mask": torch.Tensor, "fourier_filter": torch.Tensor, "img_shape": list, "scaling": (int, float),
    "variant": str}
_WHAT = "a DiagCirculantWrapper file from save()"


def save_normal(H: DiagCirculantNormal, path: str | os.PathLike, force: bool = False) -> None:
    """Write ``H``'s state dict and metadata to ``path`` (atomically and durably).

    Non-finite parameters (a diverged fit) are refused with a ``ValueError``; ``force`` replaces a
    read-only file.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from unrolled3d.normal import DiagCirculantNormal, load_normal, save_normal
    >>> H = DiagCirculantNormal((4, 4, 4), spatial_mask=torch.rand(4, 4, 4), fourier_filter=torch.ones(8, 8, 5))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_normal(H, Path(d) / "h.pt")
    ...     torch.equal(load_normal(Path(d) / "h.pt").spatial_mask, H.spatial_mask)
    True
    """
    if not isinstance(H, DiagCirculantNormal):
        raise TypeError(f"H must be a unrolled3d.normal.DiagCirculantNormal, got {type(H).__name__}")
    H.require_fitted()
    with torch.no_grad():
        tensors = {"spatial_mask": H.spatial_mask.detach(), "fourier_filter": H.effective_filter().detach()}
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise ValueError("the operator's parameters contain NaN or infinite values (a diverged fit? lower the "
                         "learning rate): not saved")
    state = {
        "format": FILE_FORMAT,
        **{k: v.cpu() for k, v in tensors.items()},
        "img_shape": list(H.img_shape),
        "scaling": H.scaling,
        "variant": H.variant,
        "complex_images": H.complex_images,
        "kernel_radius": None if H.kernel_radius is None else list(H.kernel_radius),
        "geometry_fingerprint": H.acquisition,
    }
    with atomic_path(path, replace_read_only=force) as tmp:
        torch.save(state, tmp)


def read_normal_file(path: str | os.PathLike) -> dict:
    """A saved operator's dictionary, loaded safely and checked entry by entry.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from unrolled3d.normal import read_normal_file
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (Path(d) / "h.pt").write_bytes(b"not a file of ours")
    ...     read_normal_file(Path(d) / "h.pt")
    Traceback (most recent call last):
        ...
    unrolled3d.errors.FileFormatError: ...h.pt: not a readable DiagCirculantWrapper file (...)
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"operator file {p} does not exist")
    if not p.is_file() or p.stat().st_size == 0:
        raise FileFormatError(p, f"empty or not a file (expected {_WHAT})")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, a zip error, UnpicklingError (weights_only refusing a pickle) ...
        raise FileFormatError(p, f"not a readable DiagCirculantWrapper file ({first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FILE_FORMAT:
        raise FileFormatError(p, f"not a DiagCirculantWrapper file (format {FILE_FORMAT!r} expected)")
    for key, kind in _STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise FileFormatError(p, f"the entry {key!r} is missing or of the wrong type")
    for key in ("spatial_mask", "fourier_filter"):
        if not bool(torch.isfinite(state[key]).all()):
            raise FileFormatError(p, f"{key} contains NaN or infinite values")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in state["img_shape"]) \
            or len(state["img_shape"]) != 3:
        raise FileFormatError(p, f"img_shape {state['img_shape']!r} is not 3 positive integers")
    return state


def _saved_radius(state: dict) -> tuple[int, ...] | None:
    radius = state.get("kernel_radius")
    return None if radius is None else tuple(radius)


def _check_acquisition(state: dict, acquisition: str | None, path: str | os.PathLike) -> None:
    if state.get("geometry_fingerprint") != acquisition:
        raise FileFormatError(path, f"was fitted for geometry {state.get('geometry_fingerprint')}, this physics has "
                                    f"{acquisition}: refit the operator for this geometry")


def load_normal(path: str | os.PathLike, physics: Any = None, device: torch.device | str = "cpu"
                ) -> DiagCirculantNormal:
    """The ``H`` saved in ``path`` (size, image kind, variant, scaling and kernel radius as saved).

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save_normal` (or ``DiagCirculantWrapper.save``).
    physics : deepinv.physics.LinearPhysics, optional
        The acquisition ``H`` will serve: its fingerprint must be the one the file was fitted for
        (a ``FileFormatError`` saying to refit otherwise). Without it nothing is checked.
    device : torch.device or str
        Where the parameters go.

    Returns
    -------
    DiagCirculantNormal
        Fitted, with ``acquisition`` set to the file's fingerprint.
    """
    state = read_normal_file(path)
    if physics is not None:
        _check_acquisition(state, acquisition_of(physics), path)
    try:
        H = DiagCirculantNormal(tuple(state["img_shape"]), scaling=float(state["scaling"]), variant=state["variant"],
                                complex_images=bool(state.get("complex_images", False)),
                                kernel_radius=_saved_radius(state), dtype=state["spatial_mask"].dtype, device=device)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"invalid operator settings ({exc})") from None
    return _set_from(H, state, path)


def _set_from(H: DiagCirculantNormal, state: dict, path: str | os.PathLike) -> DiagCirculantNormal:
    """``H`` holding the file's parameters and acquisition."""
    try:
        H.set_parameters(state["spatial_mask"], state["fourier_filter"])
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, str(exc)) from None
    H.acquisition = state.get("geometry_fingerprint")
    return H


def load_parameters(H: DiagCirculantNormal, path: str | os.PathLike, acquisition: str | None) -> DiagCirculantNormal:
    """Load the parameters saved in ``path`` into ``H``, whose settings the file must match, for the
    acquisition named ``acquisition`` (a fingerprint, or ``None`` for a physics without one).

    Every mismatch (volume size, image kind, kernel radius, acquisition, variant or scaling) is a
    ``FileFormatError`` saying which. Returns ``H``.
    """
    state = read_normal_file(path)
    if tuple(state["img_shape"]) != H.img_shape:
        raise FileFormatError(path, f"holds an operator for a volume of {tuple(state['img_shape'])}, "
                                    f"this wrapper is {H.img_shape}")
    saved_complex = bool(state.get("complex_images", False))  # files from before complex images: real
    if saved_complex != H.complex_images:
        kinds = {True: "complex", False: "real"}
        raise FileFormatError(path, f"holds an operator for {kinds[saved_complex]} images, this wrapper is for "
                                    f"{kinds[H.complex_images]} images")
    if _saved_radius(state) != H.kernel_radius:
        raise FileFormatError(path, f"holds an operator with kernel_radius {state.get('kernel_radius')}, this "
                                    f"wrapper has {H.kernel_radius}")
    _check_acquisition(state, acquisition, path)
    if state["variant"] != H.variant or float(state["scaling"]) != H.scaling:
        raise FileFormatError(path, f"is a {state['variant']!r} operator with scaling {state['scaling']}, this "
                                    f"wrapper is {H.variant!r} with scaling {H.scaling}")
    return _set_from(H, state, path)
