r"""The training scale of the shipped model files that were written before model files recorded it.

``unrolled3d train`` now records in each model file the scale of its training scans
(:class:`unrolled3d.models.scale.TrainingScale`: percentiles of the training volumes, of their
FDK and of their normalised measurements), which :func:`unrolled3d.api.check_measurement_scale`
compares new scans with. The shipped ``demo_ct.pt`` (and ``heads_ct.pt`` before its stage 4) predate that; this script
measures their training scans the same way (:func:`unrolled3d.models.scale.measure_training_scale`:
16 training items, the training noise) and writes ``unrolled3d/weights/training_scales.json``,
keyed by the model file's SHA-256 (a replaced file is not matched).

``demo_ct`` trained on phantoms made on the fly: they are made again from its recipe. ``heads_ct``
trained on volume files: make them first, as its recipe says, and name their folder::

    python bench/experiments/real_volumes.py data/real --only mni152 inia19 --training-set 36,44,52,64,80
    python bench/experiments/training_scales.py --data-root data/real

(the ``[data] paths`` of the recipe, ``train/*.npy``, are relative to that folder.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

from unrolled3d.cli.train_data import build_file_data
from unrolled3d.data import PhantomDataset
from unrolled3d.io import atomic_path, load_model
from unrolled3d.models.scale import measure_training_scale
from unrolled3d.physics import ConeBeamCT, standard_cone_beam
from unrolled3d.pretrained import PRETRAINED, TRAINING_SCALES_FILE, WEIGHTS_DIR
from unrolled3d.training import RunConfig


def training_set(config: dict, data_root: Path | None):
    """The model's training items as its training drew them (phantoms, or blocks of its files)."""
    run = RunConfig.from_dict(config, records=True)
    size = run.geometry.size
    if run.data is None:
        return PhantomDataset(100_000, (size,) * 3, kind=run.phantoms.kind, seed=run.phantoms.seed), "phantoms"
    if data_root is None:
        raise SystemExit("a model trained on volume files needs --data-root (see the module docstring)")
    dataset = build_file_data(run.data, size, data_root)[0]
    return dataset, f"{len(dataset.paths)} files under {data_root}: " + ", ".join(Path(p).name for p in dataset.paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, help="the folder of heads_ct's training files (train/*.npy)")
    ap.add_argument("--only", nargs="*", choices=sorted(PRETRAINED), help="models to measure (default: all)")
    ap.add_argument("--out", type=Path, default=TRAINING_SCALES_FILE)
    args = ap.parse_args()
    table = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name, file in PRETRAINED.items():
        if args.only and name not in args.only:
            continue
        path = WEIGHTS_DIR / file
        _, config = load_model(path)
        table = {k: v for k, v in table.items() if v.get("model") != name}  # one entry per shipped name, or none
        if "training_scale" in config:  # the file's own record; an earlier file's entry would be stale
            print(f"{name}: the file records its training scale")
            continue
        dataset, what = training_set(config, args.data_root)
        physics = ConeBeamCT(standard_cone_beam(config["geometry"]["size"], config["geometry"]["views"]),
                             normalize=True)
        scale = measure_training_scale(dataset, physics, float(config["train"]["noise_std"]))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        table[digest] = {"model": name, "training_scale": scale.to_dict(), "training_items": what,
                         "measured_with": shlex.join(["python", *sys.argv])}
        print(f"{name}: FDK p{scale.percentile:g} {scale.fdk:.4f} (range {scale.fdk_range[0]:.4f}-"
              f"{scale.fdk_range[1]:.4f}), volumes {scale.volume:.4f}, measurements {scale.measurements:.4f}")
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
