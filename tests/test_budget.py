"""choose_patch: the largest patch whose predicted peak fits, from a fitted a + b p^3 model."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.budget import choose_patch, parse_bytes
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, standard_cone_beam


class _Identity(torch.nn.Module):
    def forward(self, y, physics, x_init=None):
        return x_init


class _Physics:
    """Only A_dagger is called by choose_patch when measure is faked."""

    def A_dagger(self, y):
        return y


def test_parse_bytes():
    assert parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5G") == int(1.5 * 2**30)
    assert parse_bytes("800k") == 800 * 2**10
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes(100) == 100 * 2**20
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(ValueError, match="memory budget"):
            parse_bytes(bad)


def test_choice_follows_the_fitted_model():
    rec = PartitionedReconstructor(_Identity(), (64, 64, 64), (16, 16, 16))
    y = torch.zeros(1, 1, 4, 4, 4)
    calls = []

    def fake_measure(fn, device):
        # the start point costs 1 MiB; a patch of edge p costs 2 MiB + p^3 * 100 bytes
        calls.append(fn)
        if len(calls) == 1:
            return 2**20
        p = [16, 24][len(calls) - 2]
        return 2 * 2**20 + 100 * p**3

    buffers = 3 * 64**3 * 4 + 2 * y.numel() * 4
    budget = buffers + 2 * 2**20 + 100 * 40**3 + 10  # fits 40^3, not 48^3
    choice = choose_patch(rec, y, _Physics(), budget, measure=fake_measure)
    assert choice.patch == 40 and choice.predicted_bytes <= budget
    assert choice.patch_model == pytest.approx((2 * 2**20, 100.0))
    assert choice.predict(48) > budget
    with pytest.raises(ValueError, match="too small"):
        calls.clear()
        choose_patch(rec, y, _Physics(), buffers, measure=fake_measure)


def test_the_measured_group_is_patch_batch_size_patches():
    # choose_patch measures a sweep's unit of work: one group of patch_batch_size patches solved
    # together (the network's batch), so its prediction grows with the group
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, y, physics, x_init=None):
            seen.append(x_init.shape[0])
            return x_init

    def run_and_measure(fn, device):
        fn()
        return 2**20

    physics = ConeBeamCT(standard_cone_beam(32, 4))
    y = physics.A(torch.zeros(1, 1, 32, 32, 32))
    for batch, expected in ((1, [1, 1]), (4, [4, 4]), (100, [27, 8])):  # at most the grid: 27 at 16^3, 8 at 24^3
        seen.clear()
        rec = PartitionedReconstructor(Recording(), (32, 32, 32), (16, 16, 16), patch_batch_size=batch)
        choose_patch(rec, y, physics, 2**40, candidates=[16, 24], measure=run_and_measure)
        assert seen == expected, (batch, seen)


def test_a_larger_patch_batch_gets_a_smaller_patch_for_the_same_budget():
    # End to end through choose_patch: a fake measurement that charges what the group solved
    # (bytes per patch voxel, as the network's activations are). With 8 patches per network call
    # the budget that fits 40^3 patches one at a time must no longer fit them.
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, y, physics, x_init=None):
            seen.append(x_init.numel())
            return x_init

    def charged(fn, device):
        seen.clear()
        fn()
        return 100 * sum(seen) if seen else 2**20  # the start point (no base call): 1 MiB

    physics = ConeBeamCT(standard_cone_beam(64, 4))
    y = physics.A(torch.zeros(1, 1, 64, 64, 64))
    buffers = 3 * 64**3 * 4 + 2 * y.numel() * 4
    budget = buffers + 100 * 40**3 + 10
    picks = {}
    for batch in (1, 8):
        rec = PartitionedReconstructor(Recording(), (64, 64, 64), (16, 16, 16), patch_batch_size=batch)
        choice = choose_patch(rec, y, physics, budget, measure=charged)
        picks[batch] = choice.patch
        # the fitted model is the group's: 100 bytes per voxel of `batch` patches (both grids have >= 8)
        assert choice.patch_model == pytest.approx((0.0, 100.0 * batch), abs=1e-6)
    assert picks[1] == 40
    assert picks[8] == 16  # 8 * 24^3 * 100 > budget; 8 * 16^3 * 100 fits


def test_peak_model_skips_the_first_solve_and_never_models_a_flat_peak():
    """The patch memory model: warm-up unmeasured, growth found, an upper bound where none is seen."""
    from unrolled3d.budget import peak_model

    calls = []

    def warm_then_linear(p):  # the first solve of a process allocates 17 MiB it keeps
        calls.append(p)
        return (17 << 20) if len(calls) == 1 else 1000 + 200 * p**3

    a, b = peak_model(warm_then_linear, 512)
    assert calls == [16, 16, 32] and (a, b) == pytest.approx((1000, 200))
    seen = []
    a, b = peak_model(lambda p: seen.append(p) or 5000, 100)  # no growth: bigger trials, then an upper bound
    assert seen == [16, 16, 32, 64, 100] and a == 0 and b == pytest.approx(5000 / 100**3)
    assert peak_model(lambda p: 7, 12) == (7.0, 0.0)  # a volume no larger than the smallest trial
