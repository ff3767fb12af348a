"""
Large volumes: streamed through Zarr
====================================

A volume (or its measurements) larger than memory lives in a chunked store (Zarr v3, or a ``.npy``
memory map) and is processed slab by slab: projection is linear, so a full-volume residual is a
sum over slabs, and each patch of a partitioned reconstruction reads only its own window of the
detector. The command line does it when an input or output ends in ``.zarr``; the Python entry
point is :func:`unrolled3d.partition.streamed.reconstruct_streamed`.

The volume here is tiny (32^3) so that the example runs in seconds; the code is the same at 1024^3.
"""
import json
import tempfile
from contextlib import redirect_stdout
from importlib.resources import files
from io import StringIO
from pathlib import Path

import torch

from unrolled3d.cli import main as unrolled3d
from unrolled3d.figures import plot_slices
from unrolled3d.io import load_model
from unrolled3d.io.scan_stores import open_scan
from unrolled3d.io.stores import AffineStore, create_store, open_store
from unrolled3d.metrics import psnr
from unrolled3d.models import build_model
from unrolled3d.partition.streamed import reconstruct_streamed
from unrolled3d.physics import ConeBeamCT

torch.set_flush_denormal(True)
work = Path(tempfile.mkdtemp())
weights = files("unrolled3d") / "weights" / "demo_ct.pt"


def run(*argv: str) -> dict:
    """``unrolled3d ARGV --json``, its JSON answer."""
    out = StringIO()
    with redirect_stdout(out):
        assert unrolled3d([*argv, "--json"]) == 0
    return json.loads(out.getvalue())


# %%
# ``simulate --output m.zarr`` voxelises the phantom and projects it slab by slab into a Zarr store;
# ``reconstruct m.zarr --output x.zarr --memory-budget 1G`` runs FDK (or the network) with slab
# buffers sized to the budget. ``--preview`` draws the result's central slices, reading three planes.
print(run("simulate", "--phantom", "ellipsoids", "--size", "32", "--views", "30", "--noise", "0.03",
          "--seed", "2", "--output", str(work / "m.zarr")))
fdk = run("reconstruct", str(work / "m.zarr"), "--output", str(work / "fdk.zarr"), "--memory-budget", "1G")
net = run("reconstruct", str(work / "m.zarr"), "--method", "unrolled", "--weights", str(weights),
          "--output", str(work / "x.zarr"), "--memory-budget", "1G", "--preview", str(work / "x.png"))
print(f"streamed FDK {fdk['psnr']:.2f} dB (slabs of {fdk['slab']} slices); "
      f"streamed network {net['psnr']:.2f} dB (patches of {net['patch']})")
assert net["psnr"] > fdk["psnr"] + 4.0

# %%
# The same from Python: open the stores, normalise the measurements lazily (an affine view of
# the store, nothing copied), and stream the partitioned reconstruction into a new store.
y_store, g, truth_store, _ = open_scan(work / "m.zarr")
x_true = torch.from_numpy(truth_store.read((0, 0, 0), g.vol_shape))   # (D, H, W): small here
physics = ConeBeamCT(g, normalize=True)
state, config = load_model(weights)
rec = build_model(config, g.vol_shape)
rec.load_state_dict(state)
rec.eval()
y_n = AffineStore(y_store, 1.0 / float(physics.operator_norm))   # y / ||A||, read slab by slab
out = create_store(work / "py.zarr", g.vol_shape, temporary=False)
with torch.no_grad():
    reconstruct_streamed(rec, y_n, physics, out, memory_budget=2**30)
x_py = torch.from_numpy(open_store(work / "py.zarr").read((0, 0, 0), g.vol_shape))
print(f"Python, streamed: {psnr(x_py, x_true):.2f} dB")
assert abs(psnr(x_py, x_true) - net["psnr"]) < 1.0

# %%
plot_slices({"truth": x_true, "streamed network": open_store(work / "x.zarr")},
            title="streamed through Zarr, 32^3, 30 views", window=(0.0, float(x_true.max())),
            units="attenuation (1/mm)")
