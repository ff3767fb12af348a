"""``||A||`` is estimated once per geometry (issue 30): remembered in memory and on disk, passable,
recorded with measurements and models, with a progress bar when the estimate takes a while."""
from __future__ import annotations

import json
import time

import pytest
import torch

import unrolled3d
from unrolled3d.cli import main
from unrolled3d.io import load_measurements
from unrolled3d.physics import ConeBeamCT, standard_cone_beam
from unrolled3d.physics import norm as norms


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty disk cache and nothing remembered in memory."""
    monkeypatch.setenv("UNROLLED3D_CACHE_DIR", str(tmp_path / "cache"))
    norms.clear_operator_norm_cache()
    yield tmp_path / "cache"
    norms.clear_operator_norm_cache()


def test_the_norm_is_estimated_once_per_geometry(fresh_cache):
    g, other = standard_cone_beam(12, 6), standard_cone_beam(12, 7)
    key = g.fingerprint()
    reference = norms.operator_norm(g)  # the estimate itself (counted too)
    before = norms.ESTIMATES[key]
    values = [float(ConeBeamCT(g, normalize=True, progress=False).operator_norm) for _ in range(3)]
    assert norms.ESTIMATES[key] == before + 1 and len(set(values)) == 1
    assert values[0] == pytest.approx(reference, rel=1e-12)  # the estimate, remembered as it was
    # another process (memory forgotten) reads the disk cache
    norms.clear_operator_norm_cache()
    assert float(ConeBeamCT(g, normalize=True, progress=False).operator_norm) == values[0]
    assert norms.ESTIMATES[key] == before + 1
    entry = json.loads(norms.norm_cache_file(g).read_text())
    assert entry["norm"] == values[0] and entry["fingerprint"] == key and entry["version"] == norms.ESTIMATOR_VERSION
    # another geometry is another estimate; a given norm is none
    ConeBeamCT(other, normalize=True, progress=False)
    assert norms.ESTIMATES[other.fingerprint()] >= 1
    count = sum(norms.ESTIMATES.values())
    assert float(ConeBeamCT(standard_cone_beam(12, 8), normalize=True, norm=3.5, progress=False).operator_norm) == 3.5
    assert sum(norms.ESTIMATES.values()) == count


def test_an_unreadable_or_foreign_cache_entry_is_estimated_again(fresh_cache):
    g = standard_cone_beam(10, 5)
    key = g.fingerprint()
    value = norms.cached_operator_norm(g, progress=False)
    for bad in ("not json", json.dumps({"fingerprint": key, "norm": -1.0, "version": norms.ESTIMATOR_VERSION}),
                json.dumps({"fingerprint": key, "norm": 2.0, "version": norms.ESTIMATOR_VERSION + 1})):
        norms.clear_operator_norm_cache()
        norms.norm_cache_file(g).write_text(bad)
        before = norms.ESTIMATES[key]
        assert norms.cached_operator_norm(g, progress=False) == value
        assert norms.ESTIMATES[key] == before + 1


def test_records_are_taken_only_for_their_own_geometry():
    g, other = standard_cone_beam(10, 5), standard_cone_beam(10, 6)
    record = norms.norm_record(g, 12.5)
    assert norms.norm_from_record(record, g) == 12.5
    assert norms.norm_from_record(record, other) is None
    for bad in (None, {"value": -1.0, "fingerprint": g.fingerprint()}, {"value": "12", "fingerprint": g.fingerprint()},
                {"value": float("nan"), "fingerprint": g.fingerprint()}, [12.5]):
        assert norms.norm_from_record(bad, g) is None
    with pytest.raises(ValueError, match="norm must be positive"):
        norms.norm_record(g, 0.0)


def test_reconstruct_estimates_once_for_many_calls(fresh_cache):
    g = standard_cone_beam(16, 8)
    y = ConeBeamCT(g, progress=False).A(torch.ones(1, 1, 16, 16, 16) * 0.5)
    before = norms.ESTIMATES[g.fingerprint()]
    for _ in range(2):
        unrolled3d.reconstruct(y, g, model="demo_ct", patch_size=16, progress=False, scale_check="ignore")
    assert norms.ESTIMATES[g.fingerprint()] == before + 1


def test_simulate_records_the_norm_and_reconstruct_reuses_it(fresh_cache, tmp_path):
    m = tmp_path / "m.pt"
    assert main(["simulate", "--size", "16", "--views", "8", "--noise", "0.02", "--out", str(m), "--quiet"]) == 0
    _, g, _, meta = load_measurements(m)
    assert norms.norm_from_record(meta["operator_norm"], g) == pytest.approx(norms.operator_norm(g), rel=1e-12)
    norms.clear_operator_norm_cache(disk=True)  # nothing remembered: only the file knows
    before = norms.ESTIMATES[g.fingerprint()]
    assert main(["reconstruct", str(m), "--method", "unrolled", "--weights", "demo_ct", "--patch-size", "16",
                 "--scale-check", "ignore", "--out", str(tmp_path / "x.npy"), "--quiet"]) == 0
    assert norms.ESTIMATES[g.fingerprint()] == before


def test_a_long_estimate_shows_a_progress_bar_and_progress_false_none(fresh_cache, monkeypatch, capfd):
    real = norms.cone_backproject

    def slow(*args, **kwargs):  # an estimate of several seconds, as for a large volume
        time.sleep(0.15)
        return real(*args, **kwargs)

    monkeypatch.setattr(norms, "cone_backproject", slow)
    ConeBeamCT(standard_cone_beam(8, 5), normalize=True, progress=False)
    assert capfd.readouterr().err == ""
    ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
    assert "||A|| of the 8x8x8 scan" in capfd.readouterr().err
    ConeBeamCT(standard_cone_beam(8, 6), normalize=True)  # remembered: nothing to show
    assert capfd.readouterr().err == ""
