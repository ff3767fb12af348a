"""The demo's shipped weights: safe to load, small, and made by the command they record."""
from __future__ import annotations

from pathlib import Path

import torch

from unrolled3d.cli import build_parser
from unrolled3d.cli.commands import load_train_config
from unrolled3d.models import build_model
from unrolled3d.cli.demo import DEFAULT_WEIGHTS
from unrolled3d.io import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_weights_load_with_weights_only_and_are_small():
    raw = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert raw["format"] == "unrolled3d.model/1"
    assert DEFAULT_WEIGHTS.stat().st_size < 5 * 2**20
    state, config = load_model(DEFAULT_WEIGHTS)
    rec = build_model(config, (config["geometry"]["size"],) * 3)
    rec.load_state_dict(state)  # strict: every tensor of the architecture is there
    assert all(torch.isfinite(p).all() for p in rec.parameters())


def test_recorded_training_command_exists_and_matches_the_shipped_config():
    _, config = load_model(DEFAULT_WEIGHTS)
    argv = config["command"].split()
    assert argv[0] == "unrolled3d"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train" and not args.resume
    toml_path = ROOT / args.config
    assert toml_path.exists(), toml_path
    expected = load_train_config(toml_path)
    assert {k: v for k, v in config.items() if k != "command"} == expected
