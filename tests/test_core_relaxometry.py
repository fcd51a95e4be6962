"""Tests of R2*/T2* mapping (qsm_bids.core.relaxometry) on simulated mono-exponential decays."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.relaxometry import r2star_arlo, r2star_loglinear, t2star_from_r2star

TE = (0.004, 0.008, 0.012, 0.016, 0.020, 0.024)  # s, equally spaced
SHAPE = (20, 25, 40)


def decays(sigma: float, te=TE, seed: int = 0):
    """R2* uniform in 5..100 1/s, S0 = 1, complex Gaussian noise of SD sigma (Rician)."""
    rng = np.random.default_rng(seed)
    r2 = rng.uniform(5.0, 100.0, SHAPE).astype(np.float32)
    s = np.exp(-r2[..., None] * np.asarray(te))
    noisy = s + sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape))
    return np.abs(noisy).astype(np.float32), r2


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


@pytest.mark.parametrize("method", [r2star_arlo, r2star_loglinear])
def test_noise_free_exact(method) -> None:
    mag, r2 = decays(0.0)
    est = method(mag, TE, np.ones(SHAPE, bool))
    assert est.dtype == np.float32 and est.shape == SHAPE
    # reached: ARLO 0.014 1/s (Simpson's rule error), log-linear 1e-4 1/s
    assert np.max(np.abs(est - r2)) < 0.05


@pytest.mark.parametrize(
    ("method", "sigma", "rms_bound", "bias_bound"),
    [
        (r2star_arlo, 0.01, 2.0, 0.2),  # reached rms 1.58, mean -0.04 1/s
        (r2star_loglinear, 0.01, 2.0, 0.3),  # reached rms 1.49, mean -0.13 1/s
        (r2star_arlo, 0.02, 4.0, 0.4),  # reached rms 3.17, mean -0.08 1/s
        (r2star_loglinear, 0.02, 4.0, 0.8),  # reached rms 3.04, mean -0.47 1/s
    ],
)
def test_noisy_decays(method, sigma: float, rms_bound: float, bias_bound: float) -> None:
    mag, r2 = decays(sigma)
    est = method(mag, TE, np.ones(SHAPE, bool))
    err = est - r2
    assert rms(err) < rms_bound
    assert abs(float(err.mean())) < bias_bound
    # relative error of the low and high R2* ranges stays bounded too
    assert float(np.median(np.abs(err[r2 > 50]) / r2[r2 > 50])) < 0.05


def test_mask_clip_and_t2star() -> None:
    mag, r2 = decays(0.0)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 3:-3, 4:-4] = True
    mag[0, 0, 0] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # growing signal -> clipped at 0
    mask[0, 0, 0] = True
    mag[1, 1, 1] = 10.0 ** -np.arange(0, 12, 2)  # R2* = 1151 1/s -> clipped at max
    mask[1, 1, 1] = True
    for method in (r2star_arlo, r2star_loglinear):
        est = method(mag, TE, mask, max_r2star=500.0)
        assert np.all(est[~mask] == 0)
        assert est[0, 0, 0] == 0.0 and not np.signbit(est[0, 0, 0])
        assert est[1, 1, 1] == pytest.approx(500.0)
        assert np.all((est >= 0) & (est <= 500))
    t2 = t2star_from_r2star(np.array([0.0, 20.0, 50.0, -1.0], np.float32))
    np.testing.assert_allclose(t2, [0.0, 0.05, 0.02, 0.0])
    assert t2.dtype == np.float32


def test_arlo_needs_three_equally_spaced_echoes() -> None:
    te = (0.004, 0.008, 0.014)
    mag, r2 = decays(0.0, te=te)
    with pytest.raises(ValueError, match="equally spaced"):
        r2star_arlo(mag, te, None, fallback=False)
    with pytest.warns(UserWarning, match="log-linear"):
        est = r2star_arlo(mag, te, None)
    assert np.max(np.abs(est - r2)) < 0.05  # the log-linear fallback is exact here
    with pytest.raises(ValueError, match=">= 3 echoes"):
        r2star_arlo(mag[..., :2], te[:2], None, fallback=False)


def test_unsorted_echoes() -> None:
    mag, r2 = decays(0.0)
    order = [3, 0, 5, 1, 4, 2]
    te = tuple(TE[i] for i in order)
    for method in (r2star_arlo, r2star_loglinear):
        est = method(mag[..., order], te, None)
        assert np.max(np.abs(est - r2)) < 0.05
