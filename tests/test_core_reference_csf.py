"""Tests of CSF referencing (qsm_bids.core.reference_csf) on the simulated head phantom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.reference_csf import detect_csf, reference_csf
from qsm_bids.core.relaxometry import r2star_loglinear
from qsm_bids.simulate.forward import simulate_acquisition
from qsm_bids.simulate.phantom import CSF, make_head_phantom

TE = (0.004, 0.012, 0.020, 0.028)
VOX = (3.0, 3.0, 3.0)
OFFSET = 0.1  # ppm


@pytest.fixture(scope="module")
def head():
    p = make_head_phantom(VOX[0])
    acq = simulate_acquisition(p, echo_times_s=TE, snr=50.0, rng=1)
    r2 = r2star_loglinear(acq.magnitude, TE, p.brain_mask)
    return p, acq, r2


@pytest.mark.parametrize("source", ["truth", "fitted"])
def test_detected_csf_and_referenced_offset(head, source: str) -> None:
    p, acq, r2_fit = head
    r2 = p.r2star if source == "truth" else r2_fit
    mask = p.brain_mask
    true_csf = mask & (p.labels == CSF)
    region = detect_csf(mask, r2star=r2, magnitude=acq.magnitude, voxel_size=VOX)
    assert region.sum() >= 10  # reached 18 (truth) / 12 (fitted) voxels after erosion
    assert (region & true_csf).sum() / region.sum() > 0.95  # reached 1.0
    # without erosion more of the ventricles is found, still inside label 3
    wide = detect_csf(mask, r2star=r2, magnitude=acq.magnitude, voxel_size=VOX, erode_voxels=0)
    assert wide.sum() > 100 and (wide & true_csf).sum() / wide.sum() > 0.95  # 327/177, 1.0

    chi = np.where(mask, p.chi + OFFSET, 0).astype(np.float32)
    out = reference_csf(chi, mask, r2star=r2, magnitude=acq.magnitude, voxel_size=VOX)
    assert out.dtype == np.float32 and np.all(out[~mask] == 0)
    shift = out[mask] - p.chi[mask]  # a constant: minus the truth mean over the region
    assert np.ptp(shift) < 1e-5
    assert abs(shift.mean()) < 0.005  # reached 2.5e-5 (truth) / 1.0e-4 (fitted)
    # the true (pure) CSF -- label 3 away from tissue -- is at 0 after referencing
    core = ndimage.binary_erosion(true_csf) & (np.abs(p.chi) < 0.005)
    assert abs(out[core].mean()) < 0.01  # reached < 0.001
    # the phantom's label 3 at 3 mm mixes with tissue (truth mean -0.013 ppm): same after
    assert abs(out[true_csf].mean() - p.chi[true_csf].mean()) < 0.005


def test_magnitude_only_detection(head) -> None:
    p, acq, _ = head
    true_csf = p.brain_mask & (p.labels == CSF)
    region = detect_csf(p.brain_mask, magnitude=acq.magnitude, voxel_size=VOX)
    assert region.any() and (region & true_csf).sum() / region.sum() > 0.85  # reached 0.95


def test_no_csf_raises(head) -> None:
    p, acq, _ = head
    chi = p.chi.astype(np.float32)
    flat = np.full(p.shape, 20.0, np.float32)
    with pytest.raises(ValueError, match="no CSF"):
        reference_csf(chi, p.brain_mask, r2star=flat, magnitude=acq.magnitude)
    with pytest.raises(ValueError, match="R2"):
        reference_csf(chi, p.brain_mask)
    # a user region away from the ventricles: nothing found there either
    top = np.zeros(p.shape, bool)
    top[..., -5:] = True
    with pytest.raises(ValueError, match="no CSF"):
        reference_csf(chi, p.brain_mask, region=top, r2star=p.r2star)


def test_csf_fallback_references_to_the_whole_brain_and_says_so():
    from qsm_bids.core.reference import reference_with_fallback

    rng = np.random.default_rng(0)
    chi = rng.normal(0.05, 0.02, (6, 6, 6)).astype(np.float32)
    mask = np.zeros(chi.shape, bool)
    mask[1:5, 1:5, 1:5] = True

    def no_csf():
        raise ValueError("no CSF voxels")

    out, note = reference_with_fallback(no_csf, "csf", chi, mask)
    assert abs(float(out[mask].mean())) < 1e-6 and np.all(out[~mask] == 0)
    assert "CSF referencing failed (no CSF voxels)" in note
    ok, none = reference_with_fallback(lambda: chi, "csf", chi, mask)
    assert ok is chi and none is None
    with pytest.raises(ValueError, match="no CSF"):
        reference_with_fallback(no_csf, "mask", chi, mask)
