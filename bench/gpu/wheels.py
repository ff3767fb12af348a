"""What the GPU run carries in ``.whl/``: the wheels the lent machine lacks, and the cuFFT shim.

The machine (Python 3.12, torch 2.11 + CUDA 13, no network; see ``shared/DESIGN.md`` section 3)
lacks deepinv (which the package imports), natsort (deepinv's), zarr with the dependencies the
image lacks (the streamed reconstruction's stores: numcodecs, donfig, PyYAML, google-crc32c), and
ASTRA (the peer of the projector and FDK benchmarks) with the CUDA 12 runtime its wheel links.
ASTRA's library also links cuFFT 11, which
the machine does not have: ``cufft_forward.c`` is a ``libcufft.so.11`` that forwards the five
functions ASTRA uses to the machine's cuFFT 12.

Usage (``bench/gpu/prepare.sh`` runs these)::

    python3 bench/gpu/wheels.py --list            # the pinned requirements, one a line
    python3 bench/gpu/wheels.py --verify .whl     # one wheel each, the shim exports what ASTRA binds
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

#: the exact wheels, for CPython 3.12 on manylinux x86-64 (pip download --no-deps: each named)
WHEELS = (
    "deepinv==0.5.0",
    "natsort==8.4.0",
    "astra-toolbox==2.5.0",
    "nvidia-cuda-runtime-cu12==12.9.79",
    "zarr==3.1.6",
    "numcodecs==0.16.6",
    "donfig==0.8.1.post1",
    "pyyaml==6.0.3",
    "google-crc32c==1.9.0",
)
#: where prepare.sh builds the shim, inside the wheel folder (it travels with it)
SHIM = Path("lib") / "libcufft.so.11"


def _wheel_name(requirement: str) -> tuple[str, str]:
    name, version = requirement.split("==")
    return re.sub(r"[-.]+", "_", name).lower(), version


def _versioned_symbols(library: Path, defined: bool) -> set[tuple[str, str]]:
    """``{(symbol, version)}`` that ``library`` defines (or needs), from ``objdump -T``."""
    out = subprocess.run(["objdump", "-T", str(library)], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[-1].startswith("cufft"):
            continue
        undefined = "*UND*" in parts
        if undefined != defined:
            version = parts[-2].strip("()")
            found.add((parts[-1], version))
    return found


def missing(folder: Path) -> list[str]:
    """What ``folder`` (the ``.whl`` folder) lacks or holds twice; empty when ready to travel."""
    problems = []
    if not folder.is_dir():
        return [f"{folder} does not exist: run bench/gpu/prepare.sh where the package registries are reachable"]
    wheels = sorted(folder.glob("*.whl"))
    for requirement in WHEELS:
        name, version = _wheel_name(requirement)
        same = [w for w in wheels if w.name.lower().startswith(name + "-")]
        if len(same) != 1 or f"-{version}-" not in same[0].name:
            problems.append(f"{requirement}: expected one wheel of that version in {folder}, found "
                            f"{[w.name for w in same]}")
    extra = [w.name for w in wheels if not any(w.name.lower().startswith(_wheel_name(r)[0] + "-") for r in WHEELS)]
    if extra:
        problems.append(f"wheels not in the plan (pip would install them too): {extra}")
    shim = folder / SHIM
    if not shim.is_file():
        problems.append(f"{shim} is missing: prepare.sh builds it from bench/gpu/cufft_forward.c")
        return problems
    needed = _astra_needs(wheels)
    exported = _versioned_symbols(shim, defined=True)
    if needed is not None and not needed <= exported:
        problems.append(f"{shim} does not export {sorted(needed - exported)}, which ASTRA's library binds")
    return problems


def _astra_needs(wheels: Sequence[Path]) -> Optional[set[tuple[str, str]]]:
    """The cuFFT symbols (with versions) ASTRA's ``libastra.so.0`` binds, read from its wheel."""
    astra = [w for w in wheels if w.name.startswith("astra_toolbox-")]
    if len(astra) != 1:
        return None
    with zipfile.ZipFile(astra[0]) as z, tempfile.TemporaryDirectory() as tmp:
        member = next(n for n in z.namelist() if n.endswith("libastra.so.0"))
        path = Path(z.extract(member, tmp))
        return _versioned_symbols(path, defined=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--list", action="store_true", help="print the pinned requirements")
    group.add_argument("--verify", type=Path, metavar="FOLDER", help="check a prepared wheel folder")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(WHEELS))
        return 0
    problems = missing(args.verify)
    for p in problems:
        print("PROBLEM:", p)
    if not problems:
        print(f"{args.verify}: {len(WHEELS)} wheels and {SHIM}, which exports every cuFFT symbol ASTRA binds")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
