"""One configuration: a dataclass per TOML section, the same objects for the TOML file, the Python
API, build_model and the model file; defaults and bounds stated once; the cost of a network known
before it is built."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from unrolled3d.models import ModelConfig, PartitionConfig, UNet3D, UnrolledPGD, build_model
from unrolled3d.models.cost import check_model_memory, model_parameters, unet_parameters
from unrolled3d.training import DataConfig, GeometryConfig, PhantomsConfig, RunConfig, TrainConfig
from unrolled3d.training.config import SEED_MAX

SECTIONS = {"geometry": GeometryConfig, "phantoms": PhantomsConfig, "data": DataConfig, "model": ModelConfig,
            "partition": PartitionConfig, "train": TrainConfig}


def test_one_set_of_defaults():
    """The defaults of a TOML file and of the Python API are the same objects' (they were four
    sources that disagreed: TrainConfig's steps 1000 / lr 1e-4 against the command line's 300 / 1e-3)."""
    run = RunConfig.from_dict({})
    assert run == RunConfig()
    assert run.train == TrainConfig()
    assert run.to_dict() == {
        "geometry": {"size": 48, "views": 30}, "phantoms": {"kind": "ellipsoids", "seed": 0},
        "model": {"n_iter": 5, "base": 8, "depth": 2, "shared": True}, "partition": {"patch": 24},
        "train": {"steps": 300, "lr": 1e-3, "batch_size": 1, "lr_schedule": "cosine", "min_lr": 0.0,
                  "weight_decay": 0.0, "seed": 0, "noise_std": 0.01, "checkpoint_every": 50,
                  "keep_checkpoints": 2, "val_every": 0}}
    assert DataConfig(paths="a.npy").to_dict() == {
        "paths": ["a.npy"], "normalization": "attenuation", "seed": 0, "val_files": 0, "val_crops": 2, "flip": True,
        "rot90": True, "intensity": False, "pad": False}


def test_the_defaults_recorded_model_files_rely_on_are_kept():
    """Model files written before list only the [train] keys the command line had defaults for;
    the others took TrainConfig's defaults of the time, which must stay what they were (a file read
    back must describe the run it made)."""
    d = TrainConfig()
    assert (d.batch_size, d.lr_schedule, d.min_lr, d.weight_decay, d.grad_clip, d.keep_checkpoints,
            d.val_every) == (1, "cosine", 0.0, 0.0, None, 2, 0)
    assert ModelConfig().shared is True  # files written before [model] shared existed: shared denoisers


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_the_keys_of_a_table_are_the_fields(section):
    cls = SECTIONS[section]
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "progress"]
    assert list(cls.keys()) == fields
    values = {"paths": "a.npy"} if section == "data" else {}
    with pytest.raises(ValueError, match=rf"unknown keys in \[{section}\]: colour \(known: {', '.join(fields)}\)"):
        cls.from_dict({**values, "colour": 1})


@pytest.mark.parametrize("section, key, value, kind, words", [
    ("train", "steps", 0, ValueError, "must be a positive integer"),
    ("train", "steps", 2.5, TypeError, "must be an integer"),
    ("train", "lr", -1.0, ValueError, "must be positive"),
    ("train", "lr_schedule", "step", ValueError, "must be one of"),
    ("train", "seed", 2**70, ValueError, f"must be an integer in [0, {SEED_MAX}]"),
    ("train", "seed", -1, ValueError, "non-negative"),
    ("geometry", "views", 10**9, ValueError, "must be an integer in [1, 100000]"),
    ("model", "depth", 64, ValueError, "must be an integer in [0, 10]"),
    ("model", "base", 100_000_000, ValueError, "must be an integer in [1, 1024]"),
    ("model", "n_iter", 10**9, ValueError, "must be an integer in [1, 1000]"),
    ("model", "shared", "no", TypeError, "must be True or False"),
    ("phantoms", "seed", 2**70, ValueError, "must be an integer in"),
    ("data", "seed", 2**70, ValueError, "must be an integer in"),
])
def test_a_rule_is_stated_once_and_names_the_key_both_ways(section, key, value, kind, words):
    cls = SECTIONS[section]
    base = {"paths": "a.npy"} if section == "data" else {}
    with pytest.raises(kind, match="^" + re.escape(f"[{section}] {key} ") + ".*" + re.escape(words)):
        cls.from_dict({**base, key: value})
    with pytest.raises(kind, match="^" + re.escape(f"{cls.__name__}.{key} ") + ".*" + re.escape(words)):
        cls(**{**base, key: value})


def test_sections_that_tie_together_are_checked_by_the_run():
    with pytest.raises(ValueError, match=r"\[partition\] patch 24 is larger than the volume \(\[geometry\] size 16\)"):
        RunConfig(geometry=GeometryConfig(size=16))
    with pytest.raises(ValueError, match=r"\[phantoms\] and \[data\] are exclusive"):
        RunConfig(phantoms=PhantomsConfig(), data=DataConfig(paths="a.npy"))
    with pytest.raises(ValueError, match=r"\[train\] val_every needs held-out volumes"):
        RunConfig(train=TrainConfig(val_every=5))
    with pytest.raises(ValueError, match=r"unknown section \[trian\]"):
        RunConfig.from_dict({"trian": {}})
    with pytest.raises(TypeError, match="RunConfig.model must be a ModelConfig"):
        RunConfig(model={"depth": 2})
    data = RunConfig(data=DataConfig(paths=["a.npy"], val_files=1), train=TrainConfig(val_every=5))
    assert data.phantoms is None and "phantoms" not in data.to_dict()


def test_the_model_file_reads_back_as_the_same_objects():
    run = RunConfig.from_dict({"geometry": {"size": 20}, "data": {"paths": ["x/*.npy"], "intensity": [0.8, 1.2]},
                               "model": {"base": 4, "init": "old.pt"}, "partition": {"patch": 10},
                               "train": {"steps": 7, "out_dir": "runs/a", "grad_clip": 1.0}})
    recorded = {**run.to_dict(), "normalization": {"kind": "attenuation"}, "command": "unrolled3d train c.toml"}
    assert "out_dir" not in recorded["train"]  # where a run was written is not what it is
    back = RunConfig.from_dict(recorded, records=True)
    assert back == dataclasses.replace(run, train=dataclasses.replace(run.train, out_dir=None))
    with pytest.raises(ValueError, match=r"unknown section \[normalization\]"):
        RunConfig.from_dict(recorded)  # the records belong to model files only


def test_build_model_takes_the_objects_and_the_recorded_tables_alike():
    run = RunConfig(geometry=GeometryConfig(size=16), model=ModelConfig(n_iter=2, base=4, depth=1, shared=False),
                    partition=PartitionConfig(patch=8))
    torch.manual_seed(0)
    a = build_model(run, (16, 16, 16))
    torch.manual_seed(0)
    b = build_model(run.to_dict(), (16, 16, 16))
    assert a.patch_shape == b.patch_shape == (8, 8, 8) and len(a.base.denoisers) == 2
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match=r"lacks \[model\] depth"):
        build_model({"model": {"n_iter": 2, "base": 4}, "partition": {"patch": 8}}, (16, 16, 16))
    with pytest.raises(ValueError, match=r"unknown keys in \[model\]: colour"):
        build_model({"model": {"n_iter": 2, "base": 4, "depth": 1, "colour": 1}, "partition": {"patch": 8}}, (8,) * 3)


@pytest.mark.parametrize("base, depth", [(1, 0), (4, 1), (3, 2), (8, 3)])
def test_the_parameter_count_is_the_built_modules(base, depth):
    assert unet_parameters(base, depth) == sum(p.numel() for p in UNet3D(base=base, depth=depth).parameters())
    for shared in (True, False):
        net = UnrolledPGD(UNet3D(base=base, depth=depth), n_iter=3, shared=shared)
        assert model_parameters(ModelConfig(n_iter=3, base=base, depth=depth, shared=shared)) == \
            sum(p.numel() for p in net.parameters())


def test_the_cost_is_a_lower_bound_of_what_training_allocates():
    """The bound must never refuse what runs: a training step's measured allocations exceed it."""
    model = ModelConfig(n_iter=2, base=4, depth=1)
    from unrolled3d.models.cost import activation_bytes

    net = UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2)
    x = torch.rand(1, 1, 12, 12, 12)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        out = x
        for k in range(2):
            out = net.denoisers[0](out)
        out.sum().backward()
    assert activation_bytes(model, 12, training=True) <= sum(saved)


def test_a_network_no_machine_holds_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"^\[model\] depth = 10 .* more than the .* of this machine"):
        check_model_memory(ModelConfig(base=1024, depth=10), 24, training=False)
    with pytest.raises(ValueError, match=r"^\[model\] base = 1024 .* more than the 1 GiB of a budget"):
        check_model_memory(ModelConfig(base=1024), 24, training=True, limit=2**30, limit_name="a budget")
    with pytest.raises(ValueError, match=r"^\[model\] n_iter = 1000 "):
        check_model_memory(ModelConfig(n_iter=1000, base=64), 96, training=True, limit=2**34)
    with pytest.raises(ValueError, match=r"^\[partition\] patch = 4000 "):
        check_model_memory(ModelConfig(), 4000, training=True, limit=2**34)
    assert check_model_memory(ModelConfig(), 24, training=True, limit=2**26) < 2**26
