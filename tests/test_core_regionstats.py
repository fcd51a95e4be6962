"""region_statistics against values computed by hand on a tiny array."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qsm_bids.core.regionstats import COLUMNS, region_statistics


def _tiny():
    # 2 x 2 x 3 volume; label 1: chi 0.1, 0.2, 0.3, 0.4 (one more 1.0 outside the mask),
    # label 2: chi -0.05, 0.05; label 0 (no region): 0.0, 0.5; one voxel NaN inside the mask.
    chi = np.array(
        [
            [[0.1, 0.2, 0.3], [0.4, 1.0, -0.05]],
            [[0.05, 0.0, 0.5], [np.nan, 7.0, 7.0]],
        ],
        dtype=np.float32,
    )
    labels = np.array([[[1, 1, 1], [1, 1, 2]], [[2, 0, 0], [1, 3, 3]]], dtype=np.int16)
    mask = np.array(
        [[[1, 1, 1], [1, 0, 1]], [[1, 1, 1], [1, 0, 0]]],
        dtype=bool,
    )
    return chi, labels, mask


def test_region_statistics_hand_computed():
    chi, labels, mask = _tiny()
    names = {1: "a", 2: "b", 3: "c", 9: "absent"}
    rows = region_statistics(chi, labels, mask, names, voxel_volume_mm3=8.0)
    assert [r["region"] for r in rows] == ["whole_brain", "a", "b", "c", "absent"]
    assert all(tuple(r) == COLUMNS for r in rows)
    by = {r["region"]: r for r in rows}

    # region a: 0.1 0.2 0.3 0.4 -> mean 0.25, median 0.25, pop. std sqrt(0.0125),
    # percentiles (linear): p25 = 0.175, p75 = 0.325
    a = by["a"]
    assert a["label"] == 1 and a["voxels"] == 4 and a["volume_mm3"] == 32.0
    assert a["mean_ppm"] == pytest.approx(0.25, abs=1e-7)
    assert a["median_ppm"] == pytest.approx(0.25, abs=1e-7)
    assert a["std_ppm"] == pytest.approx(math.sqrt(0.0125), abs=1e-7)
    assert a["p25_ppm"] == pytest.approx(0.175, abs=1e-7)
    assert a["p75_ppm"] == pytest.approx(0.325, abs=1e-7)

    # region b: -0.05 0.05 -> mean 0, std 0.05, p25 -0.025, p75 0.025
    b = by["b"]
    assert b["voxels"] == 2 and b["volume_mm3"] == 16.0
    assert b["mean_ppm"] == pytest.approx(0.0, abs=1e-7)
    assert b["std_ppm"] == pytest.approx(0.05, abs=1e-7)
    assert b["p25_ppm"] == pytest.approx(-0.025, abs=1e-7)
    assert b["p75_ppm"] == pytest.approx(0.025, abs=1e-7)

    # region c lies entirely outside the mask; "absent" has no voxel at all
    for name in ("c", "absent"):
        assert by[name]["voxels"] == 0 and by[name]["volume_mm3"] == 0.0
        assert math.isnan(by[name]["mean_ppm"]) and math.isnan(by[name]["p75_ppm"])

    # whole brain: every finite in-mask voxel, label 0 included, the NaN excluded:
    # 0.1 0.2 0.3 0.4 -0.05 0.05 0.0 0.5 -> mean 0.1875, median 0.15
    w = by["whole_brain"]
    vals = np.array([0.1, 0.2, 0.3, 0.4, -0.05, 0.05, 0.0, 0.5])
    assert w["label"] == 0 and w["voxels"] == 8 and w["volume_mm3"] == 64.0
    assert w["mean_ppm"] == pytest.approx(0.1875, abs=1e-7)
    assert w["median_ppm"] == pytest.approx(0.15, abs=1e-7)
    assert w["std_ppm"] == pytest.approx(vals.std(), abs=1e-7)
    assert w["p25_ppm"] == pytest.approx(0.0375, abs=1e-7)
    assert w["p75_ppm"] == pytest.approx(0.325, abs=1e-7)


def test_region_statistics_rejects_bad_input():
    chi, labels, mask = _tiny()
    with pytest.raises(ValueError, match="shape"):
        region_statistics(chi[:1], labels, mask, {1: "a"}, 1.0)
    with pytest.raises(ValueError, match="reserved"):
        region_statistics(chi, labels, mask, {0: "x"}, 1.0)
    with pytest.raises(ValueError, match="positive"):
        region_statistics(chi, labels, mask, {1: "a"}, 0.0)


def test_region_statistics_matches_bruteforce_on_random_volume():
    rng = np.random.default_rng(0)
    chi = rng.normal(0.0, 0.05, (9, 8, 7)).astype(np.float32)
    labels = rng.integers(0, 6, chi.shape).astype(np.int16)
    mask = rng.random(chi.shape) > 0.3
    names = {k: f"r{k}" for k in range(1, 6)}
    rows = region_statistics(chi, labels, mask, names, 1.5)
    for row in rows[1:]:
        v = chi[(labels == row["label"]) & mask].astype(np.float64)
        assert row["voxels"] == v.size
        assert row["mean_ppm"] == pytest.approx(v.mean(), abs=1e-9)
        assert row["median_ppm"] == pytest.approx(np.median(v), abs=1e-9)
        assert row["p75_ppm"] == pytest.approx(np.percentile(v, 75), abs=1e-9)
