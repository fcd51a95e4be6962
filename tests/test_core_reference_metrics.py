"""Referencing and the accuracy metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.metrics import evaluation_mask, nrmse, region_means
from qsm_bids.core.reference import reference_mask, reference_mean
from qsm_bids.evaluate import evaluate_arrays


def _blocks():
    chi = np.zeros((10, 10, 10), np.float32)
    chi[2:5, 2:5, 2:5] = 0.1
    chi[5:8, 5:8, 5:8] = -0.05
    mask = np.zeros_like(chi, bool)
    mask[1:9, 1:9, 1:9] = True
    return chi, mask


def test_reference_mean_zeroes_the_brain_mean_and_outside():
    chi, mask = _blocks()
    out = reference_mean(chi + 0.3, mask)
    assert abs(out[mask].mean()) < 1e-6
    assert (out[~mask] == 0).all()
    np.testing.assert_allclose(out[3, 3, 3] - out[6, 6, 6], 0.15, atol=1e-6)


def test_reference_mask_zeroes_the_region_mean():
    chi, mask = _blocks()
    region = np.zeros_like(mask)
    region[5:8, 5:8, 5:8] = True
    out = reference_mask(chi + 0.3, mask, region=region)
    np.testing.assert_allclose(out[region].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[3, 3, 3], 0.15, atol=1e-6)
    with pytest.raises(ValueError, match="reference region"):
        reference_mask(chi, mask, region=None)
    with pytest.raises(ValueError, match="does not overlap"):
        reference_mask(chi, mask, region=~mask)


def test_nrmse_is_offset_invariant_and_scales():
    chi, mask = _blocks()
    assert nrmse(chi + 1.0, chi, mask) < 1e-4
    truth_dm = chi[mask] - chi[mask].mean()
    # half the contrast: error is half the demeaned truth -> 50 %
    assert nrmse(0.5 * chi, chi, mask) == pytest.approx(50.0, rel=1e-5)
    assert nrmse(np.zeros_like(chi), chi, mask) == pytest.approx(100.0, rel=1e-5)
    assert np.linalg.norm(truth_dm) > 0


def test_region_means_and_evaluation():
    chi, mask = _blocks()
    labels = np.zeros(chi.shape, np.int16)
    labels[2:5, 2:5, 2:5] = 1
    labels[5:8, 5:8, 5:8] = 2
    names = {1: "caudate", 2: "putamen"}
    means = region_means(chi, labels, mask, names)
    assert means == pytest.approx({"caudate": 0.1, "putamen": -0.05})
    assert evaluation_mask(mask, 1).sum() == 6**3
    ev = evaluate_arrays(chi + 0.02 * (labels == 1), chi, mask, labels, names, erode_voxels=0)
    errors = ev.region_errors()
    # the estimate's extra 0.02 ppm in 27 voxels also shifts its whole-mask mean
    shift = 0.02 * 27 / mask.sum()
    assert errors["caudate"] == pytest.approx(0.02 - shift, abs=1e-6)
    assert errors["putamen"] == pytest.approx(-shift, abs=1e-6)
