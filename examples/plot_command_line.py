"""
The command line
================

Every command has ``--help``, ``--quiet``, ``--json`` (one JSON object on stdout) and ``--debug``;
errors you can fix exit with code 2 and one line. In a shell::

    unrolled3d simulate --phantom textured --size 48 --views 30 --output m.pt
    unrolled3d reconstruct m.pt --fdk-window hann --output fdk.nii.gz --preview fdk.png
    unrolled3d reconstruct m.pt --method unrolled --weights unrolled3d/weights/demo_ct.pt \\
        --output x.nii.gz --preview x.png
    unrolled3d fit-normal m.pt --out h.pt
    unrolled3d info

Here the same commands run from Python (``unrolled3d.cli.main`` takes the argument list), on a
32^3 volume.
"""
import json
import tempfile
from contextlib import redirect_stdout
from importlib.resources import files
from io import StringIO
from pathlib import Path

import matplotlib.pyplot as plt

from unrolled3d.cli import main as unrolled3d

work = Path(tempfile.mkdtemp())
weights = files("unrolled3d") / "weights" / "demo_ct.pt"


def run(*argv: str) -> dict:
    """``unrolled3d ARGV --json``, its JSON answer."""
    out = StringIO()
    with redirect_stdout(out):
        assert unrolled3d([*argv, "--json"]) == 0
    return json.loads(out.getvalue())


# %%
# ``simulate``: a phantom (``shepp-logan``, ``ellipsoids`` or ``textured``) or any volume file
# (``--volume``), a circular cone-beam scan, noise relative to the largest line integral.
print(run("simulate", "--phantom", "ellipsoids", "--size", "32", "--views", "30", "--noise", "0.01",
          "--seed", "4", "--output", str(work / "m.pt")))

# %%
# ``reconstruct``: FDK (with a choice of ramp window) or the partitioned network; the output's
# format follows its ending (``.npy``, ``.nii.gz``, ``.h5``, ``.tif``, ``.pt``, ``.zarr``);
# ``--preview`` draws three central slices with the window, a colour bar and the slice indices.
fdk = run("reconstruct", str(work / "m.pt"), "--fdk-window", "hann", "--output", str(work / "fdk.nii.gz"),
          "--preview", str(work / "fdk.png"))
net = run("reconstruct", str(work / "m.pt"), "--method", "unrolled", "--weights", str(weights),
          "--output", str(work / "x.nii.gz"), "--preview", str(work / "x.png"))
print(f"FDK (Hann) {fdk['psnr']:.2f} dB in {fdk['seconds']:.1f} s; network {net['psnr']:.2f} dB in "
      f"{net['seconds']:.1f} s")
assert net["psnr"] > fdk["psnr"] + 4.0

# %%
# ``info`` says which torch the projector was built for and which is running, and what each op
# runs on CPU and CUDA tensors.
info = run("info")
print({k: info[k] for k in ("version", "torch", "extension", "cuda_status")})

# %%
# The preview the network's reconstruction wrote.
fig, ax = plt.subplots(figsize=(10.5, 3.6))
ax.imshow(plt.imread(work / "x.png"))
ax.set_axis_off()
