"""
Training from volume files
==========================

``unrolled3d train config.toml`` trains a partitioned unrolled network with the paper's
``L_PART`` loss (random patches with ground-truth context) on phantoms made on the fly
(``[phantoms]``) or on random blocks of your own volume files (``[data]``: ``.npy``, NIfTI,
HDF5, TIFF, ``.pt``, read lazily). Runs are durable: checkpoints, exact resume, a lock on the
run folder. Here: four small volumes written as ``.npy`` files, one held out, and 20 steps of
fine-tuning the shipped demo model (``[model] init``) on them (a real run takes thousands; see
``examples/train_from_files.toml`` for every key).
"""
import json
import tempfile
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import torch

from unrolled3d.cli import main as unrolled3d
from unrolled3d.cli.demo import DEFAULT_WEIGHTS
from unrolled3d.data.textured import textured_phantom
from unrolled3d.figures import plot_slices
from unrolled3d.io import load_model, write_volume

torch.set_flush_denormal(True)
work = Path(tempfile.mkdtemp())

# %%
# The training volumes: textured phantoms (soft tissue, organs, fine texture, trabecular-like
# sheets) of 24^3 voxels, attenuation in 1/mm, written as .npy files with their voxel size.
for i in range(4):
    vol = textured_phantom((24, 24, 24), torch.Generator().manual_seed(i))
    write_volume(work / "scans" / f"vol{i}.npy", vol, (1.0, 1.0, 1.0))

config = f"""
[geometry]
size = 16          # training blocks of 16^3, scanned with 20 views
views = 20

[data]
paths = ["scans/*.npy"]
normalization = "attenuation"
val_files = 1      # one whole file held out, scored every val_every steps
val_crops = 1
flip = true

[model]
n_iter = 5         # the shipped demo model's architecture: fine-tuning starts from its weights
base = 8
depth = 2
shared = false
init = "{DEFAULT_WEIGHTS}"

[partition]
patch = 8

[train]
steps = 20
lr = 3e-3
noise_std = 0.002
checkpoint_every = 10
val_every = 10
"""
(work / "run.toml").write_text(config)

# %%
# One JSON object on stdout (progress and validation lines go to stderr).
out = StringIO()
with redirect_stdout(out):
    assert unrolled3d(["train", str(work / "run.toml"), "--out-dir", str(work / "run"), "--json"]) == 0
result = json.loads(out.getvalue())
print({k: result[k] for k in ("steps", "model") if k in result})
history = result.get("validation", result.get("val", []))
print("validation:", history)

# %%
# The model file records its configuration, the normalisation and the files it trained and
# was validated on; ``reconstruct --method unrolled --weights`` reads it.
state, model_config = load_model(work / "run" / "model.pt")
print("trained on", model_config["data_files"]["train"], "held out", model_config["data_files"]["held_out"])
assert len(model_config["data_files"]["held_out"]) == 1

held_out = model_config["data_files"]["held_out"][0]  # scored on the volume it never trained on
unrolled3d(["simulate", "--volume", held_out, "--views", "20", "--noise", "0.005",
            "--output", str(work / "m.pt"), "--quiet"])
fdk, net = StringIO(), StringIO()
with redirect_stdout(fdk):
    unrolled3d(["reconstruct", str(work / "m.pt"), "--output", str(work / "fdk.npy"), "--json"])
with redirect_stdout(net):
    unrolled3d(["reconstruct", str(work / "m.pt"), "--method", "unrolled", "--weights",
                str(work / "run" / "model.pt"), "--output", str(work / "x.npy"), "--json"])
p_fdk, p_net = json.loads(fdk.getvalue())["psnr"], json.loads(net.getvalue())["psnr"]
print(f"the held-out 24^3 volume, 20 views: FDK {p_fdk:.2f} dB, the fine-tuned network {p_net:.2f} dB")
assert p_net > p_fdk

# %%
import numpy as np  # noqa: E402

plot_slices({"truth": torch.from_numpy(np.load(held_out)),
             "FDK": torch.from_numpy(np.load(work / "fdk.npy")),
             "fine-tuned 20 steps": torch.from_numpy(np.load(work / "x.npy"))},
            title="training from files: a tiny run", units="attenuation (1/mm)")
