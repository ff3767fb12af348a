"""choose_patch: the largest patch whose predicted peak fits, from a fitted a + b p^3 model."""
from __future__ import annotations

import pytest
import torch

from unrolled3d.budget import choose_patch, parse_bytes
from unrolled3d.partition import PartitionedReconstructor


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
