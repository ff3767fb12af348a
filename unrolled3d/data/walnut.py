"""Reader for cone-beam scans laid out like the public Walnut CBCT data set.

The data set: H. Der Sarkissian, F. Lucka, M. van Eijnatten, G. Colacicco, S. B. Coban,
K. J. Batenburg, "A cone-beam X-ray CT data collection designed for machine learning",
Sci. Data 6, 215 (2019), Zenodo records 2686725 and following. One folder per walnut and source
position (orbit), e.g. ``Walnut1/Projections/tubeV2/``, holds

- ``di000000.tif``: the dark field; ``io000000.tif``, ``io000001.tif``: flat fields taken before
  and after the scan;
- ``scan_000000.tif`` ... ``scan_NNNNNN.tif``: the projections (1201 in the data set), raw
  intensities as the detector reads them out; the last one is taken at the same angle as the
  first (360 degrees);
- ``scan_geom_corrected.geom`` (and ``scan_geom_original.geom``): one row of 12 numbers per
  projection file, ASTRA ``cone_vec`` vectors ``(src, det, u, v)`` in mm.

The conventions below are those of the authors' reconstruction scripts
(github.com/cicwi/WalnutReconstructionCodes: ``FDKReconstruction.py``/``.m`` and
``GroundTruthReconstruction.py``/``.m``), read for this module and reimplemented here:

1. **Image orientation.** The detector is read out in landscape mode; every image (dark, flats,
   projections) is turned into the frame of the ``cone_vec`` vectors by flipping it upside down
   and then transposing it: ``detector = raw[::-1, :].T``, i.e. ``detector[r, c] =
   raw[C - 1 - c, r]`` for a raw image of shape ``(C, R)`` (768 x 972 in the data set) and a
   detector of ``R`` rows by ``C`` columns (972 x 768). So raw columns become detector rows in
   order, and raw rows become detector columns in reverse: the flipped axis is ``u``. Detector
   row ``r`` runs along ``v`` and
   column ``c`` along ``u``, exactly as in :class:`unrolled3d.geometry.ConeBeamGeometry` (ASTRA's
   ``cone_vec`` convention), so the vectors are used unchanged. The scripts' final transpose to
   ASTRA's ``[rows, views, cols]`` layout is not needed: our measurements are
   ``[views, rows, cols]``.
2. **Flat/dark correction and log.** The two flat fields are averaged; the transmission is
   ``t = (I - dark) / (flat - dark)`` and the line integral ``p = -ln t`` (Beer-Lambert). The
   Python scripts take the log unguarded; the MATLAB scripts replace ``t <= 0`` by the smallest
   positive value and clip ``t`` to at most 1. Here (our choice), with ``eps = 1e-6`` by default:
   the denominator ``flat - dark`` is clamped to at least ``eps`` so nothing is ever divided by
   zero; a pixel whose ``flat - dark < eps`` (dead: it measures nothing) gets the line integral
   0 (no attenuation) instead of a meaningless ratio; elsewhere the transmission is clamped to at
   least ``eps``, so ``p <= -ln(eps) = 13.8``. A ``RuntimeWarning`` counts the dead pixels and
   the clamped values. Transmissions above 1 (noise) are kept, so line integrals may be slightly
   negative, as in the Python scripts.
3. **View order and the duplicate view.** The projections were acquired in the opposite order
   to the geometry rows ("portrait mode acquisition"): with ``N`` projection files and ``N``
   geometry rows (``N = 1201``), geometry row ``k`` goes with file ``scan_{N-1-k}``, for
   ``k = 0 .. N-2``. Row ``N-1`` and file ``scan_000000`` (the repeated 360 degree view) are
   dropped. This is the pairing of the authors' most recently updated script
   (``GroundTruthReconstruction.m``, "last update 06.11.2020": files ``1201:-step:2`` in
   MATLAB's 1-based indexing, rows ``1:step:1200``) and of a version of
   ``GroundTruthReconstruction.py`` (files ``range(1200, 0, -step)``, rows
   ``range(0, 1200, step)``). The FDK scripts (``FDKReconstruction.m``, "last update
   16.09.2020", and ``FDKReconstruction.py``) pair row ``k`` with file ``N-2-k`` instead, one
   view (0.3 degrees) apart; the earliest ``FDKReconstruction.py`` read files ``0..1199`` and
   reversed the stack, the same pairing ``N-2-k``. We follow the later one.
4. **View subsampling.** ``view_step = s`` keeps geometry rows ``0, s, 2s, ... < N-1`` (and
   their files ``N-1-k``), as the scripts' ``angluar_sub_sampling`` does.
5. **Volume.** The vectors are in mm in ASTRA's 3D world, whose volume arrays ``[z, y, x]`` are
   ours; the authors reconstruct ``501^3`` voxels of 0.1 mm centred at the origin (the defaults
   here).

Detector binning (optional, not in the scripts): ``binning = b`` averages the raw intensities
(dark, flats, projections) over ``b x b`` pixel blocks in the detector frame before the
correction, dropping the last ``rows % b`` rows and ``cols % b`` columns; the geometry follows
exactly (``u`` and ``v`` scaled by ``b``, the detector centre moved to the centre of the kept
pixels).
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tqdm.auto import tqdm

from .._validation import boolean, int_triple, integer, real_tuple
from ..errors import FileFormatError
from ..geometry import ConeBeamGeometry

__all__ = ["read_walnut", "read_walnut_geometry", "walnut_views", "raw_to_detector", "DEFAULT_EPS"]

#: Smallest flat-minus-dark denominator and smallest transmission allowed before the log.
DEFAULT_EPS = 1e-6

_DARK = "di000000.tif"
_FLATS = ("io000000.tif", "io000001.tif")
_PROJ_RE = re.compile(r"^scan_(\d{6})\.tif$")


# --------------------------------------------------------------------------- conventions
def raw_to_detector(image: np.ndarray) -> np.ndarray:
    """A raw Walnut image in the detector frame of the geometry vectors (convention 1).

    Parameters
    ----------
    image : numpy.ndarray, shape (C, R)
        As stored in the TIFF file (landscape read-out; ``(768, 972)`` in the data set).

    Returns
    -------
    numpy.ndarray, shape (R, C)
        ``out[r, c] = image[C - 1 - c, r]``: row ``r`` along ``v``, column ``c`` along ``u``.
    """
    return np.ascontiguousarray(np.flipud(image).T)


def walnut_views(n_files: int, view_step: int = 1) -> list[tuple[int, int]]:
    """The (geometry row, projection file index) pairs used (conventions 3 and 4).

    Parameters
    ----------
    n_files : int
        Number of projection files ``scan_000000 .. scan_{n_files-1}`` (= geometry rows), the
        last one repeating the first view.
    view_step : int
        Keep every ``view_step``-th view; at least two views must be kept (a scan of one view keeps it).

    Returns
    -------
    list of (int, int)
        ``(k, n_files - 1 - k)`` for ``k = 0, view_step, ... < n_files - 1``.
    """
    n_files = integer("n_files", n_files, 1)
    view_step = integer("view_step", view_step, 1)
    if n_files < 2:
        raise ValueError(f"a Walnut scan needs at least 2 projections (the last repeats the first), got {n_files}")
    n_views = n_files - 1
    if n_views >= 2 and view_step > n_views - 1:  # one view is a radiograph: nothing to reconstruct from
        raise ValueError(f"view_step={view_step} keeps 1 of the scan's {n_views} views; a reconstruction needs at "
                         f"least 2: use a step of at most {n_views - 1}")
    return [(k, n_files - 1 - k) for k in range(0, n_files - 1, view_step)]


# --------------------------------------------------------------------------- checks
def _read_image(path: Path) -> np.ndarray:
    """One raw 2D TIFF image as float64, with clear errors."""
    try:
        import tifffile
    except ImportError:
        raise ImportError("reading Walnut scans needs the package 'tifffile': pip install tifffile") from None

    if not path.is_file():
        raise FileNotFoundError(f"Walnut scan: missing file {path}")
    try:
        img = tifffile.imread(path)
    except Exception as exc:
        raise FileFormatError(path, f"not a readable TIFF image (truncated or corrupt: {type(exc).__name__}: {exc})") \
            from None
    if img.ndim != 2:
        raise FileFormatError(path, f"expected one 2D image, got an array of shape {tuple(img.shape)}")
    if img.dtype.kind not in "biuf":
        raise FileFormatError(path, f"expected real pixel values, got dtype {img.dtype}")
    img = img.astype(np.float64)
    bad = ~np.isfinite(img)
    if bad.any():  # float TIFFs can hold NaN/inf: a dead pixel must not become a NaN line integral
        raise FileFormatError(path, f"{int(bad.sum())} pixel(s) are NaN or infinite")
    return img


def _bin(image: np.ndarray, b: int) -> np.ndarray:
    """Mean over ``b x b`` blocks, dropping the trailing rows/columns that do not fill a block."""
    if b == 1:
        return image
    r, c = image.shape[0] // b, image.shape[1] // b
    return image[: r * b, : c * b].reshape(r, b, c, b).mean(axis=(1, 3))


def read_walnut_geometry(path: str | os.PathLike) -> np.ndarray:
    """The ``(N, 12)`` float64 ``cone_vec`` rows of a ``.geom`` file (whitespace-separated text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Walnut scan: missing geometry file {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (and returns []) on an empty file
            vec = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except Exception as exc:
        raise FileFormatError(path, f"not a geometry file of 12 numbers per row ({type(exc).__name__}: {exc})") from None
    if vec.shape[1] != 12:
        raise FileFormatError(path, f"expected 12 numbers per row (ASTRA cone_vec), got {vec.shape[1]}")
    if not np.isfinite(vec).all():
        raise FileFormatError(path, "the geometry contains NaN or inf")
    return vec


def _projection_files(folder: Path) -> list[Path]:
    found = {}
    for p in folder.iterdir():
        m = _PROJ_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise FileNotFoundError(f"Walnut scan: no projections scan_NNNNNN.tif in {folder}")
    n = len(found)
    missing = sorted(set(range(n)) - set(found))
    if missing:
        raise ValueError(f"Walnut scan in {folder}: the projections are not numbered scan_000000 .. "
                         f"scan_{n - 1:06d} (missing e.g. scan_{missing[0]:06d}.tif)")
    return [found[i] for i in range(n)]


# --------------------------------------------------------------------------- reader
def read_walnut(
    folder: str | os.PathLike,
    geometry_file: str = "scan_geom_corrected.geom",
    vol_shape: Sequence[int] = (501, 501, 501),
    voxel_size: float | Sequence[float] = 0.1,
    view_step: int = 1,
    binning: int = 1,
    vol_offset: Sequence[float] = (0.0, 0.0, 0.0),
    eps: float = DEFAULT_EPS,
    progress: bool = False,
) -> tuple[torch.Tensor, ConeBeamGeometry]:
    """Read one Walnut orbit folder into line integrals and their cone-beam geometry (each
    convention and where it comes from: the module docstring).

    Parameters
    ----------
    folder : str or path-like
        A folder like ``Walnut1/Projections/tubeV2`` (dark, flats, projections, ``.geom`` files).
    geometry_file : str
        Geometry file name inside ``folder``: ``"scan_geom_corrected.geom"`` (default, the
        calibrated geometry the authors reconstruct with) or ``"scan_geom_original.geom"``.
    vol_shape : (int, int, int)
        Reconstruction volume ``(D, H, W)`` = ``(z, y, x)`` voxels (default: the authors' 501^3).
    voxel_size : float or (float, float, float)
        ``(sz, sy, sx)`` in mm (default 0.1 mm).
    view_step : int
        Keep geometry rows ``0, view_step, 2 view_step, ...`` (angular subsampling).
    binning : int
        Detector binning factor ``b`` (1: none); rows and columns become ``rows // b``, ``cols // b``.
    vol_offset : (float, float, float)
        World position ``(oz, oy, ox)`` of the volume centre, mm.
    eps : float
        Lower clamp of ``flat - dark`` (in counts) and of the transmission before the log, in
        ``(0, 1)``; pixels with ``flat - dark < eps`` are dead and get line integral 0.
    progress : bool
        A progress bar over the projections (stderr): a full scan is 1200 TIFF files.

    Returns
    -------
    measurements : torch.Tensor, shape [1, 1, n_views, rows, cols], float32
        Line integrals ``-ln((I - dark) / (flat - dark))`` (dimensionless), views in geometry order.
    geometry : ConeBeamGeometry
        The matching per-view ``cone_vec`` geometry (``det_shape = (rows, cols)``).

    Raises
    ------
    FileNotFoundError
        The folder, the dark or a flat field, the geometry file, or every projection is missing.
    ValueError
        Projections not numbered contiguously, geometry rows that do not match the number of
        projections, images of different shapes, unreadable files, invalid arguments.
    TypeError
        ``view_step`` or ``binning`` not an integer.
    """
    folder = Path(folder)
    # Argument errors first, before any file is read (and never blamed on the scan's files).
    vol_shape = int_triple("vol_shape", vol_shape)
    voxel_size = real_tuple("voxel_size", voxel_size, 3, positive=True, allow_scalar=True)
    vol_offset = real_tuple("vol_offset", vol_offset, 3, allow_scalar=True)
    view_step = integer("view_step", view_step, 1)
    binning = integer("binning", binning, 1)
    progress = boolean("progress", progress)
    eps = _fraction("eps", eps)
    if not folder.is_dir():
        raise FileNotFoundError(f"Walnut scan folder {folder} does not exist (or is not a folder)")

    vectors = read_walnut_geometry(folder / geometry_file)
    files = _projection_files(folder)
    if vectors.shape[0] != len(files):
        raise ValueError(f"Walnut scan in {folder}: {geometry_file} has {vectors.shape[0]} rows but there are "
                         f"{len(files)} projections scan_000000 .. scan_{len(files) - 1:06d} (expected one row each)")
    views = walnut_views(len(files), view_step)
    dark, denom, dead, shape = _flat_field(folder, binning, eps)

    # The geometry first: a bad vol_shape/voxel_size fails before the projections are read.
    rows, cols = dark.shape
    vec = _binned_vectors(vectors[[k for k, _ in views]], shape, binning)
    try:
        geometry = ConeBeamGeometry.from_vectors(vec, (rows, cols), vol_shape, voxel_size, vol_offset)
    except ValueError as exc:  # the arguments are checked: the scan's vectors do not fit them
        raise ValueError(f"Walnut scan in {folder} ({geometry_file}): {exc}") from None

    y = np.empty((len(views), rows, cols), dtype=np.float32)
    n_clamped = 0
    for i, (_, file_idx) in enumerate(tqdm(views, desc="reading projections", unit="view", disable=not progress)):
        img = raw_to_detector(_read_image(files[file_idx]))
        if img.shape != shape:
            raise ValueError(f"Walnut scan in {folder}: {files[file_idx].name} has shape {img.shape[::-1]} but "
                             f"{_DARK} has {shape[::-1]} (raw TIFF shapes)")
        y[i], clamped = _line_integrals(_bin(img, binning), dark, denom, dead, eps)
        n_clamped += clamped
    n_dead = int(dead.sum())
    if n_dead or n_clamped:
        warnings.warn(
            f"Walnut scan in {folder}: {n_dead} dead detector pixel(s) with flat - dark < {eps:g} were set to "
            f"line integral 0, and {n_clamped} transmission value(s) below {eps:g} were clamped to {eps:g} "
            f"(line integral {-math.log(eps):.3g})",
            RuntimeWarning, stacklevel=2,
        )
    return torch.from_numpy(y)[None, None], geometry


def _fraction(name: str, value) -> float:
    """``value`` as a float in the open interval (0, 1), or a TypeError/ValueError naming ``name``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return value


def _flat_field(folder: Path, binning: int, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """``(dark, flat - dark, dead, raw shape)``, binned: the dark field, the clamped flat-minus-dark
    denominator (the authors average the two flat fields) and the dead pixels (``flat - dark < eps``)."""
    dark = raw_to_detector(_read_image(folder / _DARK))
    flats = [raw_to_detector(_read_image(folder / name)) for name in _FLATS]
    shape = dark.shape
    for name, img in zip(_FLATS, flats):
        if img.shape != shape:
            raise ValueError(f"Walnut scan in {folder}: {name} has shape {img.shape[::-1]} but {_DARK} has "
                             f"{shape[::-1]} (raw TIFF shapes)")
    if shape[0] < binning or shape[1] < binning:
        raise ValueError(f"binning {binning} is larger than the detector {shape}")
    dark = _bin(dark, binning)
    denom = _bin(0.5 * (flats[0] + flats[1]), binning) - dark
    dead = denom < eps
    if bool(dead.all()):
        raise ValueError(f"Walnut scan in {folder}: the flat field is not brighter than the dark field in any pixel")
    return dark, np.maximum(denom, eps), dead, shape


def _binned_vectors(vec: np.ndarray, raw_shape: tuple, binning: int) -> np.ndarray:
    """The ASTRA cone_vec rows of a detector binned by ``binning`` (a copy)."""
    vec = vec.copy()
    if binning > 1:
        full_rows, full_cols = raw_shape
        rows, cols = full_rows // binning, full_cols // binning
        u, v = vec[:, 6:9].copy(), vec[:, 9:12].copy()
        # Kept pixels 0 .. cols*b-1 are centred (cols*b - full_cols)/2 pixels from the old centre.
        vec[:, 3:6] += 0.5 * (cols * binning - full_cols) * u + 0.5 * (rows * binning - full_rows) * v
        vec[:, 6:9] = binning * u
        vec[:, 9:12] = binning * v
    return vec


def _line_integrals(img: np.ndarray, dark: np.ndarray, denom: np.ndarray, dead: np.ndarray,
                    eps: float) -> tuple[np.ndarray, int]:
    """``(-ln t, clamped)``: one binned projection's line integrals, ``t = (img - dark) / denom``
    (1 on dead pixels, clamped below at ``eps``), and how many values were clamped."""
    t = (img - dark) / denom
    t[dead] = 1.0  # a dead pixel measured nothing: no attenuation
    low = t < eps
    t[low] = eps
    return -np.log(t), int(low.sum())
