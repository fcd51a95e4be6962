"""Tests of the phase-quality brain mask (qsm_bids.core.mask.mask_from_magnitude_and_quality)
on the simulated head phantom (3 mm, 3 T, 4 echoes, SNR 50)."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.mask import mask_from_magnitude, mask_from_magnitude_and_quality, phase_quality
from qsm_bids.simulate.forward import simulate_acquisition
from qsm_bids.simulate.phantom import AIR_EAR, AIR_SINUS, BACKGROUND, SKULL, make_head_phantom

TE = (0.004, 0.012, 0.020, 0.028)
VOX = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def head():
    p = make_head_phantom(VOX[0])
    acq = simulate_acquisition(p, echo_times_s=TE, snr=50.0, rng=0)
    return p, acq


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_quality_separates_tissue_from_noise(head) -> None:
    p, acq = head
    q = phase_quality(acq.phase, TE)
    assert q.shape == p.shape and q.dtype == np.float32
    assert 0.0 <= q.min() and q.max() <= 1.0
    brain = p.brain_mask & (p.labels != 3)
    air = np.isin(p.labels, (BACKGROUND, AIR_SINUS, AIR_EAR))
    assert np.median(q[brain]) > 0.85  # reached 0.94
    assert np.median(q[air]) < 0.2  # reached 0.08
    assert np.percentile(q[air], 95) < 0.35  # reached 0.22


def test_noise_blob_excluded_small_spot_filled(head) -> None:
    p, acq = head
    truth = p.brain_mask
    mag, ph = acq.magnitude.copy(), acq.phase.copy()
    rng = np.random.default_rng(5)
    g = np.indices(truth.shape).transpose(1, 2, 3, 0) * VOX[0]
    c = np.argwhere(truth).mean(0)
    x_edge = np.nonzero(truth[:, int(c[1]), int(c[2])])[0].max()
    # a bright region of pure phase noise (15 mm radius) on the lateral brain surface
    blob = np.linalg.norm(g - np.array([x_edge - 2, c[1], c[2] + 5]) * VOX[0], axis=-1) < 15
    # and a small noisy spot (1 voxel) deep inside: must be filled back
    spot = np.linalg.norm(g - (c + np.array([0, 10, 8])) * VOX[0], axis=-1) < 3.5
    for sel in (blob, spot):
        ph[sel] = rng.uniform(-np.pi, np.pi, (int(sel.sum()), len(TE)))
    mag[blob] = np.maximum(mag[blob], 0.9 * np.median(mag[truth], axis=0))
    mm = mask_from_magnitude(mag, VOX)
    assert mm[blob].mean() > 0.8  # the magnitude mask takes the blob (reached 0.90)
    mq = mask_from_magnitude_and_quality(mag, ph, VOX, TE)
    assert mq.dtype == bool and mq.shape == truth.shape
    assert mq[blob].mean() < 0.05  # reached 0.0
    assert mq[spot].all()
    assert dice(mq & ~blob, truth & ~blob) > 0.97  # reached 0.987
    assert not (mq & np.isin(p.labels, (BACKGROUND, AIR_SINUS, AIR_EAR))).any()


def test_quality_rescues_a_too_low_magnitude_threshold(head) -> None:
    p, acq = head
    truth = p.brain_mask
    labels = p.labels
    # a threshold far too low: the magnitude mask leaks into the background noise and skull
    mm = mask_from_magnitude(acq.magnitude, VOX, threshold_scale=0.1)
    assert dice(mm, truth) < 0.5  # reached 0.34
    mq = mask_from_magnitude_and_quality(acq.magnitude, acq.phase, VOX, TE, threshold_scale=0.1)
    assert dice(mq, truth) > 0.95  # reached 0.977
    noise = np.isin(labels, (BACKGROUND, AIR_SINUS, AIR_EAR))
    assert (mq & noise).sum() == 0  # reached 0
    assert (mq & (labels == SKULL)).sum() < 0.001 * truth.sum()  # reached 2 voxels
    # default threshold: as good as the magnitude mask
    assert dice(mask_from_magnitude_and_quality(acq.magnitude, acq.phase, VOX, TE), truth) > 0.98


def test_phase_only_and_single_echo(head) -> None:
    p, acq = head
    # no magnitude: the phase-coherence mask stands in for the magnitude mask (it keeps
    # some scalp, as mask_from_phase does) but no noise
    mq = mask_from_magnitude_and_quality(None, acq.phase[..., :1], VOX)
    assert dice(mq, p.brain_mask) > 0.85  # reached 0.88
    assert not (mq & np.isin(p.labels, (BACKGROUND, AIR_SINUS, AIR_EAR))).any()
