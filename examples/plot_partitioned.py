"""
Partitioned reconstruction with a shipped model: exact and ``normal=H``
=======================================================================

The demo model that ships with the package (``unrolled3d/weights/demo_ct.pt``: an unrolled
network of 5 proximal-gradient steps with a small 3D UNet, trained on 48^3 random-ellipsoid
phantoms, 30 views) reconstructs a scan patch by patch, in the two modes of the paper:

* **exact**: each patch's data step uses the exact patch operator ``A S^T`` (the same projector
  on the patch's own sub-volume geometry);
* **normal=H**: each patch's data step uses a learned diagonal-circulant approximation ``H`` of
  ``A^T A`` (an FFT pair on the patch), fitted once per geometry.

The same scan is also reconstructed by the command line (``unrolled3d reconstruct``); the Python
result must agree with it within 1 dB.
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
from unrolled3d.io import load_measurements, load_model
from unrolled3d.metrics import psnr
from unrolled3d.models import build_model
from unrolled3d.normal import DiagCirculantNormal, fit_normal, relative_error
from unrolled3d.physics import ConeBeamCT

torch.manual_seed(0)
torch.set_flush_denormal(True)  # denormal floats in the blending windows slow CPU convolutions
work = Path(tempfile.mkdtemp())
weights = files("unrolled3d") / "weights" / "demo_ct.pt"

# %%
# A scan made by the command line: a 32^3 random-ellipsoid phantom (not one of the training
# phantoms), 30 views, noise. The file holds the raw line integrals, the geometry and the truth.
unrolled3d(["simulate", "--phantom", "ellipsoids", "--size", "32", "--views", "30", "--noise", "0.03",
            "--seed", "5", "--output", str(work / "m.pt"), "--quiet"])
y_raw, g, x_true, _ = load_measurements(work / "m.pt")

# %%
# The model, built from the configuration its file records (network, patch 24^3, sweeps). It
# was trained on **normalised** measurements (``ConeBeamCT(g, normalize=True)``, ``||A^T A|| = 1``):
# raw line integrals must be brought to those units first, or the output is meaningless.
state, config = load_model(weights)
rec = build_model(config, g.vol_shape)
rec.load_state_dict(state)
rec.eval()
physics = ConeBeamCT(g, normalize=True)
y = physics.normalize_measurements(y_raw)
print(f"patches of {rec.patch_shape}, {len(rec.patches())} per sweep, {rec.n_sweeps} sweep(s)")

with torch.no_grad():
    x_exact = rec(y, physics)                              # exact patch operators A S^T
x_fdk = physics.A_dagger(y)
print(f"FDK {psnr(x_fdk, x_true):.2f} dB, partitioned (exact) {psnr(x_exact, x_true):.2f} dB")

# %%
# The H mode: fit ``H = m F^-1 lam F m`` to this geometry's ``A^T A`` (a hundred random
# probes; ``unrolled3d fit-normal`` does the same and saves it), then hand it to the reconstructor.
H = DiagCirculantNormal.for_physics(physics, g.vol_shape)
fit_normal(H, physics, n_iter=100, progress=False)
print(f"relative error of H: {relative_error(H, physics):.3f}")
with torch.no_grad():
    x_h = rec(y, physics, normal=H)                        # H restricted to each patch
print(f"partitioned (normal=H) {psnr(x_h, x_true):.2f} dB")
assert psnr(x_exact, x_true) > psnr(x_fdk, x_true) + 4.0
assert psnr(x_h, x_true) > psnr(x_fdk, x_true) + 3.0

# %%
# The command line on the same scan (same model, same normalisation): within 1 dB.
out = StringIO()
with redirect_stdout(out):
    unrolled3d(["reconstruct", str(work / "m.pt"), "--method", "unrolled", "--weights", str(weights),
                "--output", str(work / "x.npy"), "--json"])
cli_psnr = json.loads(out.getvalue())["psnr"]
print(f"command line: {cli_psnr:.2f} dB, Python: {psnr(x_exact, x_true):.2f} dB")
assert abs(cli_psnr - psnr(x_exact, x_true)) < 1.0

# %%
plot_slices({"truth": x_true[0, 0], "FDK": x_fdk[0, 0], "exact": x_exact[0, 0], "normal=H": x_h[0, 0]},
            title="held-out ellipsoids 32^3, 30 views", window=(0.0, float(x_true.max())),
            units="attenuation (1/mm)")
