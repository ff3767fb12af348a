"""The fine-tuning chain of a shipped model file: each stage's recipe beside the file, checked against it."""
from __future__ import annotations

import hashlib
from pathlib import Path

from unrolled3d.cli.commands import load_train_config
from unrolled3d.io import load_model


def stage_recipes(weights: Path, stage_tomls: list[Path]) -> list[dict]:
    """The recipes of a model fine-tuned in stages, earliest first, the shipped file's TOML last.

    Checks what every such chain holds: the file records the SHA-256 of the file it started from,
    which the last earlier recipe gives and no other; stage 1 trains from random weights and every
    later stage from a file (``[model] init``) with the same network; the data settings are the same
    but for new draws (a new ``[data] seed`` at each stage) and the files (``[data] paths``: a stage
    may add training volumes; the caller checks which). Returns the recipes for the checks of one chain.
    """
    _, config = load_model(weights)
    start = config["init"]["sha256"]
    assert start in stage_tomls[-1].read_text()
    assert all(start not in t.read_text() for t in stage_tomls[:-1])
    assert start != hashlib.sha256(weights.read_bytes()).hexdigest()
    stages = [load_train_config(t) for t in stage_tomls] + [load_train_config(weights.with_suffix(".toml"))]
    first = stages[0]
    assert "init" not in first["model"]
    for later in stages[1:]:
        assert "init" in later["model"]
        assert {k: v for k, v in later["model"].items() if k != "init"} == first["model"]
        assert {k: v for k, v in later["data"].items() if k not in ("seed", "paths")} == {
            k: v for k, v in first["data"].items() if k not in ("seed", "paths")}
    assert len({s["data"]["seed"] for s in stages}) == len(stages)  # new draws at each stage
    return stages
